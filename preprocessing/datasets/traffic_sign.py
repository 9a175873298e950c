"""`traffic-sign`: German Traffic Sign Recognition Benchmark (transfer set of `imagenet32`), 43 classes.

Raw format: `GTSRB_Final_Training_Images.zip` (https://benchmark.ini.rub.de/gtsrb_dataset.html,
mirror https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/) in data_dir, as
downloaded or extracted: `GTSRB/Final_Training/Images/<class 00000..00042>/<track>_<n>.ppm`
with a `GT-<class>.csv` per folder (`Filename;Width;Height;Roi.X1;...;ClassId`). The label is
the class folder number (the CSV repeats it); whole images are used (no ROI crop).
Splits: as DABS and the MetaMAE reference, only the training images are used (the official test
set, whose labels are a separate download, is not), split 80/20 train/test *per image* (not per
track: frames of one physical sign land on both sides, as in the reference, whose accuracies
the paper reports). The reference shuffles each class's `glob` listing with
`np.random.RandomState(42)`, whose order depends on the file system, so its exact split cannot
be reproduced; we assign each image by a seeded hash of its id (`--seed`, default 42): stable
across runs, machines and archive/extracted forms, 80/20 in expectation in every class
(GTSRB classes hold 210 to 2,250 images). The probe trains on train and reports on test.
"""

from __future__ import annotations

from preprocessing.datasets import _image_files

ARCHIVE_NAME = "GTSRB_Final_Training_Images.zip"
URL = "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/GTSRB_Final_Training_Images.zip"
NUM_CLASSES = 43


class TrafficSignReader(_image_files.ImageFilesReader):
    name = "traffic-sign"
    raw_url = URL
    archive_names = (ARCHIVE_NAME,)
    image_pattern = r"(?:^|/)Final_Training/Images/(\d{5})/((\d{5})_(\d{5})\.ppm)$"
    split_fractions = (("train", 0.8), ("test", 0.2))  # per image, by hash of the id

    def label_names(self) -> list[str]:
        return [f"{i:05d}" for i in range(NUM_CLASSES)]

    def describe(self, groups, metadata):
        cls, _, track, n = groups
        label = int(cls)
        if label >= NUM_CLASSES:
            raise ValueError(f"class folder {cls} is outside 00000..{NUM_CLASSES - 1:05d}")
        return f"{cls}-{track}-{n}", label, None, None


READERS = {"traffic-sign": TrafficSignReader}
