"""`vgg-flower`: Oxford 102 Category Flowers (transfer set of `imagenet32`), 102 classes.

Raw format (https://www.robots.ox.ac.uk/~vgg/data/flowers/102/) in data_dir: `102flowers.tgz`
(as downloaded or extracted: `jpg/image_00001.jpg` .. `image_08189.jpg`) and `imagelabels.mat`
(`labels`: `[1, 8189]`, classes 1..102 by image number), read with scipy.io.loadmat. Labels:
class - 1; label_names are the class numbers "1".."102" (the release has no names).

Splits: as DABS and the MetaMAE reference, not the official 1,020 / 1,020 / 6,149 split
(`setid.mat` is not used) but 80/20 train/test within each class (about 6,500 / 1,700 images):
one `np.random.RandomState(--seed)` (default 42, the reference's) shuffles each class's images
in turn, classes in the order they first appear in imagelabels.mat, each class's images in
number order; the first `int(0.8 * n)` of a class of n images are train, the rest test. This is
the reference's split exactly at seed 42, and the same whatever raw form the images come from.
The probe trains on train and reports on test (no val split).

Without those files, a prepared TFDS `oxford_flowers102` dataset
(`oxford_flowers102/<version>/dataset_info.json`, nothing downloaded) is read instead: TFDS
built it from the same files with label = class - 1 (our ids); ids from `file_name`
(`image_00001`); the JPEG bytes are decoded and resized exactly as the archive's files are. Its
`train`/`validation`/`test` splits are ignored: the per-class split above is computed from the
(image number, label) of all its records, read once before the job (images not decoded).
"""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np

from preprocessing.datasets import _image_files, _tfds
from preprocessing.datasets.base import BadRecord, RawExample

URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
NUM_CLASSES = 102
TRAIN_FRACTION = 0.8  # per class, as the reference: the first int(0.8 * n) shuffled images
_FILE_NAME_RE = re.compile(r"^image_(\d{5})\.jpg$")


def per_class_split(labels_by_number: dict[int, int], seed: int) -> dict[int, str]:
    """image number -> "train" / "test": the reference's per-class 80/20 split (see the module
    docstring); `labels_by_number` maps each image number to its class."""
    by_class: dict[int, list[int]] = {}
    for number in sorted(labels_by_number):  # dict order = first appearance of each class
        by_class.setdefault(labels_by_number[number], []).append(number)
    shuffler = np.random.RandomState(seed)  # one stream for all classes, as the reference
    splits = {}
    for numbers in by_class.values():
        order = np.arange(len(numbers))
        shuffler.shuffle(order)
        num_train = int(TRAIN_FRACTION * len(numbers))
        for rank, i in enumerate(order):
            splits[numbers[i]] = "train" if rank < num_train else "test"
    return splits


def image_number(example_id: str) -> int:
    """`image_00001` -> 1."""
    return int(example_id.rsplit("_", 1)[1])


class VGGFlowerReader(_tfds.PreparedTfds, _image_files.ImageFilesReader):
    name = "vgg-flower"
    raw_url = URL
    archive_names = ("102flowers.tgz",)
    image_pattern = r"(?:^|/)jpg/image_(\d{5})\.jpg$"
    metadata_files = {"labels": "imagelabels.mat"}
    split_fractions = (("train", TRAIN_FRACTION), ("test", 1 - TRAIN_FRACTION))  # names; see split_of
    tfds_builder = "oxford_flowers102"
    tfds_splits = {"train": None, "validation": None, "test": None}  # split_of decides
    tfds_skip_decoding = ("image",)

    def label_names(self) -> list[str]:
        return [str(i) for i in range(1, NUM_CLASSES + 1)]

    def parse_metadata(self, found):
        from scipy.io import loadmat

        labels = loadmat(io.BytesIO(found["labels"][1]))["labels"].reshape(-1).astype(int)
        return {"labels": labels.tolist()}

    def describe(self, groups, metadata):
        number = int(groups[0])
        if not 1 <= number <= len(metadata["labels"]):
            raise ValueError(f"image {number} has no entry in imagelabels.mat")
        label = metadata["labels"][number - 1] - 1
        if not 0 <= label < NUM_CLASSES:
            raise ValueError(f"class {label + 1} of image {number} is outside 1..{NUM_CLASSES}")
        return f"image_{number:05d}", label, None, None

    def tfds_example(self, record: dict[str, Any], index: int, split: str, info: Any) -> RawExample:
        file_name = _tfds.text(record["file_name"])  # `image_00001.jpg`
        image = _tfds.decode_image(record["image"])
        return RawExample(id=file_name.rsplit(".", 1)[0], input=image,
                          label=_tfds.label_index(record, NUM_CLASSES))

    # === the per-class split ===
    def check_tfds(self) -> None:
        self.labels_by_number()  # in the driver, so that the workers receive the table

    def labels_by_number(self) -> dict[int, int]:
        """Every image number of the dataset -> its class (from imagelabels.mat, or from all
        the TFDS records); computed once per reader."""
        table = self.__dict__.get("_labels_by_number")
        if table is None:
            if self.reads_tfds():
                table = self._tfds_labels_by_number()
            else:
                table = {i + 1: label for i, label in enumerate(self.metadata()["labels"])}
            self.__dict__["_labels_by_number"] = table
        return table

    def _tfds_labels_by_number(self) -> dict[int, int]:
        def number_and_label(record, index, split, info):
            m = _FILE_NAME_RE.match(_tfds.text(record["file_name"]))
            if not m:
                raise ValueError(f"file_name {_tfds.text(record['file_name'])!r} is not image_NNNNN.jpg")
            return int(m[1]), _tfds.label_index(record, NUM_CLASSES)

        table = {}
        for source in self.tfds_sources():  # unreadable records are reported by the job itself
            for item in _tfds.read_records(source, number_and_label, self.tfds_skip_decoding):
                if not isinstance(item, BadRecord):
                    table[item[0]] = item[1]
        return table

    def split_of(self, example: RawExample, seed: int) -> str:
        cached = self.__dict__.get("_split_by_number")
        if cached is None or cached[0] != seed:
            cached = (seed, per_class_split(self.labels_by_number(), seed))
            self.__dict__["_split_by_number"] = cached
        number = image_number(example.id)
        if number not in cached[1]:
            raise ValueError(f"{self.name}: image {example.id} is not in the label table")
        return cached[1][number]


READERS = {"vgg-flower": VGGFlowerReader}
