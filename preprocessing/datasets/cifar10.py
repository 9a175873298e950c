"""`cifar10`: CIFAR-10 (transfer set of `imagenet32`), 10 classes, 32 x 32 RGB.

Raw format: `cifar-10-python.tar.gz` (https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz)
in data_dir, as downloaded or extracted: `cifar-10-batches-py/data_batch_1..5` and `test_batch`,
Python-2 pickles of dicts with byte-string keys `b"data"` (uint8 `[10000, 3072]`, R, G, B planes)
and `b"labels"` (0..9), plus `batches.meta` (class names; the names are fixed, see CLASSES).
Splits: the official ones, data_batch_* -> train, test_batch -> test (no val split: the trainer
then validates on test, as DABS evaluates CIFAR-10). Pixels in [0, 1], not normalized further
(as the reference's ToTensor; see `_images`).

Without those files, a prepared TFDS `cifar10` dataset (`cifar10/<version>/dataset_info.json`,
nothing downloaded) is read instead: TFDS `train` -> train, `test` -> test, the ClassLabel ids
are CIFAR's (same class order), the PNG-encoded `image` is decoded to the same uint8 pixels
and scaled to [0, 1] alike; ids are TFDS's (`train_00012`). A record whose image is not
32 x 32 RGB becomes a BadRecord `tfds:<dir>:<split>[<index>]`.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from typing import Any, Iterator

import numpy as np

from preprocessing.datasets import _archives, _images, _tfds
from preprocessing.datasets.base import BadRecord, RawDataMissing, RawExample

ARCHIVE_NAME = "cifar-10-python.tar.gz"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


def batch_pattern(batch: str) -> str:
    return rf"(?:^|/){batch}$"


def parse_batch(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 `[N, 32, 32, 3]`, labels `[N]`) of one pickled CIFAR batch."""
    batch = pickle.load(io.BytesIO(data), encoding="bytes")
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError("expected a pickled dict with b'data' and b'labels'")
    images = _images.chw_rows_to_images(batch[b"data"])
    labels = np.asarray(batch[b"labels"]).reshape(-1)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels


class Cifar10Reader(_tfds.PreparedTfds, _images.NaturalImageReader):
    name = "cifar10"
    raw_url = URL
    split_fractions = (("train", 5 / 6), ("test", 1 / 6))  # names only: splits are official
    # 32 x 32 already, never resized: every value is an 8-bit pixel / 255.
    storage_dtype, storage_scale = "uint8", 255.0
    tfds_builder = "cifar10"
    tfds_splits = {"train": "train", "test": "test"}
    tfds_skip_decoding = ("image",)

    def label_names(self) -> list[str]:
        return list(CLASSES)

    def raw_expected_files(self) -> list[str]:
        return [f"{ARCHIVE_NAME} (or extracted cifar-10-batches-py/)"]

    def _extracted(self) -> dict[str, str]:
        found = {}
        for batch in BATCHES:
            hits = _archives.walk_files(self._data_dir(), batch_pattern(batch))
            if hits:
                found[batch] = os.path.join(self._data_dir(), hits[0])
        return found

    def check_raw_files(self) -> None:
        d = self._data_dir()
        if _archives.archives_in(d, [ARCHIVE_NAME]):
            return
        missing = [b for b in BATCHES if b not in self._extracted()]
        if missing:
            raise RawDataMissing(
                f"{self.name}: {ARCHIVE_NAME} not found in {os.path.abspath(d)} (nor extracted "
                f"cifar-10-batches-py/{', '.join(missing)}); download it from {URL} into "
                f"{os.path.abspath(d)}/")

    def list_raw_sources(self) -> list[tuple[str, str]]:
        self.check_raw()
        extracted = self._extracted()
        if len(extracted) == len(BATCHES):
            return [("file", extracted[b], b) for b in BATCHES]
        archive = _archives.archives_in(self._data_dir(), [ARCHIVE_NAME])[0]
        return [("archive", archive, b) for b in BATCHES]

    def read_raw_source(self, source: tuple[str, str, str]) -> Iterator[RawExample | BadRecord]:
        kind, path, batch = source
        where = path if kind == "file" else f"{path}:cifar-10-batches-py/{batch}"
        try:
            if kind == "file":
                with open(path, "rb") as f:
                    data = f.read()
            else:
                data = next((d for _, d in _archives.iter_archive(path, batch_pattern(batch))), None)
                if data is None:
                    raise ValueError(f"the archive holds no cifar-10-batches-py/{batch}")
            images, labels = parse_batch(data)
        except (ValueError, OSError, EOFError, pickle.UnpicklingError, KeyError) as e:
            yield BadRecord(path=where, reason=f"unreadable batch ({type(e).__name__}: {e})")
            return
        split = "test" if batch == "test_batch" else "train"
        for i, (image, label) in enumerate(zip(images, labels)):
            if not 0 <= int(label) < len(CLASSES):
                yield BadRecord(path=f"{where}:row {i}", reason=f"label {int(label)} is outside 0..9")
                continue
            yield RawExample(id=f"{batch}-{i:05d}", input=image, label=int(label), split=split)

    def tfds_example(self, record: dict[str, Any], index: int, split: str, info: Any) -> RawExample:
        image = _tfds.decode_image(record["image"], shape=(_images.SIZE, _images.SIZE))
        return RawExample(id=_tfds.text(record["id"]), input=image,
                          label=_tfds.label_index(record, len(CLASSES)), split=self.tfds_splits[split])


READERS = {"cifar10": Cifar10Reader}
