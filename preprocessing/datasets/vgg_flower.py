"""`vgg-flower`: Oxford 102 Category Flowers (transfer set of `imagenet32`), 102 classes.

Raw format (https://www.robots.ox.ac.uk/~vgg/data/flowers/102/) in data_dir: `102flowers.tgz`
(as downloaded or extracted: `jpg/image_00001.jpg` .. `image_08189.jpg`), `imagelabels.mat`
(`labels`: `[1, 8189]`, classes 1..102 by image number) and `setid.mat` (`trnid`, `valid`,
`tstid`: 1-based image numbers of the official train / val / test sets), read with
scipy.io.loadmat. Labels: class - 1; label_names are the class numbers "1".."102" (the
release has no names). Splits: the official ones (1,020 / 1,020 / 6,149 images).

Without those files, a prepared TFDS `oxford_flowers102` dataset
(`oxford_flowers102/<version>/dataset_info.json`, nothing downloaded) is read instead: TFDS
built it from the same files with label = class - 1 (our ids) and the same official splits
(`train`/`validation`/`test` -> train/val/test); ids from `file_name` (`image_00001`); the JPEG
bytes are decoded and resized exactly as the archive's files are.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from preprocessing.datasets import _image_files, _tfds
from preprocessing.datasets.base import RawExample

URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
NUM_CLASSES = 102
SPLIT_KEYS = {"trnid": "train", "valid": "val", "tstid": "test"}


class VGGFlowerReader(_tfds.PreparedTfds, _image_files.ImageFilesReader):
    name = "vgg-flower"
    raw_url = URL
    archive_names = ("102flowers.tgz",)
    image_pattern = r"(?:^|/)jpg/image_(\d{5})\.jpg$"
    metadata_files = {"labels": "imagelabels.mat", "setid": "setid.mat"}
    split_fractions = (("train", 0.2), ("val", 0.2), ("test", 0.6))  # names only: splits are official
    tfds_builder = "oxford_flowers102"
    tfds_splits = {"train": "train", "validation": "val", "test": "test"}
    tfds_skip_decoding = ("image",)

    def label_names(self) -> list[str]:
        return [str(i) for i in range(1, NUM_CLASSES + 1)]

    def parse_metadata(self, found):
        from scipy.io import loadmat

        labels = loadmat(io.BytesIO(found["labels"][1]))["labels"].reshape(-1).astype(int)
        setid = loadmat(io.BytesIO(found["setid"][1]))
        splits = {}
        for key, split in SPLIT_KEYS.items():
            for number in np.asarray(setid[key]).reshape(-1).astype(int):
                splits[int(number)] = split
        return {"labels": labels.tolist(), "splits": splits}

    def describe(self, groups, metadata):
        number = int(groups[0])
        if not 1 <= number <= len(metadata["labels"]):
            raise ValueError(f"image {number} has no entry in imagelabels.mat")
        split = metadata["splits"].get(number)
        if split is None:
            return None
        label = metadata["labels"][number - 1] - 1
        if not 0 <= label < NUM_CLASSES:
            raise ValueError(f"class {label + 1} of image {number} is outside 1..{NUM_CLASSES}")
        return f"image_{number:05d}", label, split, None

    def tfds_example(self, record: dict[str, Any], index: int, split: str, info: Any) -> RawExample:
        file_name = _tfds.text(record["file_name"])  # `image_00001.jpg`
        image = _tfds.decode_image(record["image"])
        return RawExample(id=file_name.rsplit(".", 1)[0], input=image,
                          label=_tfds.label_index(record, NUM_CLASSES), split=self.tfds_splits[split])


READERS = {"vgg-flower": VGGFlowerReader}
