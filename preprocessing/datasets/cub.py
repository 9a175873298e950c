"""`cub`: Caltech-UCSD Birds-200-2011 (transfer set of `imagenet32`), 200 species.

Raw format: `CUB_200_2011.tgz` (https://data.caltech.edu/records/65de6-vzb87) in data_dir, as
downloaded or extracted: `CUB_200_2011/images/<NNN.Class_Name>/<file>.jpg`, `images.txt`
(`<image id> <relative path>`), `image_class_labels.txt` (`<image id> <class 1..200>`),
`train_test_split.txt` (`<image id> <1 = train, 0 = test>`) and `classes.txt`
(`<class id> <NNN.Class_Name>`). Whole images are used (no bounding-box crop).
Labels: class id - 1; label_names: the 200 class folder names. Splits: the official split.

Without the archive, a prepared TFDS `caltech_birds2011` dataset
(`caltech_birds2011/<version>/dataset_info.json`, nothing downloaded) is read instead: TFDS
built it from the same archive with label = class id - 1 (our ids) and the official
`train`/`test` split; whole images (its bbox/mask features are not used), the JPEG bytes decoded
and resized exactly as the archive's files are. TFDS keeps no image id, so ids are
`cub-<file stem>` (`cub-Black_Footed_Albatross_0046_18`), and label_names stay empty unless a
classes.txt is under data_dir (TFDS keeps only lower-cased names per record).
"""

from __future__ import annotations

import posixpath
from typing import Any

from preprocessing.datasets import _image_files, _tfds
from preprocessing.datasets.base import RawDataMissing, RawExample

ARCHIVE_NAME = "CUB_200_2011.tgz"
URL = "https://data.caltech.edu/records/65de6-vzb87 (CUB_200_2011.tgz)"
NUM_CLASSES = 200


class CUBReader(_tfds.PreparedTfds, _image_files.ImageFilesReader):
    name = "cub"
    raw_url = URL
    archive_names = (ARCHIVE_NAME,)
    image_pattern = r"(?:^|/)images/(\d{3}\.[^/]+/[^/]+\.jpg)$"
    metadata_files = {"images": "images.txt", "labels": "image_class_labels.txt",
                      "split": "train_test_split.txt", "classes": "classes.txt"}
    split_fractions = (("train", 0.5), ("test", 0.5))  # names only: splits are official
    tfds_builder = "caltech_birds2011"
    tfds_splits = {"train": "train", "test": "test"}
    tfds_skip_decoding = ("image", "segmentation_mask")

    def label_names(self) -> list[str]:
        try:
            return self.metadata()["classes"]
        except RawDataMissing:  # not downloaded yet: names unknown, count fixed
            return []

    def num_classes(self) -> int:
        return NUM_CLASSES

    def parse_metadata(self, found) -> dict[str, Any]:
        ids = dict(line.split(" ", 1)[::-1] for line in _image_files.text_lines(found, "images"))
        labels = dict(line.split() for line in _image_files.text_lines(found, "labels"))
        splits = dict(line.split() for line in _image_files.text_lines(found, "split"))
        classes = [line.split(" ", 1)[1] for line in _image_files.text_lines(found, "classes")]
        return {"by_path": {path: (image_id, int(labels[image_id]) - 1,
                                   "train" if splits.get(image_id) == "1" else "test")
                            for path, image_id in ids.items()},
                "classes": classes}

    def describe(self, groups, metadata):
        (path,) = groups
        if path not in metadata["by_path"]:
            raise ValueError(f"{path} is not listed in images.txt")
        image_id, label, split = metadata["by_path"][path]
        if not 0 <= label < NUM_CLASSES:
            raise ValueError(f"class {label + 1} of image {image_id} is outside 1..{NUM_CLASSES}")
        return f"cub-{image_id}", label, split, None

    def tfds_example(self, record: dict[str, Any], index: int, split: str, info: Any) -> RawExample:
        # `CUB_200_2011/images/<NNN.Class_Name>/<stem>.jpg`
        stem = posixpath.splitext(posixpath.basename(_tfds.text(record["image/filename"])))[0]
        image = _tfds.decode_image(record["image"])
        return RawExample(id=f"cub-{stem}", input=image,
                          label=_tfds.label_index(record, NUM_CLASSES), split=self.tfds_splits[split])


READERS = {"cub": CUBReader}
