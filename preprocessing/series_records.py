"""Variable-length series records: what a reader emits when windows are drawn at read time.

Some benchmarks do not have fixed examples: DABS's PAMAP2 draws a 320-step window at a fresh
random offset inside a subject x activity series every time an example is needed. For those
splits (named in `DatasetSpec.windows`) a reader yields `RawSeries` instead of `RawExample`,
the Beam job stores each as one record in this layout, and `keras_metamae/data/windows.py` draws
and tokenizes the windows inside tf.data.

Record layout (a `tf.train.Example`, one per series):
- `series`: float32 `[length * C]`, the raw values, time-major (`[length, C]` flattened),
  NOT normalized: normalization is applied to each drawn window, as for fixed examples;
- `length`: int64, the number of steps (>= the window length);
- `label`, `id`: as in the token contract;
- `group`: bytes, what the sampling is uniform over together with the label (PAMAP2: the
  subject).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from preprocessing.datasets.base import RawExample
from preprocessing.spec import DatasetSpec

SERIES_FEATURE = "series"
LENGTH_FEATURE = "length"
GROUP_FEATURE = "group"


@dataclasses.dataclass
class RawSeries(RawExample):
    """A raw series `[length, C]` (length >= the spec's window length) that windows are drawn
    from; `split` must be one of the spec's `windows` splits and `group` is required."""


def check_series(series: RawSeries, spec: DatasetSpec) -> np.ndarray:
    """The series values as float32 `[length, C]`; ValueError naming the series if they do not
    fit the spec (channels, minimum length, finite values, a group)."""
    values = np.asarray(series.input, np.float32)
    window, channels = int(spec.windows["length"]), int(spec.input_shape[-1])
    if values.ndim != 2 or values.shape[1] != channels or values.shape[0] < window:
        raise ValueError(f"{spec.name}: series {series.id} has shape {values.shape}, expected "
                         f"[length >= {window}, {channels}]")
    if not np.isfinite(values).all():
        raise ValueError(f"{spec.name}: series {series.id} holds NaN or infinite values")
    if not series.group:
        raise ValueError(f"{spec.name}: series {series.id} has no group (the sampling unit)")
    return values


def make_series_example(series: RawSeries, spec: DatasetSpec) -> bytes:
    """The serialized record of one series (layout in the module docstring), written with
    `preprocessing.storage` (no TensorFlow in the Beam workers)."""
    from preprocessing import storage

    values = check_series(series, spec)
    (label,) = storage.label_features([series.label], spec, [series.id])
    (length,) = storage.varint_rows(np.array([[values.shape[0]]]))
    return storage.serialize_example({
        SERIES_FEATURE: storage.float_feature(values),
        LENGTH_FEATURE: storage.int64_feature(length),
        "label": label,
        "id": storage.id_feature(series.id),
        GROUP_FEATURE: storage.id_feature(series.group),
    })


def series_feature_spec(spec: DatasetSpec) -> dict[str, Any]:
    """tf.io parsing spec of one series record."""
    import tensorflow as tf

    label_dtype = tf.int64 if spec.label_dtype == "int64" else tf.float32
    return {
        SERIES_FEATURE: tf.io.VarLenFeature(tf.float32),
        LENGTH_FEATURE: tf.io.FixedLenFeature([], tf.int64),
        "label": tf.io.FixedLenFeature(list(spec.label_shape), label_dtype),
        "id": tf.io.FixedLenFeature([], tf.string),
        GROUP_FEATURE: tf.io.FixedLenFeature([], tf.string),
    }
