"""Unpickling data files that hold NumPy arrays, without running code the file names.

A pickle names the functions that rebuild its objects, and loading it calls them. Raw dataset
files come from the internet (TAPE's LMDB records, WM-811K's LSWMD.pkl), so their unpicklers
resolve only NumPy's own array/scalar/dtype constructors (under both the NumPy 1.x
`numpy.core` and the NumPy 2.x `numpy._core` names) and refuse every other global.
"""

from __future__ import annotations

import pickle
from typing import Any

NUMPY_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # how a protocol-2 pickle written by Python 3 stores bytes
})


class NumpyUnpickler(pickle.Unpickler):
    """Resolves only NUMPY_GLOBALS; `refuse` decides what happens to any other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in NUMPY_GLOBALS:
            return self.resolve(module, name)
        return self.refuse(module, name)

    def resolve(self, module: str, name: str) -> Any:
        """Imports `module.name`: for subclasses that allow more (after their own check)."""
        return super().find_class(module, name)

    def refuse(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
