"""`dtd`: Describable Textures Dataset (transfer set of `imagenet32`), 47 texture classes.

Raw format: `dtd-r1.0.1.tar.gz` (https://www.robots.ox.ac.uk/~vgg/data/dtd/) in data_dir, as
downloaded or extracted: `dtd/images/<class>/<class>_<n>.jpg` and `dtd/labels/train1.txt`,
`val1.txt`, `test1.txt` (one `<class>/<file>.jpg` per line). We use the first of the ten
official splits. Labels: index of the class folder in the sorted list CLASSES.
Protocol (as the reference): the linear probe trains on train1 + val1 (1,880 images) and reports
on test1 (1,880); no split is held out for model selection.

Without the archive, a prepared TFDS `dtd` dataset (`dtd/<version>/dataset_info.json`, nothing
downloaded; TFDS also uses split 1) is read instead: TFDS `train`/`validation`/`test` ->
train/val/test, the label by its class name, the id from `file_name` as above, and the JPEG
bytes decoded and resized exactly as the archive's files are.
"""

from __future__ import annotations

from typing import Any

from preprocessing.datasets import _image_files, _tfds
from preprocessing.datasets.base import RawExample

ARCHIVE_NAME = "dtd-r1.0.1.tar.gz"
URL = "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz"
CLASSES = ("banded", "blotchy", "braided", "bubbly", "bumpy", "chequered", "cobwebbed", "cracked",
           "crosshatched", "crystalline", "dotted", "fibrous", "flecked", "freckled", "frilly",
           "gauzy", "grid", "grooved", "honeycombed", "interlaced", "knitted", "lacelike", "lined",
           "marbled", "matted", "meshed", "paisley", "perforated", "pitted", "pleated",
           "polka-dotted", "porous", "potholed", "scaly", "smeared", "spiralled", "sprinkled",
           "stained", "stratified", "striped", "studded", "swirly", "veined", "waffled", "woven",
           "wrinkled", "zigzagged")
SPLIT_FILES = {"train": "train1.txt", "val": "val1.txt", "test": "test1.txt"}


class DTDReader(_tfds.PreparedTfds, _image_files.ImageFilesReader):
    name = "dtd"
    raw_url = URL
    archive_names = (ARCHIVE_NAME,)
    image_pattern = r"(?:^|/)images/(([^/]+)/[^/]+\.jpg)$"
    metadata_files = dict(SPLIT_FILES)
    split_fractions = (("train", 1 / 3), ("val", 1 / 3), ("test", 1 / 3))  # names only: splits are official
    protocol = {"probe_train": ["train", "val"], "probe_val": []}
    tfds_builder = "dtd"
    tfds_splits = {"train": "train", "validation": "val", "test": "test"}
    tfds_skip_decoding = ("image",)

    def label_names(self) -> list[str]:
        return list(CLASSES)

    def parse_metadata(self, found):
        return {line: split for split in SPLIT_FILES for line in _image_files.text_lines(found, split)}

    def describe(self, groups, metadata):
        path, cls = groups
        split = metadata.get(path)
        if split is None:
            return None  # not in split 1
        if cls not in CLASSES:
            raise ValueError(f"class folder {cls!r} is not one of the 47 DTD classes")
        return path[:-4].replace("/", "-"), CLASSES.index(cls), split, None

    def tfds_example(self, record: dict[str, Any], index: int, split: str, info: Any) -> RawExample:
        path = _tfds.text(record["file_name"])  # `<class>/<class>_<n>.jpg`
        cls = info.features["label"].names[int(record["label"])]
        if cls not in CLASSES:
            raise ValueError(f"{path}: class {cls!r} is not one of the 47 DTD classes")
        image = _tfds.decode_image(record["image"])
        return RawExample(id=path.rsplit(".", 1)[0].replace("/", "-"), input=image,
                          label=CLASSES.index(cls), split=self.tfds_splits[split])


READERS = {"dtd": DTDReader}
