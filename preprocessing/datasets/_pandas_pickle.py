"""Columns of a pickled pandas DataFrame, read without pandas.

WM-811K's `LSWMD.pkl` was written in 2018 by pandas 0.x. Its pickle names classes that no
longer exist (`pandas.indexes.base._new_Index`, …), and pandas 3 only loads pickles from
pandas >= 1.0. But a DataFrame pickle has kept the same layout since pandas 0.14.1: the frame's
state holds a BlockManager (under `_data` before pandas 1.1, `_mgr` after), whose state ends
with `{"0.14.1": {"axes": [columns, index], "blocks": [{"values", "mgr_locs"}, ...]}}`, and an
Index pickles as `_new_Index(cls, {"data": ndarray, ...})`. So this reader stands a neutral
placeholder in for every pandas class the file names and takes the NumPy arrays out of that
layout. Only NumPy's own array constructors and a few plain builtins are ever resolved from
the file, so loading it runs no code named by the file.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from preprocessing.datasets._numpy_unpickle import NumpyUnpickler


class PandasPickleError(ValueError):
    """The pickle is not a DataFrame (or dict of columns) in a layout this reader knows."""


class ForeignCodeInPickle(PandasPickleError):
    """The pickle names a function outside NumPy / pandas / pyarrow: it is not loaded at all
    (not even by pandas), since unpickling would run that function."""


class _Placeholder:
    """Any pandas class or function named in the pickle: keeps its arguments and state."""

    pickled_as = "pandas"

    def __init__(self, *args: Any):
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


_PLACEHOLDERS: dict[str, type] = {}


def _placeholder(module: str, name: str) -> type:
    key = f"{module}.{name}"
    if key not in _PLACEHOLDERS:
        _PLACEHOLDERS[key] = type(name, (_Placeholder,), {"pickled_as": key})
    return _PLACEHOLDERS[key]


_BUILTINS = {"object", "slice", "set", "frozenset", "complex", "bytearray", "list", "dict",
             "tuple", "int", "float", "str", "bytes", "range"}


class _Unpickler(NumpyUnpickler):
    """NumPy globals, plus placeholders for pandas and the plain containers a frame holds."""

    def refuse(self, module: str, name: str) -> Any:
        if module == "pandas" or module.startswith("pandas."):
            return _placeholder(module, name)
        if module in ("copyreg", "copy_reg") and name in ("_reconstructor", "__newobj__"):
            return self.resolve("copyreg", name)
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return self.resolve("builtins", name)
        if (module, name) == ("collections", "OrderedDict"):
            return self.resolve(module, name)
        if module.split(".")[0] in ("pyarrow", "numpy"):
            # A table re-saved by a recent pandas (Arrow strings, ...): pandas itself can load it.
            raise PandasPickleError(f"the pickle names {module}.{name} (not the 0.14.1 layout of "
                                    f"NumPy columns)")
        raise ForeignCodeInPickle(f"the pickle names {module}.{name}, which is not part of a "
                                  f"DataFrame; refusing to load it")


def _index_values(index: Any) -> list[Any]:
    """The labels of a pickled Index (`_new_Index(cls, {"data": ...})`)."""
    if isinstance(index, _Placeholder) and len(index.args) == 2 and isinstance(index.args[1], dict):
        data = index.args[1].get("data")
        if isinstance(data, np.ndarray):
            return data.tolist()
    raise PandasPickleError("the column labels are not a plain Index of NumPy values")


def _frame_columns(frame: _Placeholder) -> dict[str, np.ndarray]:
    state = frame.state if isinstance(frame.state, dict) else {}
    manager = state.get("_mgr", state.get("_data"))
    manager_state = getattr(manager, "state", None)
    if not (isinstance(manager_state, tuple) and len(manager_state) == 4
            and isinstance(manager_state[3], dict) and "0.14.1" in manager_state[3]):
        raise PandasPickleError(f"{frame.pickled_as}: no BlockManager state in the 0.14.1 layout")
    layout = manager_state[3]["0.14.1"]
    names = _index_values(layout["axes"][0])
    positions = np.arange(len(names))
    columns: dict[str, np.ndarray] = {}
    for block in layout["blocks"]:
        values, locs = block["values"], block["mgr_locs"]
        locs = positions[locs] if isinstance(locs, slice) else np.asarray(locs).reshape(-1)
        if not isinstance(values, np.ndarray):
            continue  # an extension-array column (e.g. Arrow strings); callers name what they need
        values = values.reshape(len(locs), -1) if values.ndim == 1 else values
        for row, loc in zip(values, locs):
            columns[str(names[int(loc)])] = row
    return columns


def read_columns(path: str, wanted: list[str]) -> dict[str, np.ndarray]:
    """`{name: 1-D array}` for each `wanted` column of the DataFrame (or dict) pickled at `path`.

    Raises PandasPickleError when the file is not such a pickle or lacks a wanted column.
    """
    with open(path, "rb") as f:
        try:
            # latin1: a Python 2 pickle's NumPy buffers are byte strings (LSWMD.pkl's era).
            table = _Unpickler(f, encoding="latin1").load()
        except PandasPickleError:
            raise
        except Exception as e:  # truncated or not a pickle at all
            raise PandasPickleError(f"cannot unpickle: {type(e).__name__}: {e}") from e
    if isinstance(table, dict):
        columns = table
    elif isinstance(table, _Placeholder):
        columns = _frame_columns(table)
    else:
        raise PandasPickleError(f"expected a DataFrame or a dict of columns, got {type(table).__name__}")
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise PandasPickleError(f"no column(s) {', '.join(missing)} among {sorted(map(str, columns))}")
    return {c: _as_column(columns[c]) for c in wanted}


def _as_column(values: Any) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.ndim == 1:
        return values
    items = list(values)
    column = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):  # item by item: equal-shaped arrays must not fuse into 3-D
        column[i] = item
    return column
