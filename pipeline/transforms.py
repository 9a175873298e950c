"""Beam PTransforms of the preprocessing job (see `pipeline/preprocess.py` for the graph).

Statistics pass (only when the pipeline computes the normalization): ReadRaw -> AssignSplit ->
ComputeStats over the train split. Main pass: TokenizeAndSpill reads each source again, splits,
tokenizes with the statistics as a side input and writes id-sorted runs to spill files, at most
SPILL_BUDGET_BYTES of examples in memory at a time; MergeShards merges each (split, shard)'s runs
into its GZIP TFRecord shard. The dataset-specific parts come from a `DatasetReader`; the
tokenizer is `preprocessing.tokenize`, the same ops the exported model runs.

Memory: nothing but source descriptions, run-file names and statistics passes between stages,
so a local runner (which keeps what passes between stages in memory) stays bounded however
large the dataset. The price is reading the raw data twice when statistics are computed.

Determinism and mixing: the shard of an example is a hash of its id, and each shard holds its
examples sorted by `order_key` — a seeded hash of the id, then the id — (a merge of sorted runs),
so a rerun with the same inputs and flags produces byte-identical shards whatever the runner's
parallelism or bundle order, and the order inside a shard never follows the label even where
ids start with the class or speaker (EuroSAT `AnnualCrop_1`, LibriSpeech `103-1240-0000`).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import heapq
import json
import logging
import os
import struct
from typing import Any, Iterable, Iterator

import apache_beam as beam
import numpy as np

from preprocessing.datasets.base import BadRecord, DatasetReader, RawExample, hash_fraction
from preprocessing.series_records import RawSeries, make_series_example
from preprocessing.spec import DatasetSpec

BAD_TAG = "bad"
GOOD_TAG = "good"
RUNS_TAG = "runs"
_METRICS_NAMESPACE = "keras_metamae.preprocess"
# A worker logs one progress line per this many tokenized examples.
LOG_EVERY = 1000
# Standard deviations below this are replaced by 1 so constant channels do not blow up.
MIN_STD = 1e-6
# Serialized examples a worker holds before writing them out as sorted runs.
SPILL_BUDGET_BYTES = 64 << 20
# Runs merged at once (open files); more are merged in rounds.
MERGE_FAN_IN = 128
TOKENIZE_BATCH = 64
# Python's own bytes per held (id, record) pair (tuple, str and bytes headers, list slot).
_ITEM_OVERHEAD = 150


def shard_path(split: str, shard: int, num_shards: int) -> str:
    """Shard file path relative to the version directory."""
    return f"{split}/data-{shard:05d}-of-{num_shards:05d}.tfrecord.gz"


def shard_pattern(split: str, num_shards: int) -> str:
    return f"{split}/data-*-of-{num_shards:05d}.tfrecord.gz"


def order_key(example_id: str, seed: int) -> str:
    """Where an example goes inside its shard: a seeded hash (so the order is independent of
    any class or speaker prefix of the id), then the id itself (unique, so ties are impossible)."""
    digest = hashlib.blake2b(f"order/{seed}/{example_id}".encode(), digest_size=8).hexdigest()
    return f"{digest}/{example_id}"


def shard_of(example_id: str, num_shards: int) -> int:
    # Salted differently from the split hash so every split spreads over all shards.
    return min(int(hash_fraction("shard/" + example_id, 0) * num_shards), num_shards - 1)


# === read ===
class _ReadSource(beam.DoFn):
    """Reads one source; routes BadRecords to a separate output instead of failing."""

    def __init__(self, reader: DatasetReader, metrics_prefix: str):
        self._reader = reader
        self._read = beam.metrics.Metrics.counter(_METRICS_NAMESPACE, metrics_prefix + "examples_read")
        self._bad = beam.metrics.Metrics.counter(_METRICS_NAMESPACE, metrics_prefix + "bad_records")

    def process(self, source) -> Iterator[Any]:
        for record in self._reader.read_source(source):
            if isinstance(record, BadRecord):
                self._bad.inc()
                yield beam.pvalue.TaggedOutput(BAD_TAG, record)
            else:
                self._read.inc()
                yield record


class ReadRaw(beam.PTransform):
    """sources -> {good: RawExample, bad: BadRecord}.

    `metrics_prefix` keeps a second read of the same sources (the statistics pass) from adding
    to the job's `examples_read` / `bad_records` counters, which TokenizeAndSpill reports.
    """

    def __init__(self, reader: DatasetReader, sources: list[Any], metrics_prefix: str = ""):
        super().__init__()
        self._reader = reader
        self._sources = sources
        self._metrics_prefix = metrics_prefix

    def expand(self, pbegin):
        return (
            pbegin
            | "Sources" >> beam.Create(self._sources, reshuffle=False)
            # Spreads the (few, heavy) sources over workers before reading.
            | "Spread" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(_ReadSource(self._reader, self._metrics_prefix))
            .with_outputs(BAD_TAG, main=GOOD_TAG)
        )


class AssignSplit(beam.PTransform):
    """RawExample -> (split, RawExample), deterministic in (id or group, seed)."""

    def __init__(self, reader: DatasetReader, seed: int):
        super().__init__()
        self._reader = reader
        self._seed = seed

    def expand(self, examples):
        reader, seed = self._reader, self._seed
        return examples | "Split" >> beam.Map(lambda ex: (reader.split_of(ex, seed), ex))


# === statistics ===
class MeanStdCombineFn(beam.CombineFn):
    """Per-channel (last axis) mean and population std of raw inputs.

    The accumulator is (count, mean, M2) per channel, merged with Chan et al.'s parallel
    update, which stays accurate for large raw values where sum-of-squares would cancel.
    """

    def __init__(self, num_channels: int):
        self._channels = num_channels

    def create_accumulator(self):
        return 0, np.zeros(self._channels), np.zeros(self._channels)

    @staticmethod
    def _merge(a, b):
        (na, ma, m2a), (nb, mb, m2b) = a, b
        if na == 0:
            return b
        if nb == 0:
            return a
        n = na + nb
        delta = mb - ma
        return n, ma + delta * (nb / n), m2a + m2b + delta**2 * (na * nb / n)

    def add_input(self, accumulator, x):
        values = np.asarray(x, np.float64).reshape(-1, self._channels)
        mean = values.mean(axis=0)
        m2 = ((values - mean) ** 2).sum(axis=0)
        return self._merge(accumulator, (values.shape[0], mean, m2))

    def merge_accumulators(self, accumulators):
        result = self.create_accumulator()
        for acc in accumulators:
            result = self._merge(result, acc)
        return result

    def extract_output(self, accumulator):
        n, mean, m2 = accumulator
        if n == 0:
            return {"mean": [], "std": [], "count": 0}
        std = np.sqrt(m2 / n)
        std = np.where(std < MIN_STD, 1.0, std)
        return {"mean": [float(v) for v in mean], "std": [float(v) for v in std], "count": int(n)}


class ComputeStats(beam.PTransform):
    """(split, RawExample) -> one dict {"mean", "std", "count"} over the train split."""

    def __init__(self, num_channels: int, split: str = "train"):
        super().__init__()
        self._channels = num_channels
        self._split = split

    def expand(self, keyed):
        split = self._split
        return (
            keyed
            | "TrainOnly" >> beam.Filter(lambda kv: kv[0] == split)
            | "Inputs" >> beam.Map(lambda kv: continuous_input(kv[1].input))
            | "MeanStd" >> beam.CombineGlobally(MeanStdCombineFn(self._channels))
        )


def continuous_input(raw: Any) -> Any:
    """The raw values the normalization statistics are computed on: the input itself, or for a
    segmented (mixed-token) example `{segment name: raw}` the continuous segment's raw values
    (readers put it under the key "image" or the spec's single continuous segment name)."""
    if isinstance(raw, dict):
        # Numbers (float, or uint8 pixels); text segments are strings.
        arrays = [np.asarray(v) for v in raw.values() if np.asarray(v).dtype.kind in "fu"]
        if len(arrays) != 1:
            raise ValueError(f"a segmented raw example needs exactly one numeric segment for the "
                             f"statistics, got keys {sorted(raw)}")
        return arrays[0]
    return raw


# === tokenize ===
def _tokens_features(tokens: Any, spec: DatasetSpec) -> dict[str, Any]:
    import tensorflow as tf

    def feature(values, discrete):
        flat = np.asarray(values).reshape(-1)
        # `.tolist()` first: protobuf converts a Python list ~4x faster than a NumPy array.
        if discrete:
            return tf.train.Feature(int64_list=tf.train.Int64List(value=flat.astype(np.int64).tolist()))
        return tf.train.Feature(float_list=tf.train.FloatList(value=flat.astype(np.float32).tolist()))

    if not spec.is_segmented:
        return {"tokens": feature(tokens, spec.is_discrete)}
    return {seg["feature"]: feature(tokens[seg["name"]], seg["kind"] == "discrete")
            for seg in spec.segments}


def make_example(tokens: Any, label: Any, example_id: str, spec: DatasetSpec) -> bytes:
    """The serialized tf.train.Example of the token contract (see DESIGN.md). For segmented
    specs `tokens` is `{segment name: tokens}` and each segment is written to its `feature`."""
    import tensorflow as tf

    features = _tokens_features(tokens, spec)
    label = np.asarray(label).reshape(-1)
    expected = int(np.prod(spec.label_shape)) if spec.label_shape else 1
    if label.size != expected:
        raise ValueError(f"{spec.name}: example {example_id} has {label.size} label values, "
                         f"spec.label_shape={spec.label_shape} expects {expected}")
    if spec.label_dtype == "int64":
        label_feature = tf.train.Feature(int64_list=tf.train.Int64List(value=label.astype(np.int64)))
    else:
        label_feature = tf.train.Feature(float_list=tf.train.FloatList(value=label.astype(np.float32)))
    example = tf.train.Example(features=tf.train.Features(feature={
        **features,
        "label": label_feature,
        "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[example_id.encode()])),
    }))
    return example.SerializeToString(deterministic=True)


def normalized_spec(spec: DatasetSpec, stats: dict[str, Any] | None) -> DatasetSpec:
    """`spec` with the pipeline's statistics as its normalization (None: fixed or discrete)."""
    if stats is None:
        return spec
    if not stats.get("mean"):
        raise ValueError(f"{spec.name}: the train split is empty, so there are no "
                         f"statistics to normalize with")
    return dataclasses.replace(spec, normalization=stats)


def tokenize_batch(batch: list[tuple[str, RawExample]], spec: DatasetSpec, num_shards: int,
                   seed: int = 0) -> Iterator[tuple[tuple[str, int], tuple[str, bytes]]]:
    """(split, RawExample)s -> ((split, shard), (order_key, serialized Example)); one TF call
    per batch."""
    from preprocessing import tokenize

    series, batch = _split_off_series(batch, spec)
    for split, ex in series:  # stored as they are; windows are drawn at read time
        yield (split, shard_of(ex.id, num_shards)), (order_key(ex.id, seed),
                                                     make_series_example(ex, spec))
    if not batch:
        return
    if spec.is_segmented:
        raw = {seg["name"]: np.stack([np.asarray(ex.input[seg["name"]]) for _, ex in batch])
               for seg in spec.segments}
        parts = {k: v.numpy() for k, v in tokenize.raw_to_segment_tokens(raw, spec).items()}
        per_example = [{name: values[i] for name, values in parts.items()} for i in range(len(batch))]
    else:
        raw = np.stack([np.asarray(ex.input) for _, ex in batch])
        raw = raw.astype(np.int64) if spec.is_discrete else raw.astype(np.float32)
        per_example = tokenize.raw_to_tokens(raw, spec).numpy()
    for (split, ex), example_tokens in zip(batch, per_example):
        key = (split, shard_of(ex.id, num_shards))
        yield key, (order_key(ex.id, seed), make_example(example_tokens, ex.label, ex.id, spec))


def _split_off_series(batch, spec: DatasetSpec):
    """(series, examples): the RawSeries of `batch` (stored untokenized for a `spec.windows`
    split, see preprocessing/series_records.py) and the fixed examples to tokenize. A series
    outside the windowed splits, or a fixed example inside one, is a reader bug."""
    windowed = set(spec.windowed_splits)
    series, examples = [], []
    for split, ex in batch:
        if isinstance(ex, RawSeries) != (split in windowed):
            raise ValueError(f"{spec.name}: {type(ex).__name__} {ex.id} is in split {split!r}; "
                             f"spec.windows stores series for {sorted(windowed)} only, "
                             f"and only series there")
        (series if isinstance(ex, RawSeries) else examples).append((split, ex))
    return series, examples


# === spill files: runs of (order key, serialized Example) sorted by key ===
def _open(path: str, mode: str):
    if "://" in path:
        import tensorflow as tf

        return tf.io.gfile.GFile(path, mode)
    return open(path, mode, buffering=1 << 20)


def write_run(path: str, items: Iterable[tuple[str, bytes]]) -> int:
    """Writes (key, record) pairs, already sorted by key, to a run file; returns their number."""
    if "://" not in path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    count = 0
    with _open(path, "wb") as f:
        for example_id, record in items:
            key = example_id.encode()
            f.write(struct.pack("<II", len(key), len(record)))
            f.write(key)
            f.write(record)
            count += 1
    return count


def read_run(path: str) -> Iterator[tuple[str, bytes]]:
    with _open(path, "rb") as f:
        while header := f.read(8):
            if len(header) != 8:
                raise IOError(f"{path}: truncated run file")
            id_len, record_len = struct.unpack("<II", header)
            key, record = f.read(id_len), f.read(record_len)
            if len(key) != id_len or len(record) != record_len:
                raise IOError(f"{path}: truncated run file")
            yield key.decode(), record


def merged_runs(paths: list[str], scratch_prefix: str,
                fan_in: int | None = None) -> Iterator[tuple[str, bytes]]:
    """The key-ordered merge of sorted runs, with at most `fan_in` (default MERGE_FAN_IN) files
    open at once: more runs are first merged in groups into runs `<scratch_prefix>-<round>-<group>`."""
    fan_in = fan_in or MERGE_FAN_IN
    round_ = 0
    while len(paths) > fan_in:
        merged = []
        for g in range(0, len(paths), fan_in):
            out = f"{scratch_prefix}-{round_}-{g // fan_in:05d}.run"
            write_run(out, heapq.merge(*(read_run(p) for p in paths[g:g + fan_in]),
                                       key=lambda kv: kv[0]))
            merged.append(out)
        paths, round_ = merged, round_ + 1
    # heapq.merge is stable: equal keys keep the order of `paths`.
    yield from heapq.merge(*(read_run(p) for p in paths), key=lambda kv: kv[0])


class _ReadTokenizeSpill(beam.DoFn):
    """(index, source) -> run-file dicts {"split", "shard", "run"}; BadRecords to BAD_TAG."""

    def __init__(self, reader: DatasetReader, spec: DatasetSpec, seed: int, num_shards: int,
                 spill_dir: str, budget_bytes: int):
        self._reader = reader
        self._spec = spec
        self._seed = seed
        self._num_shards = num_shards
        self._spill_dir = spill_dir
        self._budget = budget_bytes
        self._read = beam.metrics.Metrics.counter(_METRICS_NAMESPACE, "examples_read")
        self._bad = beam.metrics.Metrics.counter(_METRICS_NAMESPACE, "bad_records")
        self._count = beam.metrics.Metrics.counter(_METRICS_NAMESPACE, "examples_tokenized")
        self._seen = 0

    def process(self, indexed_source, stats):
        index, source = indexed_source
        spec = normalized_spec(self._spec, stats)
        buffers: dict[tuple[str, int], list[tuple[str, bytes]]] = collections.defaultdict(list)
        held, runs, batch = 0, 0, []
        for record in self._reader.read_source(source):
            if isinstance(record, BadRecord):
                self._bad.inc()
                yield beam.pvalue.TaggedOutput(BAD_TAG, record)
                continue
            self._read.inc()
            batch.append((self._reader.split_of(record, self._seed), record))
            if len(batch) == TOKENIZE_BATCH:
                held += self._tokenize(batch, spec, buffers)
                batch = []
            if held >= self._budget:
                yield from self._spill(index, runs, buffers)
                held, runs = 0, runs + 1
        if batch:
            self._tokenize(batch, spec, buffers)
        yield from self._spill(index, runs, buffers)

    def _tokenize(self, batch, spec, buffers) -> int:
        size = 0
        for key, (sort_key, record) in tokenize_batch(batch, spec, self._num_shards, self._seed):
            buffers[key].append((sort_key, record))
            size += len(record) + len(sort_key) + _ITEM_OVERHEAD
        self._count.inc(len(batch))
        before, self._seen = self._seen, self._seen + len(batch)
        if before // LOG_EVERY != self._seen // LOG_EVERY:
            logging.info("%s: this worker tokenized %d examples", spec.name, self._seen)
        return size

    def _spill(self, index: int, run: int, buffers) -> Iterator[dict[str, Any]]:
        for (split, shard), items in sorted(buffers.items()):
            items.sort(key=lambda kv: kv[0])
            path = os.path.join(self._spill_dir, f"{split}-{shard:05d}", f"{index:06d}-{run:04d}.run")
            write_run(path, items)
            yield {"split": split, "shard": shard, "run": path}
        buffers.clear()


class TokenizeAndSpill(beam.PTransform):
    """(index, source) -> {"runs": run-file dicts, BAD_TAG: BadRecords}."""

    def __init__(self, reader: DatasetReader, spec: DatasetSpec, seed: int, num_shards: int,
                 spill_dir: str, stats, budget_bytes: int | None = None):
        super().__init__()
        self._fn = _ReadTokenizeSpill(reader, spec, seed, num_shards, spill_dir,
                                      budget_bytes or SPILL_BUDGET_BYTES)
        self._stats = stats  # a singleton PCollection: the statistics dict, or None

    def expand(self, indexed_sources):
        return indexed_sources | "ReadTokenizeSpill" >> beam.ParDo(
            self._fn, stats=beam.pvalue.AsSingleton(self._stats)).with_outputs(BAD_TAG, main=RUNS_TAG)


# === write ===
def write_records(path: str, records: Iterable[bytes]) -> str:
    """Writes a GZIP TFRecord file; returns the sha256 of the uncompressed records."""
    import tensorflow as tf

    digest = hashlib.sha256()
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
        for record in records:
            digest.update(len(record).to_bytes(8, "little"))
            digest.update(record)
            writer.write(record)
    return digest.hexdigest()


class _MergeShard(beam.DoFn):
    def __init__(self, version_dir: str, num_shards: int, spill_dir: str):
        self._dir = version_dir
        self._num_shards = num_shards
        self._spill_dir = spill_dir

    def process(self, element):
        (split, shard), runs = element
        runs = sorted(runs)  # by (source index, run): a fixed merge order
        scratch = os.path.join(self._spill_dir, f"{split}-{shard:05d}", "merged")
        count = 0

        def records():
            nonlocal count
            for _, record in merged_runs(runs, scratch):
                count += 1
                yield record

        rel = shard_path(split, shard, self._num_shards)
        sha = write_records(os.path.join(self._dir, rel), records())
        yield {"split": split, "shard": shard, "path": rel, "num_examples": count, "sha256": sha}


class MergeShards(beam.PTransform):
    """Run-file dicts -> one manifest dict per written shard (only file names are grouped)."""

    def __init__(self, version_dir: str, num_shards: int, spill_dir: str):
        super().__init__()
        self._fn = _MergeShard(version_dir, num_shards, spill_dir)

    def expand(self, runs):
        return (
            runs
            | "KeyByShard" >> beam.Map(lambda r: ((r["split"], r["shard"]), r["run"]))
            | "GroupByShard" >> beam.GroupByKey()
            | "Merge" >> beam.ParDo(self._fn)
        )


class WriteJson(beam.PTransform):
    """Collects a PCollection into one JSON list file (for the driver to read afterwards)."""

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def expand(self, pcoll):
        path = self._path

        def write(items):
            import tensorflow as tf

            with tf.io.gfile.GFile(path, "w") as f:
                json.dump(sorted(items, key=json.dumps), f)
            return path

        return (pcoll
                | "ToList" >> beam.combiners.ToList()
                | "WriteFile" >> beam.Map(write))
