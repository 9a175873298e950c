"""`custom_image_folder` and `custom_audio_folder`: your own data in a folder-per-class layout.

    <data_dir>/<class name>/<any name>.<jpg|jpeg|png|ppm|bmp|gif|webp>     (images)
    <data_dir>/<class name>/<any name>.<wav|flac|ogg>                       (audio)

Classes are the sorted sub-folder names; label = index in that list. Files directly in
data_dir are ignored then (deeper folders belong to their top-level class).
Splits: 80/10/10 train/val/test by a seeded hash of `<class>/<file>`. Per-channel normalization
statistics are computed by the pipeline on the train split.

Without labels: files directly in data_dir and no class sub-folder make a pretrain-only
dataset (spec task "none", every file in `train`). An `unlabeled/` sub-folder beside the class
folders is a pool that pretraining reads with the labelled training files (split `unlabeled`);
the probe uses the labelled splits (so no class may be named `unlabeled`).

Options (keyword arguments of the reader, `registry.get_reader(name, data_dir, **options)`):
- images: `image_size` (default 32, square), `patch_size` (default 4; must divide image_size),
  `channels` (3 = RGB, default; 1 = grey). Images are resized like the DABS natural-image sets.
- audio: none; every file becomes the DABS log-mel spectrogram `[224, 224, 1]` (16 x 16
  patches), so an encoder pretrained on `librispeech` transfers to it.
"""

from __future__ import annotations

import os
import re
from typing import Iterator

import numpy as np

import dataclasses

from preprocessing.datasets import _archives, _images, _speech
from preprocessing.datasets.base import BadRecord, DatasetReader, RawDataMissing, RawExample
from preprocessing.datasets.custom import POOL_PROTOCOL, POOL_SPLIT, pretrain_only_labels
from preprocessing.spec import UNLABELED, DatasetSpec

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "ppm", "bmp", "gif", "webp")
AUDIO_EXTENSIONS = ("wav", "flac", "ogg")
_FILES_PER_SOURCE = 256


class _FolderReader(DatasetReader):
    extensions: tuple[str, ...] = ()
    kind = ""
    split_fractions = (("train", 0.8), ("val", 0.1), ("test", 0.1))

    def __init__(self, data_dir: str | None = None, **options):
        super().__init__(data_dir, **options)
        # `--name`: the dataset name in spec.json and the output folder (default: the reader's).
        if options.get("name"):
            self.name = options["name"]

    def _data_dir(self) -> str:
        return self.data_dir or self.default_data_dir()

    @property
    def split_fractions(self) -> tuple[tuple[str, float], ...]:
        """80/10/10 with classes; all `train` for a pretrain-only folder (nothing to probe)."""
        return _FolderReader.labelled_split_fractions if self.labelled() else (("train", 1.0),)

    labelled_split_fractions = (("train", 0.8), ("val", 0.1), ("test", 0.1))

    def pattern(self) -> str:
        """Files of a class folder (group 1: the class), or of data_dir itself when it has no
        class folder (group 1 empty: unlabelled)."""
        files = r"[^/]+\.(?i:" + "|".join(self.extensions) + r")$"
        return r"^([^/]+)/(?:[^/]+/)*" + files if self.labelled() else r"^()" + files

    def _sub_folders(self) -> list[str]:
        d = self._data_dir()
        if not os.path.isdir(d):
            return []
        return sorted(e for e in os.listdir(d) if os.path.isdir(os.path.join(d, e)) and not e.startswith("."))

    def classes(self) -> list[str]:
        return [c for c in self._sub_folders() if c != POOL_SPLIT]

    def labelled(self) -> bool:
        """Class folders, or nothing at all yet (`--list`): labelled. Files of the kind
        directly in data_dir and no class folder: pretrain-only."""
        if self.classes():
            return True
        d = self._data_dir()
        files = os.listdir(d) if os.path.isdir(d) else []
        return not any(f.lower().endswith(tuple("." + e for e in self.extensions)) for f in files)

    def has_pool(self) -> bool:
        return self.labelled() and POOL_SPLIT in self._sub_folders()

    def with_labels_of_the_files(self, spec: DatasetSpec) -> DatasetSpec:
        """`spec` as a pretrain-only one without classes, with the pool in its protocol."""
        if not self.labelled():
            return dataclasses.replace(spec, **pretrain_only_labels())
        if self.has_pool():
            return dataclasses.replace(spec, protocol=dict(POOL_PROTOCOL))
        return spec

    def expected_files(self) -> list[str]:
        return [f"<class>/<file>.{{{','.join(self.extensions)}}} ({self.kind} folder per class)"]

    def check_raw(self) -> None:
        d = os.path.abspath(self._data_dir())
        if not _archives.walk_files(d, self.pattern()):
            raise RawDataMissing(
                f"{self.name}: no {self.kind} files in {d}; expected one sub-folder per class, "
                f"holding files ending in {', '.join('.' + e for e in self.extensions)}, e.g. "
                f"{d}/cat/0001.{self.extensions[0]}")

    def list_sources(self) -> list[tuple]:
        self.check_raw()
        return _archives.file_sources(self._data_dir(), (), self.pattern(), files_per_source=_FILES_PER_SOURCE)

    def read_source(self, source: tuple) -> Iterator[RawExample | BadRecord]:
        index = {c: i for i, c in enumerate(self.classes())}
        regex = re.compile(self.pattern())
        for where, rel, data in _archives.iter_source_files(source):
            if isinstance(data, Exception):
                yield BadRecord(path=where, reason=str(data))
                continue
            (cls,) = regex.search(rel).groups()
            record = self.example(where, data, rel, index.get(cls, UNLABELED))
            if cls == POOL_SPLIT and isinstance(record, RawExample):
                record.split = POOL_SPLIT
            yield record

    def example(self, where: str, data: bytes, example_id: str, label: int) -> RawExample | BadRecord:
        raise NotImplementedError


class CustomImageFolderReader(_FolderReader):
    name = "custom_image_folder"
    extensions = IMAGE_EXTENSIONS
    kind = "image"

    def __init__(self, data_dir: str | None = None, **options):
        super().__init__(data_dir, **options)
        self.image_size = int(options.get("image_size", 32))
        self.patch_size = int(options.get("patch_size", 4))
        self.channels = int(options.get("channels", 3))
        if self.image_size % self.patch_size:
            raise ValueError(f"{self.name}: image_size={self.image_size} is not divisible by "
                             f"patch_size={self.patch_size}")
        if self.channels not in (1, 3):
            raise ValueError(f"{self.name}: channels={self.channels}, expected 1 (grey) or 3 (RGB)")

    def spec_template(self) -> DatasetSpec:
        grid = self.image_size // self.patch_size
        classes = self.classes()
        return self.with_labels_of_the_files(DatasetSpec(
            name=self.name, modality="image",
            input_shape=[self.image_size, self.image_size, self.channels], tokenizer="patch2d",
            patch_shape=[self.patch_size, self.patch_size], num_tokens=grid * grid,
            token_dim=self.patch_size * self.patch_size * self.channels, token_grid=[grid, grid],
            input_dtype="float32", task="multiclass", metric="accuracy", num_classes=len(classes),
            label_names=classes, label_shape=[], label_dtype="int64",
            extra={"pixel_scale": "[0, 1]", "resize": "bilinear, antialiased (aspect not kept)"},
        ))

    def input_size_note(self) -> str | None:
        """One line saying how many images are not `image_size` square (each is resized, the
        aspect ratio not kept), with an example; None when all are. Reads image headers only."""
        from PIL import Image

        root = self._data_dir()
        files = _archives.walk_files(root, self.pattern())
        other, example = 0, ""
        for rel in files:
            try:
                with Image.open(os.path.join(root, rel)) as image:
                    width, height = image.size
            except (OSError, ValueError):
                continue  # undecodable: the job reports it as a bad record
            if (width, height) != (self.image_size, self.image_size):
                other += 1
                example = example or f"{rel} is {width}x{height}"
        if not other:
            return None
        size = f"{self.image_size}x{self.image_size}"
        return (f"{self.name}: {other} of {len(files)} images are not {size} pixels (e.g. "
                f"{example}); they are resized to {size}, bilinear and antialiased, the aspect "
                f"ratio not kept (--reader_option image_size=N sets the size)")

    def example(self, where, data, example_id, label):
        try:
            pixels = _images.decode_rgb(data)
            if self.channels == 1:  # ITU-R 601 luma, as Pillow's "L" conversion
                pixels = (pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
            image = _images.resize_to_input(pixels, self.image_size)
        except ValueError as e:
            return BadRecord(path=where, reason=str(e))
        return RawExample(id=example_id, input=image, label=label)


class CustomAudioFolderReader(_FolderReader):
    name = "custom_audio_folder"
    extensions = AUDIO_EXTENSIONS
    kind = "audio"

    def spec_template(self) -> DatasetSpec:
        reader = _speech.SpeechReader()
        reader.name = self.name
        reader.label_names_ = tuple(self.classes())
        return self.with_labels_of_the_files(reader.spec_template())

    def example(self, where, data, example_id, label):
        return _speech.speech_example(where, data, example_id, label)


READERS = {"custom_image_folder": CustomImageFolderReader, "custom_audio_folder": CustomAudioFolderReader}
