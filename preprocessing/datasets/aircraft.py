"""`aircraft`: FGVC-Aircraft 2013b (transfer set of `imagenet32`), 100 variants.

Raw format: `fgvc-aircraft-2013b.tar.gz` (https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/)
in data_dir, as downloaded or extracted: `fgvc-aircraft-2013b/data/images/<id>.jpg`,
`data/variants.txt` (the 100 variant names, one per line) and
`data/images_variant_{train,val,test}.txt` (`<id> <variant>`; names may contain spaces).
Labels: index of the variant in variants.txt. Splits: the official ones.
The bottom 20 pixel rows of every image are the photographer's copyright banner (per the
dataset README) and are dropped before resizing.
"""

from __future__ import annotations

from preprocessing.datasets import _image_files
from preprocessing.datasets.base import RawDataMissing

ARCHIVE_NAME = "fgvc-aircraft-2013b.tar.gz"
URL = "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz"
NUM_CLASSES = 100
BANNER_ROWS = 20


class AircraftReader(_image_files.ImageFilesReader):
    name = "aircraft"
    raw_url = URL
    archive_names = (ARCHIVE_NAME,)
    image_pattern = r"(?:^|/)data/images/(\d+)\.jpg$"
    metadata_files = {"variants": "variants.txt", "train": "images_variant_train.txt",
                      "val": "images_variant_val.txt", "test": "images_variant_test.txt"}
    crop_bottom = BANNER_ROWS
    split_fractions = (("train", 1 / 3), ("val", 1 / 3), ("test", 1 / 3))  # names only: splits are official

    def label_names(self) -> list[str]:
        try:
            return self.metadata()["variants"]
        except RawDataMissing:  # not downloaded yet: names unknown, count fixed
            return []

    def num_classes(self) -> int:
        return NUM_CLASSES

    def parse_metadata(self, found):
        variants = _image_files.text_lines(found, "variants")
        images = {}
        for split in ("train", "val", "test"):
            for line in _image_files.text_lines(found, split):
                image_id, variant = line.split(" ", 1)
                images[image_id] = (split, variant)
        return {"variants": variants, "images": images}

    def describe(self, groups, metadata):
        (image_id,) = groups
        if image_id not in metadata["images"]:
            return None
        split, variant = metadata["images"][image_id]
        if variant not in metadata["variants"]:
            raise ValueError(f"variant {variant!r} of image {image_id} is not in variants.txt")
        return image_id, metadata["variants"].index(variant), split, None


READERS = {"aircraft": AircraftReader}
