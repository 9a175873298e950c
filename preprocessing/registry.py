"""Dataset name -> reader class, collected from every module in `preprocessing/datasets/`.

Each dataset module defines `READERS = {"name": ReaderClass}`; nothing here needs editing
when a dataset is added.
"""

from __future__ import annotations

import importlib
import pkgutil

from preprocessing import datasets as _datasets_pkg
from preprocessing.datasets.base import DatasetReader

_READERS: dict[str, type[DatasetReader]] | None = None


def _collect() -> dict[str, type[DatasetReader]]:
    global _READERS
    if _READERS is None:
        found: dict[str, type[DatasetReader]] = {}
        for info in sorted(pkgutil.iter_modules(_datasets_pkg.__path__), key=lambda m: m.name):
            if info.name == "base" or info.name.startswith("_"):
                continue
            module = importlib.import_module(f"{_datasets_pkg.__name__}.{info.name}")
            for name, cls in getattr(module, "READERS", {}).items():
                if name in found:
                    raise RuntimeError(f"dataset {name!r} registered twice ({module.__name__})")
                found[name] = cls
        _READERS = found
    return _READERS


def names() -> list[str]:
    return sorted(_collect())


def get_reader(dataset: str, data_dir: str | None = None, **options) -> DatasetReader:
    """A reader instance; `options` (e.g. a custom dataset's `name`, `format`) go to the reader."""
    readers = _collect()
    if dataset not in readers:
        raise KeyError(f"--dataset={dataset!r} is not known; known datasets: "
                       f"{', '.join(sorted(readers))}")
    return readers[dataset](data_dir=data_dir, **options)


def raw_folder(dataset: str) -> str:
    """The folder name under data/raw/ where `dataset` looks for its raw files by default."""
    readers = _collect()
    cls = readers.get(dataset)
    return (cls.raw_folder or cls.name or dataset) if cls else dataset
