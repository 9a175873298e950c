"""`custom`: the user's own data, in one of a few plain formats chosen with the `format` option.

    python -m pipeline.preprocess --dataset custom --format npy  --raw_data_dir my_arrays --patch_shape 4,4
    python -m pipeline.preprocess --dataset custom --format csv  --raw_data_dir my_table --label_column y
    python -m pipeline.preprocess --dataset custom --format text --raw_data_dir my_seqs --vocab ACGT --seq_len 100

Reader options (the pipeline forwards the flags of the same names as keyword arguments):
- `format`: `npy`, `csv` or `text` (required). Other formats registered by other modules in the
  same scheme (e.g. `image_folder`, `audio_folder`) are separate datasets; a format this
  module does not know is rejected with the list of the ones it does.
- `input_shape` (npy: checked against the array; else inferred), `patch_shape` (npy with 2-D or
  3-D examples; required there), `label_column` (csv; default `label`), `vocab` (text: the
  characters, the first one pads) and `seq_len` (text), `task` (`multiclass` default, or
  `regression`), `name` (the dataset name written to spec.json; default `custom`).

Layouts under `--raw_data_dir`:
- npy:  `inputs.npy` `[N, *input_shape]` and `labels.npy` `[N]`; or `train/`, `val/`, `test/`
        subfolders each holding such a pair (then the split is the folder). Read memory-mapped,
        in slices. Example rank picks the tokenizer: `[F]` tabular, `[T, C]` patch1d,
        `[H, W, C]` patch2d; an integer `[L]` array with `vocab_size` given is discrete.
- csv:  `data.csv`, a header row, the label column and numeric feature columns (tabular `[F]`).
- text: `data.txt`, one example per line: `<label><TAB><sequence>`; one token per character of
        `vocab`, truncated / right-padded to `seq_len` with `vocab[0]`.
Without split folders, examples are split 80/10/10 train/val/test by a seeded hash of the id.
Class labels are the sorted distinct label values of the data (integers numerically), mapped
to 0..K-1; `label_names` records the original values. Continuous inputs are normalized with
per-channel statistics the pipeline computes on the train split.

Adding a format: write `_read_<format>` / `_spec_<format>` / `_sources_<format>` methods
below and add the name to FORMATS, or register a separate dataset module of your own.
"""

from __future__ import annotations

import csv
import glob
import math
import os
from typing import Any, Iterator, Sequence

import numpy as np

from preprocessing.datasets import _line_ranges
from preprocessing.datasets.base import BadRecord, DatasetReader, RawDataMissing, RawExample
from preprocessing.spec import DatasetSpec

FORMATS = ("npy", "csv", "text")
NPY_SPLITS = ("train", "val", "test")
ROWS_PER_SOURCE = 4096


class CustomDataError(ValueError):
    """The options or the files do not fit together; the message says which flag or file."""


def parse_ints(value: Any, flag: str) -> list[int] | None:
    """`"8,8,1"`, `[8, 8, 1]` or `None` -> list of ints."""
    if value is None or value == "" or value == []:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        return [int(v) for v in items]
    except (TypeError, ValueError):
        raise CustomDataError(f"--{flag}={value!r}: expected comma-separated integers") from None


def sorted_label_values(values: set[str]) -> list[str]:
    def is_int(v: str) -> bool:
        return v.lstrip("-").isdigit()

    return sorted(values, key=int) if values and all(map(is_int, values)) else sorted(values)


class CustomReader(DatasetReader):
    name = "custom"
    split_fractions = (("train", 0.8), ("val", 0.1), ("test", 0.1))

    def __init__(self, data_dir: str | None = None, format: str | None = None,
                 input_shape: Any = None, patch_shape: Any = None, label_column: str = "label",
                 vocab: str | None = None, seq_len: Any = None, vocab_size: Any = None,
                 task: str = "multiclass", name: str | None = None, **options: Any):
        super().__init__(data_dir, **options)
        if format not in FORMATS:
            raise CustomDataError(
                f"--dataset custom needs --format, one of {', '.join(FORMATS)}, image_folder, "
                f"audio_folder (got {format!r})")
        if task not in ("multiclass", "regression"):
            raise CustomDataError(f"--task={task!r}: expected multiclass or regression")
        self.format = format
        self.input_shape = parse_ints(input_shape, "input_shape")
        self.patch_shape = parse_ints(patch_shape, "patch_shape")
        self.label_column = label_column
        self.vocab = vocab
        self.seq_len = int(seq_len) if seq_len not in (None, "") else None
        self.vocab_size = int(vocab_size) if vocab_size not in (None, "") else 0
        self.task = task
        self.dataset_name = name or "custom"
        self._labels: list[str] | None = None  # sorted distinct raw labels, driver-computed
        self._label_index: dict[str, int] | None = None

    # === files ===
    def _data_dir(self) -> str:
        return self.data_dir or os.path.join("data", "raw", "custom")

    def _npy_pairs(self) -> list[tuple[str | None, str, str]]:
        """(fixed split or None, inputs.npy, labels.npy) pairs that exist."""
        d = self._data_dir()
        pairs = []
        for split in NPY_SPLITS:
            x, y = os.path.join(d, split, "inputs.npy"), os.path.join(d, split, "labels.npy")
            if os.path.isfile(x):
                pairs.append((split, x, y))
        if not pairs and os.path.isfile(os.path.join(d, "inputs.npy")):
            pairs.append((None, os.path.join(d, "inputs.npy"), os.path.join(d, "labels.npy")))
        return pairs

    def _table_file(self) -> str:
        return os.path.join(self._data_dir(), "data.csv" if self.format == "csv" else "data.txt")

    def expected_files(self) -> list[str]:
        if self.format == "npy":
            return ["inputs.npy + labels.npy (or train/, val/, test/ folders holding them)"]
        return [os.path.basename(self._table_file())]

    def check_raw(self) -> None:
        d = os.path.abspath(self._data_dir())
        if self.format == "npy":
            pairs = self._npy_pairs()
            if not pairs:
                raise RawDataMissing(f"custom --format npy: no inputs.npy in {d} (nor in its "
                                     f"train/, val/, test/ folders); put your arrays there")
            for _, x, y in pairs:
                if not os.path.isfile(y):
                    raise RawDataMissing(f"custom --format npy: {x} has no labels.npy beside it "
                                         f"({y}); write one label per row of inputs.npy")
        elif not os.path.isfile(self._table_file()):
            raise RawDataMissing(f"custom --format {self.format}: {self._table_file()} not found; "
                                 f"see preprocessing/datasets/custom.py for its layout")

    # === labels ===
    def _raw_label_values(self) -> Iterator[str]:
        if self.format == "npy":
            for _, _, y in self._npy_pairs():
                for v in np.unique(np.load(y, mmap_mode="r")):
                    yield str(v.item())
            return
        for source in self._line_sources():
            for _, fields in self._table_rows(source):
                if isinstance(fields, tuple):
                    yield fields[0]

    def label_values(self) -> list[str]:
        if self._labels is None:
            self.check_raw()
            self._labels = sorted_label_values(set(self._raw_label_values()))
        return self._labels

    def _label(self, raw: Any) -> Any:
        text = str(raw.item() if isinstance(raw, np.generic) else raw).strip()
        if self.task == "regression":
            value = float(text)
            if not math.isfinite(value):
                raise ValueError(f"label {text!r} is not finite")
            return np.float32(value)
        if self._label_index is None:
            self._label_index = {v: i for i, v in enumerate(self.label_values())}
        index = self._label_index.get(text)
        if index is None:
            raise ValueError(f"label {text!r} is not one of the dataset's labels")
        return index

    # === spec ===
    def _example_shape_and_dtype(self) -> tuple[list[int], np.dtype]:
        _, x, _ = self._npy_pairs()[0]
        array = np.load(x, mmap_mode="r")
        return list(array.shape[1:]), array.dtype

    def spec_template(self) -> DatasetSpec:
        self.check_raw()
        fields: dict[str, Any]
        if self.format == "npy":
            shape, dtype = self._example_shape_and_dtype()
            if self.input_shape and self.input_shape != shape:
                raise CustomDataError(f"--input_shape={self.input_shape} but "
                                      f"{self._npy_pairs()[0][1]} holds examples of shape {shape}")
            fields = self._npy_layout(shape, dtype)
        elif self.format == "csv":
            header = next(csv.reader([_line_ranges.read_first_line(self._table_file())]), [])
            if self.label_column not in header:
                raise CustomDataError(f"--label_column={self.label_column!r} is not a column of "
                                      f"{self._table_file()} (columns: {', '.join(header)})")
            f = len(header) - 1
            fields = dict(modality="tabular", input_shape=[f], tokenizer="tabular",
                          patch_shape=[1], num_tokens=f, token_dim=1, token_grid=[f],
                          extra={"feature_names": [c for c in header if c != self.label_column]})
        else:
            if not self.vocab or not self.seq_len:
                raise CustomDataError("custom --format text needs --vocab (the characters; the "
                                      "first one pads) and --seq_len (tokens per example)")
            if len(set(self.vocab)) != len(self.vocab):
                raise CustomDataError(f"--vocab={self.vocab!r} repeats a character")
            fields = dict(modality="token", input_shape=[self.seq_len], tokenizer="discrete",
                          patch_shape=[1], num_tokens=self.seq_len, vocab_size=len(self.vocab),
                          token_grid=[self.seq_len], input_dtype="int64",
                          extra={"vocab": self.vocab, "pad_token": self.vocab[0]})
        if self.task == "regression":
            labels = dict(task="regression", metric="spearman", num_classes=0, label_names=[],
                          label_dtype="float32")
        else:
            values = self.label_values()
            labels = dict(task="binary" if len(values) == 2 else "multiclass",
                          metric="accuracy", num_classes=len(values), label_names=values,
                          label_dtype="int64")
        extra = fields.pop("extra", {})
        extra.update(format=self.format, data_dir=os.path.abspath(self._data_dir()))
        return DatasetSpec(name=self.dataset_name, label_shape=[], extra=extra, **fields,
                           **labels).validate(f"custom --format {self.format}")

    def _npy_layout(self, shape: list[int], dtype: np.dtype) -> dict[str, Any]:
        if len(shape) == 1 and np.issubdtype(dtype, np.integer) and self.vocab_size:
            (length,) = shape
            return dict(modality="token", input_shape=shape, tokenizer="discrete",
                        patch_shape=[1], num_tokens=length, vocab_size=self.vocab_size,
                        token_grid=[length], input_dtype="int64")
        if len(shape) == 1:
            return dict(modality="tabular", input_shape=shape, tokenizer="tabular",
                        patch_shape=[1], num_tokens=shape[0], token_dim=1, token_grid=shape)
        if len(shape) not in (2, 3):
            raise CustomDataError(f"custom --format npy: examples of shape {shape}; expected "
                                  f"[F], [T, C] or [H, W, C]")
        patch = self.patch_shape
        if not patch or len(patch) != len(shape) - 1:
            raise CustomDataError(f"custom --format npy: examples of shape {shape} need "
                                  f"--patch_shape with {len(shape) - 1} value(s)")
        if any(s % p for s, p in zip(shape, patch)):
            raise CustomDataError(f"--patch_shape={patch} does not divide the example shape "
                                  f"{shape}")
        grid = [s // p for s, p in zip(shape, patch)]
        return dict(modality="time_series" if len(shape) == 2 else "image", input_shape=shape,
                    tokenizer="patch1d" if len(shape) == 2 else "patch2d", patch_shape=patch,
                    num_tokens=int(np.prod(grid)), token_dim=int(np.prod(patch)) * shape[-1],
                    token_grid=grid)

    # === reading ===
    def _line_sources(self) -> list[_line_ranges.LineRange]:
        return _line_ranges.plan_line_ranges(self._table_file(), ROWS_PER_SOURCE)

    def list_sources(self) -> list[Any]:
        self.check_raw()
        if self.task != "regression":
            self.label_values()  # computed on the driver; travels with the reader
        if self.format == "npy":
            sources = []
            for split, x, y in self._npy_pairs():
                n = np.load(x, mmap_mode="r").shape[0]
                sources += [("npy", split, x, y, start, min(start + ROWS_PER_SOURCE, n))
                            for start in range(0, n, ROWS_PER_SOURCE)]
            return sources
        return [("lines", r) for r in self._line_sources()]

    def _table_rows(self, source: _line_ranges.LineRange) -> Iterator[tuple[str, Any]]:
        """(where, (label, payload)) or (where, error message) per data line."""
        if self.format == "csv":
            header = next(csv.reader([_line_ranges.read_first_line(source.path)]), [])
            label_index = header.index(self.label_column) if self.label_column in header else -1
        for number, line in _line_ranges.iter_lines(source):
            where = f"{source.path}:{number}"
            if not line.strip() or (self.format == "csv" and number == 1):
                continue
            if self.format == "csv":
                fields = next(csv.reader([line]))
                if label_index < 0 or len(fields) != len(header):
                    yield where, f"expected {len(header)} columns, got {len(fields)}"
                    continue
                features = fields[:label_index] + fields[label_index + 1:]
                yield where, (fields[label_index].strip(), features)
            else:
                label, tab, text = line.partition("\t")
                if not tab:
                    yield where, "expected `<label><TAB><sequence>`, found no tab"
                    continue
                yield where, (label.strip(), text)

    def read_source(self, source: tuple) -> Iterator[RawExample | BadRecord]:
        if source[0] == "npy":
            yield from self._read_npy(*source[1:])
            return
        for where, row in self._table_rows(source[1]):
            if isinstance(row, str):
                yield BadRecord(path=where, reason=row)
                continue
            raw_label, payload = row
            try:
                label = self._label(raw_label)
                x = self._encode_text(payload) if self.format == "text" else \
                    self._parse_features(payload)
            except ValueError as e:
                yield BadRecord(path=where, reason=str(e))
                continue
            line = where.rsplit(":", 1)[-1]
            yield RawExample(id=f"line-{int(line):09d}", input=x, label=label)

    def _parse_features(self, fields: Sequence[str]) -> np.ndarray:
        values = np.array([float(v) for v in fields], dtype=np.float32)
        if not np.isfinite(values).all():
            raise ValueError("non-finite feature value (nan/inf)")
        return values

    def _encode_text(self, text: str) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.vocab)}
        text = text[:self.seq_len]
        unknown = [c for c in text if c not in index]
        if unknown:
            raise ValueError(f"character {unknown[0]!r} is not in --vocab={self.vocab!r}")
        ids = np.zeros(self.seq_len, dtype=np.int64)  # 0 = vocab[0] = padding
        ids[:len(text)] = [index[c] for c in text]
        return ids

    def _read_npy(self, split: str | None, x_path: str, y_path: str, start: int,
                  stop: int) -> Iterator[RawExample | BadRecord]:
        inputs = np.load(x_path, mmap_mode="r")
        labels = np.load(y_path, mmap_mode="r")
        if labels.shape[0] != inputs.shape[0]:
            yield BadRecord(path=y_path, reason=f"{labels.shape[0]} labels for "
                                                f"{inputs.shape[0]} rows of {x_path}")
            return
        for i in range(start, stop):
            where = f"{x_path}[{i}]"
            x = np.array(inputs[i])
            try:
                if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
                    raise ValueError("non-finite value (nan/inf) in the example")
                label = self._label(labels[i])
            except ValueError as e:
                yield BadRecord(path=where, reason=str(e))
                continue
            prefix = f"{split}/" if split else ""
            yield RawExample(id=f"{prefix}row-{i:09d}", input=x, label=label, split=split)


READERS = {"custom": CustomReader}
