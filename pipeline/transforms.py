"""Beam PTransforms of the preprocessing job (see `pipeline/preprocess.py` for the graph).

ReadRaw -> AssignSplit -> ComputeStats (train split only) -> ToExamples (tokenize with the
stats as a side input) -> WriteShards. The dataset-specific parts come from a
`DatasetReader`; the tokenizer is `preprocessing.tokenize`, the same ops the exported model runs.

Determinism: the shard of an example is a hash of its id, and each shard is written by one
worker with its examples sorted by id, so a rerun with the same inputs and flags produces
byte-identical shards whatever the runner's parallelism or bundle order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Any, Iterable, Iterator

import apache_beam as beam
import numpy as np

from preprocessing.datasets.base import BadRecord, DatasetReader, RawExample, hash_fraction
from preprocessing.spec import DatasetSpec

BAD_TAG = "bad"
GOOD_TAG = "good"
_METRICS_NAMESPACE = "keras_metamae.preprocess"
# A worker logs one progress line per this many tokenized examples.
LOG_EVERY = 1000
# Standard deviations below this are replaced by 1 so constant channels do not blow up.
MIN_STD = 1e-6


def shard_path(split: str, shard: int, num_shards: int) -> str:
    """Shard file path relative to the version directory."""
    return f"{split}/data-{shard:05d}-of-{num_shards:05d}.tfrecord.gz"


def shard_pattern(split: str, num_shards: int) -> str:
    return f"{split}/data-*-of-{num_shards:05d}.tfrecord.gz"


def shard_of(example_id: str, num_shards: int) -> int:
    # Salted differently from the split hash so every split spreads over all shards.
    return min(int(hash_fraction("shard/" + example_id, 0) * num_shards), num_shards - 1)


# === read ===
class _ReadSource(beam.DoFn):
    """Reads one source; routes BadRecords to a separate output instead of failing."""

    def __init__(self, reader: DatasetReader):
        self._reader = reader
        self._read = beam.metrics.Metrics.counter(_METRICS_NAMESPACE, "examples_read")
        self._bad = beam.metrics.Metrics.counter(_METRICS_NAMESPACE, "bad_records")

    def process(self, source) -> Iterator[Any]:
        for record in self._reader.read_source(source):
            if isinstance(record, BadRecord):
                self._bad.inc()
                yield beam.pvalue.TaggedOutput(BAD_TAG, record)
            else:
                self._read.inc()
                yield record


class ReadRaw(beam.PTransform):
    """sources -> {good: RawExample, bad: BadRecord}."""

    def __init__(self, reader: DatasetReader, sources: list[Any]):
        super().__init__()
        self._reader = reader
        self._sources = sources

    def expand(self, pbegin):
        return (
            pbegin
            | "Sources" >> beam.Create(self._sources, reshuffle=False)
            # Spreads the (few, heavy) sources over workers before reading.
            | "Spread" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(_ReadSource(self._reader)).with_outputs(BAD_TAG, main=GOOD_TAG)
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
        arrays = [np.asarray(v) for v in raw.values() if np.asarray(v).dtype.kind == "f"]
        if len(arrays) != 1:
            raise ValueError(f"a segmented raw example needs exactly one float segment for the "
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


class _Tokenize(beam.DoFn):
    """A batch of (split, RawExample) -> ((split, shard), (id, serialized Example))."""

    def __init__(self, spec: DatasetSpec, num_shards: int):
        self._spec = spec
        self._num_shards = num_shards
        self._count = beam.metrics.Metrics.counter(_METRICS_NAMESPACE, "examples_tokenized")
        self._seen = 0

    def process(self, batch: list[tuple[str, RawExample]], stats: dict[str, Any]):
        from preprocessing import tokenize

        spec = self._spec
        if stats is not None:
            if not stats.get("mean"):
                raise ValueError(f"{spec.name}: the train split is empty, so there are no "
                                 f"statistics to normalize with")
            spec = dataclasses.replace(spec, normalization=stats)
        if spec.is_segmented:
            raw = {seg["name"]: np.stack([np.asarray(ex.input[seg["name"]]) for _, ex in batch])
                   for seg in spec.segments}
            parts = {k: v.numpy() for k, v in tokenize.raw_to_segment_tokens(raw, spec).items()}
            for i, (split, ex) in enumerate(batch):
                key = (split, shard_of(ex.id, self._num_shards))
                example_tokens = {name: values[i] for name, values in parts.items()}
                yield key, (ex.id, make_example(example_tokens, ex.label, ex.id, spec))
            self._count.inc(len(batch))
            return
        raw = np.stack([np.asarray(ex.input) for _, ex in batch])
        if spec.is_discrete:
            raw = raw.astype(np.int64)
        else:
            raw = raw.astype(np.float32)
        tokens = tokenize.raw_to_tokens(raw, spec).numpy()
        for (split, ex), example_tokens in zip(batch, tokens):
            key = (split, shard_of(ex.id, self._num_shards))
            yield key, (ex.id, make_example(example_tokens, ex.label, ex.id, spec))
        self._count.inc(len(batch))
        before, self._seen = self._seen, self._seen + len(batch)
        if before // LOG_EVERY != self._seen // LOG_EVERY:
            logging.info("%s: this worker tokenized %d examples", spec.name, self._seen)


class ToExamples(beam.PTransform):
    """(split, RawExample) -> ((split, shard), (id, serialized tf.train.Example))."""

    def __init__(self, spec: DatasetSpec, num_shards: int, stats):
        super().__init__()
        self._spec = spec
        self._num_shards = num_shards
        self._stats = stats  # a singleton PCollection of normalization dicts

    def expand(self, keyed):
        return (
            keyed
            # Tokenizing a batch is one TF call instead of one per example.
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=64)
            | "Tokenize" >> beam.ParDo(_Tokenize(self._spec, self._num_shards),
                                       stats=beam.pvalue.AsSingleton(self._stats))
        )


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


class _WriteShard(beam.DoFn):
    def __init__(self, version_dir: str, num_shards: int):
        self._dir = version_dir
        self._num_shards = num_shards

    def process(self, element):
        (split, shard), items = element
        # Sorted by id: the file's content does not depend on bundle order.
        items = sorted(items, key=lambda kv: kv[0])
        rel = shard_path(split, shard, self._num_shards)
        sha = write_records(os.path.join(self._dir, rel), (record for _, record in items))
        yield {"split": split, "shard": shard, "path": rel, "num_examples": len(items), "sha256": sha}


class WriteShards(beam.PTransform):
    """((split, shard), (id, record)) -> one manifest dict per written shard."""

    def __init__(self, version_dir: str, num_shards: int):
        super().__init__()
        self._dir = version_dir
        self._num_shards = num_shards

    def expand(self, keyed_records):
        return (
            keyed_records
            | "GroupByShard" >> beam.GroupByKey()
            | "Write" >> beam.ParDo(_WriteShard(self._dir, self._num_shards))
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
