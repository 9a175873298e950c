"""`aircraft`: FGVC-Aircraft 2013b (transfer set of `imagenet32`), 100 variants.

Raw format: `fgvc-aircraft-2013b.tar.gz` (https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/)
in data_dir, as downloaded or extracted: `fgvc-aircraft-2013b/data/images/<id>.jpg`,
`data/variants.txt` (the 100 variant names, one per line),
`data/images_variant_{train,val,test}.txt` (`<id> <variant>`; names may contain spaces) and
`data/images_box.txt` (`<id> <xmin> <ymin> <xmax> <ymax>`: the aircraft's bounding box, 1-based
pixel coordinates, both ends included).
Labels: index of the variant in variants.txt. Splits: the official ones.
As DABS (and the MetaMAE reference), each image is cropped to its bounding box before it is
resized to 32 x 32 (which also leaves out the 20-row copyright banner at the bottom). An image
without a box, or whose box is not inside it, is a BadRecord.
Protocol (as the reference): the linear probe trains on train + val (`trainval`, 6,667 images)
and reports on test (3,333); no split is held out for model selection.
"""

from __future__ import annotations

from preprocessing.datasets import _image_files
from preprocessing.datasets.base import RawDataMissing

ARCHIVE_NAME = "fgvc-aircraft-2013b.tar.gz"
URL = "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz"
NUM_CLASSES = 100
BOX_FILE = "images_box.txt"


class AircraftReader(_image_files.ImageFilesReader):
    name = "aircraft"
    raw_url = URL
    archive_names = (ARCHIVE_NAME,)
    image_pattern = r"(?:^|/)data/images/(\d+)\.jpg$"
    metadata_files = {"variants": "variants.txt", "train": "images_variant_train.txt",
                      "val": "images_variant_val.txt", "test": "images_variant_test.txt",
                      "boxes": BOX_FILE}
    split_fractions = (("train", 1 / 3), ("val", 1 / 3), ("test", 1 / 3))  # names only: splits are official
    protocol = {"probe_train": ["train", "val"], "probe_val": []}

    def spec_template(self):
        spec = super().spec_template()
        spec.extra["crop"] = f"each image cropped to its bounding box ({BOX_FILE}) before resizing"
        return spec

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
        boxes = {}
        for line in _image_files.text_lines(found, "boxes"):
            fields = line.split()
            try:
                if len(fields) != 5:
                    raise ValueError
                boxes[fields[0]] = tuple(int(v) for v in fields[1:])
            except ValueError:
                raise RawDataMissing(f"{self.name}: {found['boxes'][0]}: expected lines "
                                     f"`<image id> <xmin> <ymin> <xmax> <ymax>` (integers), got "
                                     f"{line!r}") from None
        return {"variants": variants, "images": images, "boxes": boxes}

    def describe(self, groups, metadata):
        (image_id,) = groups
        if image_id not in metadata["images"]:
            return None
        split, variant = metadata["images"][image_id]
        if variant not in metadata["variants"]:
            raise ValueError(f"variant {variant!r} of image {image_id} is not in variants.txt")
        return image_id, metadata["variants"].index(variant), split, None

    def crop_box(self, example_id, metadata):
        box = metadata["boxes"].get(example_id)
        if box is None:
            raise ValueError(f"image {example_id} has no bounding box in {BOX_FILE}")
        return box


READERS = {"aircraft": AircraftReader}
