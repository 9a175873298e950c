"""`wafermap` (labeled, 9 failure types) and `wafermap-unlabeled` (pretraining): WM-811K.

Raw format: `LSWMD.pkl` from the WM-811K release (MIR lab, http://mirlab.org/dataSet/public/;
also on Kaggle as "WM-811K wafer map"), a pickled pandas DataFrame of 811,457 rows with columns
`waferMap` (2-D uint8 array, 0 = no die, 1 = good die, 2 = defective die; sizes vary),
`dieSize`, `lotName`, `waferIndex`, `trianTestLabel` and `failureType`. Labels are stored
nested, as `[['Edge-Loc']]`, and unlabeled wafers hold an empty `[]`. A pickled dict of those
columns (e.g. DABS's conversion of the MATLAB release) is accepted too.
The pickle is read without pandas (pandas >= 3 cannot load a pandas-0.x pickle; see
`_pandas_pickle`), once per worker process: the whole table is in memory (~2 GB for the full
release), since a pickle cannot be read in parts.

- `wafermap`: the labeled wafers (172,950), label = index in FAILURE_TYPES (DABS order:
  none, random, donut, scratch, center, loc, edge-loc, edge-ring, near-full); metric weighted F1.
  Split 90/10 train/test by a seeded hash of the row (DABS: shuffle seed 42, 90/10; the
  official `trianTestLabel` is not used, as in DABS).
- `wafermap-unlabeled`: the unlabeled wafers (638,507) with label -1, for pretraining;
  train/val 95/5. `wafermap` names it as its pretrain_dataset.

Input `[32, 32, 3]`, DABS's transform: each die value v in {0, 1, 2} becomes the grey level
int(v * 127.5) (0, 127, 255) in all three channels of a uint8 RGB image, which is resized to
32 x 32 with PIL's bilinear filter (torchvision's Resize on a PIL image; PIL widens the filter
when it shrinks, so edges blend into intermediate greys) and scaled by ToTensor's 1/255. The
model sees these [0, 1] values as the reference does: identity normalization (source "none"),
no per-channel z-score. The shards store the resized uint8 pixels (scale 255).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Iterator

import numpy as np

from preprocessing.datasets import _pandas_pickle
from preprocessing.datasets.base import BadRecord, DatasetReader, RawDataMissing, RawExample
from preprocessing.spec import DatasetSpec

PICKLE_NAME = "LSWMD.pkl"
URL = "http://mirlab.org/dataSet/public/MIR-WM811K.zip (or Kaggle: qingyi/wm811k-wafer-map)"
FAILURE_TYPES = ("none", "random", "donut", "scratch", "center", "loc", "edge-loc", "edge-ring", "near-full")
SIZE = 32
GRAYSCALE_MULTIPLIER = 127.5  # DABS: die value v -> grey level int(v * 127.5)
_ROWS_PER_SOURCE = 10_000


@functools.lru_cache(maxsize=1)
def load_table(path: str, mtime: float) -> tuple[list[Any], list[Any]]:
    """(waferMap column, failureType column) of the pickle; cached per process (`mtime` keys
    the cache so a replaced file is re-read).

    The original LSWMD.pkl is a pandas-0.x pickle that pandas >= 3 refuses, so its columns are
    taken out without pandas (`_pandas_pickle`). A table re-saved by a recent pandas in a
    layout that reader does not know (e.g. Arrow-backed column labels) goes to pandas instead.
    """
    wanted = ["waferMap", "failureType"]
    try:
        columns = _pandas_pickle.read_columns(path, wanted)
    except _pandas_pickle.ForeignCodeInPickle as e:
        raise RawDataMissing(f"{path}: not the WM-811K table: {e}") from None
    except _pandas_pickle.PandasPickleError as legacy_error:
        import pandas as pd

        try:
            table = pd.read_pickle(path)
            columns = {c: table[c] for c in wanted}
        except Exception as e:
            raise RawDataMissing(f"{path}: expected the WM-811K table (a pickled DataFrame with "
                                 f"columns waferMap and failureType): {legacy_error}; pandas: "
                                 f"{type(e).__name__}: {e}") from None
    return list(columns["waferMap"]), list(columns["failureType"])


def failure_type(value: Any) -> str | None:
    """The lower-case failure type of a (nested) failureType cell; None when unlabeled."""
    if isinstance(value, str):
        return value.strip().lower() or None
    flat = np.asarray(value, dtype=object).ravel()
    if flat.size == 0:
        return None
    first = flat[0]
    return str(first).strip().lower() if isinstance(first, str) and first.strip() else None


def wafer_to_image(wafer_map: Any) -> np.ndarray:
    """A WM-811K map (2-D, values 0/1/2) -> float32 `[32, 32, 3]` grey image; ValueError if malformed."""
    grid = np.asarray(wafer_map)
    if grid.ndim != 2 or min(grid.shape) < 1:
        raise ValueError(f"waferMap must be a non-empty 2-D array, got shape {list(grid.shape)}")
    if not np.issubdtype(grid.dtype, np.number):
        raise ValueError(f"waferMap must be numeric, got dtype {grid.dtype}")
    values = np.unique(grid)
    if not np.all(np.isin(values, (0, 1, 2))):
        raise ValueError(f"waferMap values must be 0, 1 or 2, got {values[:10].tolist()}")
    return dabs_resize(grid).astype(np.float32) / np.float32(255)


def dabs_resize(grid: np.ndarray) -> np.ndarray:
    """Die values `[H, W]` in {0, 1, 2} -> DABS's uint8 `[32, 32, 3]`: the grey RGB image
    int(v * 127.5) resized by PIL bilinear."""
    from PIL import Image

    grey = (grid.astype(np.float64) * GRAYSCALE_MULTIPLIER).astype(np.int64).astype(np.uint8)
    rgb = Image.fromarray(np.repeat(grey[..., np.newaxis], 3, axis=-1))  # uint8 [H, W, 3]: RGB
    return np.asarray(rgb.resize((SIZE, SIZE), Image.BILINEAR), dtype=np.uint8)


class WaferMapReader(DatasetReader):
    raw_folder = "wafermap"
    name = "wafermap"
    labeled = True
    split_fractions = (("train", 0.9), ("test", 0.1))
    # The reference feeds the ToTensor [0, 1] image (no z-score); the reader already gives [0, 1].
    fixed_normalization = {"mean": [0.0] * 3, "std": [1.0] * 3, "source": "none"}
    storage_dtype, storage_scale = "uint8", 255.0  # the resized uint8 pixels / 255

    def spec_template(self) -> DatasetSpec:
        return DatasetSpec(
            name=self.name, modality="image", input_shape=[SIZE, SIZE, 3], tokenizer="patch2d",
            patch_shape=[4, 4], num_tokens=64, token_dim=48, token_grid=[8, 8],
            input_dtype="float32", task="multiclass", metric="weighted_f1",
            num_classes=len(FAILURE_TYPES), label_names=list(FAILURE_TYPES), label_shape=[],
            label_dtype="int64", pretrain_dataset="wafermap-unlabeled" if self.labeled else "",
            extra={"raw_url": URL, "labels": "failure type" if self.labeled else "none (-1): pretraining only",
                   "colour_mapping": "die value v in {0,1,2} -> grey int(v * 127.5) in R, G "
                                     "and B, / 255 after the resize",
                   "resize": "PIL bilinear to 32x32, as DABS"},
        )

    def expected_files(self) -> list[str]:
        return [f"{PICKLE_NAME} (WM-811K pandas pickle)"]

    def _pickle_path(self) -> str:
        d = self.data_dir or self.default_data_dir()
        return d if os.path.isfile(d) else os.path.join(d, PICKLE_NAME)

    def check_raw(self) -> None:
        path = self._pickle_path()
        if not os.path.isfile(path):
            raise RawDataMissing(f"{self.name}: {PICKLE_NAME} not found at {os.path.abspath(path)}; "
                                 f"download WM-811K ({URL}) and put {PICKLE_NAME} in "
                                 f"{os.path.dirname(os.path.abspath(path))}/")

    def _table(self):
        path = self._pickle_path()
        return load_table(path, os.path.getmtime(path))

    def list_sources(self) -> list[tuple[int, int]]:
        self.check_raw()
        n = len(self._table()[0])
        return [(start, min(start + _ROWS_PER_SOURCE, n)) for start in range(0, n, _ROWS_PER_SOURCE)]

    def read_source(self, source: tuple[int, int]) -> Iterator[RawExample | BadRecord]:
        maps, failures = self._table()
        path = self._pickle_path()
        for row in range(*source):
            where = f"{path}:row {row}"
            try:
                kind = failure_type(failures[row])
            except (TypeError, ValueError) as e:
                yield BadRecord(path=where, reason=f"unreadable failureType ({e})")
                continue
            if (kind is not None) != self.labeled:
                continue  # belongs to the other dataset
            if kind is not None and kind not in FAILURE_TYPES:
                yield BadRecord(path=where, reason=f"failureType {kind!r} is not one of {list(FAILURE_TYPES)}")
                continue
            try:
                image = wafer_to_image(maps[row])
            except ValueError as e:
                yield BadRecord(path=where, reason=str(e))
                continue
            label = FAILURE_TYPES.index(kind) if kind is not None else -1
            yield RawExample(id=f"wafer-{row:06d}", input=image, label=label)


class WaferMapUnlabeledReader(WaferMapReader):
    name = "wafermap-unlabeled"
    labeled = False
    split_fractions = (("train", 0.95), ("val", 0.05))


READERS = {"wafermap": WaferMapReader, "wafermap-unlabeled": WaferMapUnlabeledReader}
