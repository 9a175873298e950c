"""`digits`: the embedded default dataset (scikit-learn's 1,797 real 8x8 handwritten digits).

It ships inside scikit-learn, so the whole pipeline, training and evaluation run offline with
no download. Images are grey-level 0..16, `[8, 8, 1]`; 2x2 patches give a 4x4 grid of 16 tokens
of 4 values. Per-channel statistics are computed by the pipeline on the train split.
"""

from __future__ import annotations

import functools
from typing import Iterator

import numpy as np

from preprocessing.datasets.base import BadRecord, DatasetReader, RawExample
from preprocessing.spec import DatasetSpec

NUM_EXAMPLES = 1797
# The Beam job reads the images in this many slices so the read step has parallelism.
_EXAMPLES_PER_SOURCE = 256


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    # Imported lazily: scikit-learn is only needed by the process that reads the images.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


class DigitsReader(DatasetReader):
    name = "digits"
    split_fractions = (("train", 0.8), ("val", 0.1), ("test", 0.1))
    storage_dtype = "uint8"  # grey levels 0..16

    def spec_template(self) -> DatasetSpec:
        return DatasetSpec(
            name=self.name,
            modality="image",
            input_shape=[8, 8, 1],
            tokenizer="patch2d",
            patch_shape=[2, 2],
            num_tokens=16,
            token_dim=4,
            token_grid=[4, 4],
            input_dtype="float32",
            task="multiclass",
            metric="accuracy",
            num_classes=10,
            label_names=[str(d) for d in range(10)],
            label_shape=[],
            label_dtype="int64",
        )

    def expected_files(self) -> list[str]:
        return ["(embedded in scikit-learn: sklearn.datasets.load_digits)"]

    def check_raw(self) -> None:
        # Nothing to download; fail early and clearly if scikit-learn is missing.
        import sklearn.datasets  # noqa: F401

    def list_sources(self) -> list[tuple[int, int]]:
        return [(start, min(start + _EXAMPLES_PER_SOURCE, NUM_EXAMPLES))
                for start in range(0, NUM_EXAMPLES, _EXAMPLES_PER_SOURCE)]

    def read_source(self, source: tuple[int, int]) -> Iterator[RawExample | BadRecord]:
        images, targets = _load_digits()
        start, stop = source
        for i in range(start, stop):
            yield RawExample(id=f"digits-{i:04d}", input=images[i][..., np.newaxis],
                             label=int(targets[i]))


READERS = {"digits": DigitsReader}
