"""`imagenet32`: Downsampled ImageNet 32 x 32 (Chrabaszcz et al. 2017), 1000 classes.

Raw format (https://image-net.org/download-images.php, "Downsampled ImageNet 32x32";
`Imagenet32_train.zip` and `Imagenet32_val.zip`, extracted in data_dir):
`Imagenet32_train/train_data_batch_1` .. `train_data_batch_10` and `Imagenet32_val/val_data`,
each a Python pickle of a dict with `data` (uint8 `[N, 3072]`, rows are the R, G then B planes
of a 32 x 32 image), `labels` (1-based class numbers 1..1000) and, in train batches, `mean`.
The `_npz` release (same names + `.npz`, same keys) works too. Files are found at any depth.

Labels: the 1-based class number minus one; label_names are the official class numbers "1".."1000"
(the batches carry no WordNet ids). Splits: the train batches -> train (99 %) / val (1 %, seeded
hash of the id, for the trainer's validation), `val_data` (ImageNet's validation set) -> test.
Pixels in [0, 1], not normalized further (as the reference's ToTensor; see `_images`).
Each batch file (~400 MB) is one read task and is loaded whole by its worker.

Without batch files, a prepared TFDS `imagenet_resized/32x32` dataset
(`imagenet_resized/32x32/<version>/dataset_info.json`, nothing downloaded) is read instead, in
ranges of 1,000 examples. TFDS built it from the same Imagenet32 npz files with label =
class number - 1, i.e. our label ids; TFDS `train` -> train/val (the same 99/1 hash rule),
`validation` -> test; ids `imagenet_resized-<split>-<index>`. The PNG-encoded images decode to
the same uint8 pixels, scaled to [0, 1] alike; one that is not 32 x 32 RGB is a BadRecord.
"""

from __future__ import annotations

import os
import pickle
import re
from typing import Any, Iterator

import numpy as np

from preprocessing.datasets import _archives, _images, _tfds
from preprocessing.datasets.base import BadRecord, RawDataMissing, RawExample, split_by_fractions

URL = "https://image-net.org/download-images.php (Downsampled ImageNet 32x32)"
BATCH_PATTERN = r"(?:^|/)(train_data_batch_(\d+)|val_data)(\.npz)?$"
NUM_CLASSES = 1000
NUM_TRAIN_BATCHES = 10
_VAL_FRACTION = 0.01


def load_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(data `[N, 3072]` uint8, labels `[N]` 1-based) of one batch file (pickle or npz)."""
    if path.endswith(".npz"):
        with np.load(path) as z:
            return np.asarray(z["data"]), np.asarray(z["labels"]).reshape(-1)
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        raise ValueError(f"expected a pickled dict with 'data' and 'labels', got "
                         f"{sorted(batch) if isinstance(batch, dict) else type(batch).__name__}")
    return np.asarray(batch["data"]), np.asarray(batch["labels"]).reshape(-1)


class ImageNet32Reader(_tfds.PreparedTfds, _images.NaturalImageReader):
    name = "imagenet32"
    pretrain_dataset = ""
    raw_url = URL
    split_fractions = (("train", 1.0 - _VAL_FRACTION), ("val", _VAL_FRACTION), ("test", 0.0))
    # 32 x 32 already, never resized: every value is an 8-bit pixel / 255.
    storage_dtype, storage_scale = "uint8", 255.0
    tfds_builder = "imagenet_resized"
    tfds_configs = ("32x32",)
    tfds_splits = {"train": None, "validation": "test"}  # train: train/val by split_of
    tfds_skip_decoding = ("image",)

    def label_names(self) -> list[str]:
        return [str(i) for i in range(1, NUM_CLASSES + 1)]

    def raw_expected_files(self) -> list[str]:
        return [f"Imagenet32_train/train_data_batch_{{1..{NUM_TRAIN_BATCHES}}}", "Imagenet32_val/val_data"]

    def _batch_files(self) -> list[str]:
        return _archives.walk_files(self._data_dir(), BATCH_PATTERN)

    def check_raw_files(self) -> None:
        d = os.path.abspath(self._data_dir())
        names = {re.search(BATCH_PATTERN, rel).group(1) for rel in self._batch_files()}
        missing = [f"train_data_batch_{i}" for i in range(1, NUM_TRAIN_BATCHES + 1)
                   if f"train_data_batch_{i}" not in names]
        if "val_data" not in names:
            missing.append("val_data")
        if len(missing) == NUM_TRAIN_BATCHES + 1:
            raise RawDataMissing(
                f"{self.name}: no Imagenet32 batches in {d}. Download Imagenet32_train.zip and "
                f"Imagenet32_val.zip from {URL} and extract them in {d}/ (giving "
                f"Imagenet32_train/train_data_batch_1..10 and Imagenet32_val/val_data).")
        if "val_data" in missing or not names - {"val_data"}:
            raise RawDataMissing(f"{self.name}: {', '.join(missing)} missing in {d}; extract "
                                 f"Imagenet32_train.zip and Imagenet32_val.zip from {URL} there.")

    def list_raw_sources(self) -> list[str]:
        self.check_raw()
        return [os.path.join(self._data_dir(), rel) for rel in self._batch_files()]

    def read_raw_source(self, source: str) -> Iterator[RawExample | BadRecord]:
        stem = re.search(BATCH_PATTERN, source.replace(os.sep, "/")).group(1)
        try:
            data, labels = load_batch(source)
            images = _images.chw_rows_to_images(data)
            if labels.shape[0] != images.shape[0]:
                raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        except (ValueError, OSError, EOFError, pickle.UnpicklingError, KeyError) as e:
            yield BadRecord(path=source, reason=f"unreadable batch ({type(e).__name__}: {e})")
            return
        is_train = stem != "val_data"
        for i, (image, label) in enumerate(zip(images, labels)):
            example_id = f"{stem}-{i:06d}"
            if not 1 <= int(label) <= NUM_CLASSES:
                yield BadRecord(path=f"{source}:row {i}", reason=f"label {int(label)} is outside 1..{NUM_CLASSES}")
                continue
            # Train rows get their train/val split in split_of (seeded by --seed).
            yield RawExample(id=example_id, input=image, label=int(label) - 1,
                             split=None if is_train else "test")

    def tfds_example(self, record: dict[str, Any], index: int, split: str, info: Any) -> RawExample:
        image = _tfds.decode_image(record["image"], shape=(_images.SIZE, _images.SIZE))
        return RawExample(id=f"imagenet_resized-{split}-{index:08d}", input=image,
                          label=_tfds.label_index(record, NUM_CLASSES), split=self.tfds_splits[split])

    def split_of(self, example: RawExample, seed: int) -> str:
        if example.split is not None:
            return example.split
        return split_by_fractions(example.id, seed, (("train", 1.0 - _VAL_FRACTION), ("val", _VAL_FRACTION)))


READERS = {"imagenet32": ImageNet32Reader}
