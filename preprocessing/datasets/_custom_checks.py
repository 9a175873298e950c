"""Checks of a `custom` dataset's files made on the driver, before the job writes anything.

Each raises `InputCheckError` with one line naming the file, column or row at fault, the counts
involved and what to do; the pipeline reports it as a user error (exit status 2). What they
catch would otherwise be silently wrong (float targets read as hundreds of classes, complex
values cut to their real part) or an error that names neither the file nor the numbers (an
empty train split).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

# Rows scanned at a time for non-finite values (memory-mapped arrays stay out of memory).
_SCAN_ROWS = 4096


class InputCheckError(ValueError):
    """A raw file the job must not read as it is; the message is one line shaped as the
    command line's errors, `<what> (<file, column or row>): <what to do>`."""


def check_numeric_array(path: str, array: np.ndarray, what: str = "inputs") -> None:
    """Numbers are expected: complex, object, string and boolean arrays are refused."""
    dtype = array.dtype
    if np.issubdtype(dtype, np.complexfloating):
        raise InputCheckError(
            f"complex values ({dtype}) where real numbers are expected ({path}): save the real "
            f"and imaginary parts as two channels, e.g. np.stack([x.real, x.imag], -1)")
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InputCheckError(
            f"{dtype} values where numbers are expected as {what} ({path}): save a numeric "
            f"array (float32 or an integer type)")


def check_label_count(labels_path: str, num_labels: int, inputs_path: str, num_rows: int):
    if num_labels != num_rows:
        raise InputCheckError(
            f"{num_labels} labels for the {num_rows} rows of {inputs_path} ({labels_path}): "
            f"write one label per row")


def check_same_example_shape(arrays: Sequence[tuple[str, np.ndarray]]) -> None:
    """Every split's inputs must hold examples of one shape."""
    first_path, first = arrays[0]
    for path, array in arrays[1:]:
        if array.shape[1:] != first.shape[1:]:
            raise InputCheckError(
                f"examples of shape {list(array.shape[1:])} where {first_path} holds shape "
                f"{list(first.shape[1:])} ({path}): every split needs the same example shape")


def _is_integral(value: str) -> bool | None:
    """True/False for a number (whether it is a whole one), None for a non-number."""
    try:
        number = float(value)
    except ValueError:
        return None
    return math.isfinite(number) and number == int(number)


def check_class_labels(values: Iterable[tuple[str, str]], flag_hint: str) -> None:
    """Class labels may be integers or names; numbers with a fraction (0.5, 1.7) are targets
    of a regression, which would otherwise become one class per distinct value.
    `values`: (where, raw label text) pairs."""
    for where, text in values:
        integral = _is_integral(text)
        if integral is None:
            return  # names: any text is a class
        if not integral:
            raise InputCheckError(
                f"the label {text!r} is not a whole number ({where}): class labels are "
                f"integers or names; for real-valued targets add {flag_hint}")


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def first_non_integral(labels: np.ndarray) -> int | None:
    """Row of the first label with a fraction (or non-finite) in a float array, else None."""
    if not np.issubdtype(labels.dtype, np.floating):
        return None
    values = np.asarray(labels, dtype=np.float64)
    bad = ~np.isfinite(values) | (values != np.round(values))
    rows = np.flatnonzero(bad)
    return int(rows[0]) if len(rows) else None


def count_non_finite_rows(array: np.ndarray) -> tuple[int, int | None]:
    """(rows holding NaN or inf, the first such row or None); integer arrays have none."""
    if not np.issubdtype(array.dtype, np.floating):
        return 0, None
    count, first = 0, None
    for start in range(0, array.shape[0], _SCAN_ROWS):
        chunk = np.asarray(array[start:start + _SCAN_ROWS])
        bad = ~np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1)
        rows = np.flatnonzero(bad)
        if len(rows) and first is None:
            first = start + int(rows[0])
        count += len(rows)
    return count, first


def check_non_finite_share(path: str, bad_rows: int, first: int | None, total: int,
                           max_bad_fraction: float) -> None:
    """Rows with NaN/inf are bad records; more of them than --max_bad_fraction allows is one
    line here, before the job reads anything."""
    if total and bad_rows / total > max_bad_fraction:
        needed = -(-bad_rows * 1000 // total) / 1000  # rounded up: it lets them all through
        raise InputCheckError(
            f"{bad_rows} of {total} rows hold NaN or inf, {bad_rows / total:.1%}, more than "
            f"--max_bad_fraction {max_bad_fraction} ({path}, first at row {first}): fill or "
            f"remove them, or skip them with --max_bad_fraction {needed}")
