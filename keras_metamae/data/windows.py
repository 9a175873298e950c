"""Windows drawn at read time from stored series (`DatasetSpec.windows`), as tf.data.

DABS's PAMAP2 has no fixed training examples: every time one is needed it picks a subject x
activity pair uniformly, an offset uniformly inside that pair's data, and takes 320 consecutive
steps (reference/dabs_datasets.md, "Corrections"). The Beam job stores each series once
(preprocessing/series_records.py); this module draws the windows:

- all series of the requested splits are loaded once into one tf.data element (PAMAP2's seven
  train subjects are ~300 MB of float32), because uniform sampling over pairs needs every
  series at hand; an epoch then costs no I/O;
- element `k` of the stream is drawn with stateless random ops seeded by `(seed, k)`, so the
  same seed gives the same windows whatever the parallelism, a resumed run that skips `n`
  batches sees exactly the windows it would have seen, and the draws never repeat across
  epochs of one stream;
- sampling "group_label": a (group, label) pair uniformly, then one of that pair's windows
  uniformly, i.e. a series with probability proportional to its number of windows within the
  pair (a pair stored as several series, e.g. a run cut by a malformed line, keeps its weight);
- the window is normalized and tokenized by `preprocessing.tokenize.raw_to_tokens`, the op the
  Beam job and the exported model use for fixed examples, so the batches are the same
  `{"tokens", "label", "id"}` as for any dataset. A window's id is `<series id>@<offset>`.

`make_window_dataset` is what `keras_metamae.data.records.make_dataset` calls for windowed splits.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from preprocessing import tokenize
from preprocessing.series_records import (GROUP_FEATURE, LENGTH_FEATURE, SERIES_FEATURE,
                                          series_feature_spec)
from preprocessing.spec import DatasetSpec

# Separates group and label in the key the sampling is uniform over (not in any group name).
_PAIR_SEPARATOR = "\x1f"


def num_series(spec: DatasetSpec, splits: Sequence[str]) -> int:
    """Stored series of `splits` (the `records` the Beam job counted into spec.windows)."""
    return sum(int(spec.windows["splits"][s].get("records", 0)) for s in splits)


def parse_series(serialized: tf.Tensor, spec: DatasetSpec) -> dict[str, tf.Tensor]:
    """One series record -> {"values": float32 [length, C], "label", "id", "group"}."""
    features = tf.io.parse_single_example(serialized, series_feature_spec(spec))
    channels = int(spec.input_shape[-1])
    values = tf.reshape(features[SERIES_FEATURE].values, [features[LENGTH_FEATURE], channels])
    return {"values": values, "label": features["label"], "id": features["id"],
            "group": features[GROUP_FEATURE]}


def sampling_tables(store: dict[str, tf.Tensor], window: int) -> dict[str, tf.Tensor]:
    """What each draw needs, from all series in one ragged batch (`store["values"]` is
    `[N, None, C]`): the series sorted by (group, label) pair, so each pair's windows are one
    contiguous range of global window slots."""
    values = store["values"]
    row_starts = values.row_starts()
    num_windows = values.row_lengths() - window + 1  # offsets 0 .. length - window
    labels = tf.reshape(store["label"], [tf.shape(store["id"])[0], -1])[:, 0]
    pair_key = tf.strings.join([store["group"], tf.strings.as_string(labels)],
                               separator=_PAIR_SEPARATOR)
    _, pair_of = tf.unique(pair_key)
    num_pairs = tf.reduce_max(pair_of) + 1
    order = tf.argsort(pair_of, stable=True)
    sorted_windows = tf.gather(num_windows, order)
    slot_end = tf.cumsum(sorted_windows)
    pair_windows = tf.math.unsorted_segment_sum(num_windows, pair_of, num_pairs)
    return {
        "values": values.values,  # [total steps, C]
        "row_starts": tf.gather(row_starts, order),
        "slot_start": slot_end - sorted_windows,
        "slot_end": slot_end,
        "series": order,  # sorted position -> index in store
        "num_pairs": tf.cast(num_pairs, tf.int64),
        "pair_windows": pair_windows,
        "pair_first_slot": tf.cumsum(pair_windows, exclusive=True),
    }


def draw_window(tables: dict[str, tf.Tensor], store: dict[str, tf.Tensor], index: tf.Tensor,
                seed: int, window: int) -> dict[str, tf.Tensor]:
    """Element `index` of the stream: a pair uniformly, then a window of it uniformly, both
    from stateless draws seeded by (seed, index); returns {"raw": [window, C], "label", "id"}."""
    index = tf.cast(index, tf.int64)
    pair = tf.random.stateless_uniform([], tf.stack([tf.constant(seed, tf.int64), 2 * index]),
                                       minval=0, maxval=tables["num_pairs"], dtype=tf.int64)
    within = tf.random.stateless_uniform(
        [], tf.stack([tf.constant(seed, tf.int64), 2 * index + 1]),
        minval=0, maxval=tables["pair_windows"][pair], dtype=tf.int64)
    slot = tables["pair_first_slot"][pair] + within
    position = tf.searchsorted(tables["slot_end"], slot[tf.newaxis], side="right")[0]
    offset = slot - tables["slot_start"][position]
    raw = tf.slice(tables["values"], tf.stack([tables["row_starts"][position] + offset, 0]),
                   [window, -1])
    series = tables["series"][position]
    return {"raw": raw, "label": store["label"][series],
            "id": tf.strings.join([store["id"][series], "@", tf.strings.as_string(offset)])}


def check_first_series(files: list[str], spec: DatasetSpec) -> None:
    """Opens every shard and checks its first series record against the spec (cheap; catches
    a spec and shards from different runs, or a file that is not a shard, before training
    starts)."""
    from keras_metamae.data.errors import DataError

    window, channels = int(spec.windows["length"]), int(spec.input_shape[-1])
    for path in files:
        try:
            for record in tf.data.TFRecordDataset(
                    path, compression_type=spec.shard_compression).take(1):
                example = tf.train.Example.FromString(record.numpy()).features.feature
                missing = [k for k in (SERIES_FEATURE, LENGTH_FEATURE, "label", "id",
                                       GROUP_FEATURE) if k not in example]
                if missing:
                    raise DataError(f"{path}: record lacks {missing}; spec.json says this split "
                                    f"stores series to draw windows from "
                                    f"(preprocessing/series_records.py)")
                length = example[LENGTH_FEATURE].int64_list.value[0]
                values = len(example[SERIES_FEATURE].float_list.value)
                if length < window or values != length * channels:
                    raise DataError(f"{path}: series of length {length} holds {values} values; "
                                    f"expected length >= {window} and {channels} values per "
                                    f"step (spec.json)")
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
            raise DataError(f"{path}: unreadable shard ({e.message.splitlines()[0]})") from None


def make_window_dataset(spec: DatasetSpec, version_dir: str, splits: Sequence[str],
                        files: list[str], batch_size: int, *, repeat: bool, seed: int,
                        drop_remainder: bool,
                        input_context: tf.distribute.InputContext | None = None,
                        skip_batches: int = 0) -> tf.data.Dataset:
    """Batches of {"tokens", "label", "id"} of windows drawn from the series in `files` (all
    shards of the windowed `splits`). One pass (`repeat=False`) is the splits' `num_examples`
    windows (spec.windows' `windows_per_epoch`); `repeat=True` never ends. Every input
    pipeline loads all series (the sampling needs them all) and takes every n-th element of
    the one stream, so n pipelines together draw exactly what one would."""
    from keras_metamae.data.errors import DataError

    fixed = [s for s in splits if s not in spec.windowed_splits]
    if fixed:
        raise DataError(f"{version_dir}: splits {list(splits)} mix fixed examples ({fixed}) with "
                        f"series to draw windows from ({spec.windowed_splits}); read them apart")
    window = int(spec.windows["length"])
    expected = num_series(spec, splits)
    if expected < 1:
        raise DataError(f"{version_dir}/spec.json: split {'+'.join(splits)!r} stores no series "
                        f"to draw windows from (windows.splits[...].records = 0)")
    check_first_series(files, spec)
    num_pipelines, pipeline = 1, 0
    per_pipeline_batch = batch_size
    if input_context is not None:
        num_pipelines, pipeline = input_context.num_input_pipelines, input_context.input_pipeline_id
        per_pipeline_batch = input_context.get_per_replica_batch_size(batch_size)
    first = pipeline + skip_batches * per_pipeline_batch * num_pipelines
    total = sum(spec.splits[s].num_examples for s in splits)

    def windows_of(store):
        checked = tf.debugging.assert_equal(
            tf.shape(store["id"])[0], expected,
            message=f"{version_dir}: the shards of {'+'.join(splits)!r} do not hold the "
                    f"{expected} series spec.json counts; re-run the preprocessing")
        with tf.control_dependencies([checked]):
            tables = sampling_tables(store, window)
        if repeat:
            indices = tf.data.Dataset.counter(start=first, step=num_pipelines)
        else:
            indices = tf.data.Dataset.range(first, total, num_pipelines)
        return indices.map(lambda k: draw_window(tables, store, k, seed, window),
                           num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    store = (tf.data.TFRecordDataset(files, compression_type=spec.shard_compression)
             .map(lambda record: parse_series(record, spec))
             .ragged_batch(expected + 1)  # one more: extra series fail the check below
             .take(1))
    ds = store.flat_map(windows_of)
    ds = ds.batch(per_pipeline_batch, drop_remainder=drop_remainder)
    ds = ds.map(lambda b: {"tokens": tokenize.raw_to_tokens(b["raw"], spec),
                           "label": b["label"], "id": b["id"]},
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
