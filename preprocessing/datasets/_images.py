"""What the DABS natural-image datasets share: decoding, resizing to 32 x 32, and the spec.

ImageNet32 and its transfer sets (CIFAR-10, CUB, VGG Flowers, DTD, Traffic Sign, Aircraft) all
use `[32, 32, 3]` RGB inputs with values in [0, 1] (torchvision's ToTensor scale), 4 x 4 patches
-> an 8 x 8 grid of 64 tokens of 48 values. The model sees those [0, 1] values as the reference
does (torchvision Resize + ToTensor, no Normalize): identity normalization, source "none".

Decoding uses Pillow (JPEG, PNG and the PPM of GTSRB, which tf.io.decode_image does not read);
grey, palette, CMYK and alpha images are converted to RGB. Resizing uses tf.image.resize
(bilinear with antialiasing, like torchvision's Resize on PIL images) straight to 32 x 32: the
aspect ratio is not kept (no crop), so the whole object stays in view.
"""

from __future__ import annotations

import io
import os

import numpy as np

from preprocessing.datasets.base import BadRecord, DatasetReader, RawExample
from preprocessing.spec import DatasetSpec

SIZE = 32
INPUT_SHAPE = [SIZE, SIZE, 3]
# The readers already store ToTensor's [0, 1] scale, which the reference feeds unnormalized.
UNIT_SCALE_NORMALIZATION = {"mean": [0.0] * 3, "std": [1.0] * 3, "source": "none"}


def decode_rgb(data: bytes) -> np.ndarray:
    """Encoded image bytes -> uint8 `[H, W, 3]`; ValueError when they are not a readable image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"not a readable image ({type(e).__name__}: {e})") from None


def resize_to_input(pixels: np.ndarray, size: int = SIZE) -> np.ndarray:
    """uint8/float `[H, W, C]` in 0..255 -> float32 `[size, size, C]` in [0, 1]."""
    import tensorflow as tf

    pixels = np.asarray(pixels)
    if pixels.shape[:2] != (size, size):
        pixels = tf.image.resize(pixels.astype(np.float32), (size, size), method="bilinear",
                                 antialias=True).numpy()
    return np.clip(pixels.astype(np.float32) / 255.0, 0.0, 1.0)


def crop_to_box(pixels: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The part of `[H, W, C]` inside `box` = (xmin, ymin, xmax, ymax), 1-based pixel coordinates
    with both ends included (FGVC-Aircraft's images_box.txt); ValueError if it is not inside."""
    xmin, ymin, xmax, ymax = (int(v) for v in box)
    height, width = pixels.shape[:2]
    if not (1 <= xmin <= xmax <= width and 1 <= ymin <= ymax <= height):
        raise ValueError(f"bounding box (xmin {xmin}, ymin {ymin}, xmax {xmax}, ymax {ymax}) is not "
                         f"inside the {width}x{height} image (1-based, inclusive coordinates)")
    return pixels[ymin - 1:ymax, xmin - 1:xmax]


def image_example(where: str, data: bytes, example_id: str, label: int, split: str | None = None,
                  group: str | None = None, box: tuple[int, int, int, int] | None = None,
                  size: int = SIZE) -> RawExample | BadRecord:
    """A RawExample for one encoded image, or a BadRecord naming `where` if it cannot be decoded
    (or `box`, a bounding box to crop to before resizing, is not inside it)."""
    try:
        pixels = decode_rgb(data)
        if box is not None:
            pixels = crop_to_box(pixels, box)
        image = resize_to_input(pixels, size)
    except ValueError as e:
        return BadRecord(path=where, reason=str(e))
    return RawExample(id=example_id, input=image, label=int(label), split=split, group=group)


class NaturalImageReader(DatasetReader):
    """Base of the 32 x 32 RGB readers; subclasses set `name`, classes and `raw_url`."""

    pretrain_dataset = "imagenet32"
    raw_url = ""
    fixed_normalization = UNIT_SCALE_NORMALIZATION

    def label_names(self) -> list[str]:
        raise NotImplementedError

    def num_classes(self) -> int:
        return len(self.label_names())

    def spec_template(self) -> DatasetSpec:
        return DatasetSpec(
            name=self.name, modality="image", input_shape=list(INPUT_SHAPE), tokenizer="patch2d",
            patch_shape=[4, 4], num_tokens=64, token_dim=48, token_grid=[8, 8],
            input_dtype="float32", task="multiclass", metric="accuracy",
            num_classes=self.num_classes(), label_names=self.label_names(), label_shape=[],
            label_dtype="int64", pretrain_dataset=self.pretrain_dataset,
            extra={"raw_url": self.raw_url, "pixel_scale": "RGB in [0, 1]",
                   "resize": "bilinear, antialiased, to 32x32 (aspect not kept)"},
        )

    def _data_dir(self) -> str:
        return self.data_dir or self.default_data_dir()


def chw_rows_to_images(rows: np.ndarray, size: int = SIZE) -> np.ndarray:
    """CIFAR / downsampled-ImageNet batch rows (`[N, 3*size*size]` uint8, all red values, then
    green, then blue) -> float32 `[N, size, size, 3]` in [0, 1]."""
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] != 3 * size * size:
        raise ValueError(f"expected rows of {3 * size * size} values, got shape {list(rows.shape)}")
    images = rows.reshape(-1, 3, size, size).transpose(0, 2, 3, 1)
    return images.astype(np.float32) / 255.0
