"""Base reader for image datasets distributed as an archive of image files + metadata lists.

CUB, VGG Flowers, DTD, GTSRB and FGVC-Aircraft share one shape: a big official archive (or
its extracted tree) of JPEG/PPM files, plus small text/MAT files that give each image its class
and official split. A subclass declares where things are (`archive_names`, `image_pattern`,
`metadata_files`) and how one image path maps to `(id, label, split, group)` (`describe`);
this base does the locating, the RawDataMissing messages and the parallel reading.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterator

from preprocessing.datasets import _archives, _images
from preprocessing.datasets.base import BadRecord, RawDataMissing, RawExample


class ImageFilesReader(_images.NaturalImageReader):
    archive_names: tuple[str, ...] = ()
    # Regex on the member/relative path; its groups are passed to `describe`.
    image_pattern = ""
    # key -> file name of each metadata file; found by this name at any depth / in the archives.
    metadata_files: dict[str, str] = {}
    _files_per_source = 256
    _archive_shards = 8

    def __init__(self, data_dir: str | None = None, **options):
        super().__init__(data_dir, **options)
        self._metadata: Any = None

    # === for subclasses ===
    def parse_metadata(self, found: dict[str, tuple[str, bytes]]) -> Any:
        """Picklable lookup tables built from the metadata files ({key: (where, bytes)})."""
        return None

    def describe(self, groups: tuple[str, ...], metadata: Any) -> tuple[str, int, str | None, str | None] | None:
        """(id, label, split, group) of the image whose path matched with `groups`; None if
        the image is not part of the dataset; raises ValueError for an inconsistent record."""
        raise NotImplementedError

    def crop_box(self, example_id: str, metadata: Any) -> tuple[int, int, int, int] | None:
        """(xmin, ymin, xmax, ymax), 1-based and inclusive, to crop the image to before resizing;
        None: the whole image. Raises ValueError when the image should have one and has none."""
        return None

    # === locating ===
    def expected_files(self) -> list[str]:
        archives = " or ".join(self.archive_names) or "the image files"
        return [f"{archives} (or extracted)"] + [f for f in self.metadata_files.values()
                                                 if not f.endswith(self.archive_names)]

    def metadata(self) -> Any:
        if self._metadata is None and self.metadata_files:
            patterns = {k: rf"(?:^|/){re.escape(name)}$" for k, name in self.metadata_files.items()}
            found = _archives.read_small_files(self._data_dir(), self.archive_names, patterns)
            missing = [self.metadata_files[k] for k in patterns if k not in found]
            if missing:
                raise RawDataMissing(
                    f"{self.name}: {', '.join(missing)} not found in {os.path.abspath(self._data_dir())} "
                    f"(nor in {' / '.join(self.archive_names)}); download from {self.raw_url} and put "
                    f"the files in {os.path.abspath(self._data_dir())}/")
            self._metadata = self.parse_metadata(found)
        return self._metadata

    def check_raw(self) -> None:
        d = self._data_dir()
        if not (_archives.archives_in(d, self.archive_names) or _archives.walk_files(d, self.image_pattern)):
            raise RawDataMissing(
                f"{self.name}: no images in {os.path.abspath(d)}; download "
                f"{' and '.join(self.archive_names)} from {self.raw_url} and put it in "
                f"{os.path.abspath(d)}/ (as downloaded or extracted)")
        self.metadata()

    # === reading ===
    def list_sources(self) -> list[tuple]:
        self.check_raw()
        return _archives.file_sources(self._data_dir(), self.archive_names, self.image_pattern,
                                      files_per_source=self._files_per_source,
                                      archive_shards=int(self.options.get("archive_shards", self._archive_shards)))

    def read_source(self, source: tuple) -> Iterator[RawExample | BadRecord]:
        regex = re.compile(self.image_pattern)
        metadata = self.metadata()
        for where, rel, data in _archives.iter_source_files(source):
            if isinstance(data, Exception):
                yield BadRecord(path=where, reason=str(data))
                continue
            try:
                described = self.describe(regex.search(rel).groups(), metadata)
                box = None if described is None else self.crop_box(described[0], metadata)
            except ValueError as e:
                yield BadRecord(path=where, reason=str(e))
                continue
            if described is None:
                continue
            example_id, label, split, group = described
            yield _images.image_example(where, data, example_id, label, split=split, group=group,
                                        box=box)


def text_lines(found: dict[str, tuple[str, bytes]], key: str) -> list[str]:
    """The non-empty, stripped lines of a metadata file."""
    return [line.strip() for line in found[key][1].decode("utf-8").splitlines() if line.strip()]
