"""Beam PTransforms of the preprocessing job (see `pipeline/preprocess.py` for the graph).

Statistics pass (only when the pipeline computes the normalization): ComputeStats reads each
source for the moments of its train examples and merges them in source order (so the floats are
the same on every runner). Main pass: TokenizeAndSpill reads each source again, splits,
tokenizes with the statistics (joined to each source) and writes id-sorted runs to spill files,
at most SPILL_BUDGET_BYTES of examples in memory at a time; MergeShards merges each
(split, shard)'s runs into its GZIP TFRecord shard. The dataset-specific parts come from a `DatasetReader`; the
tokenizer is `preprocessing.tokenize`, the same ops the exported model runs.

Memory: nothing but source descriptions, run-file names and statistics passes between stages,
so a local runner (which keeps what passes between stages in memory) stays bounded however
large the dataset. The price is reading the raw data twice when statistics are computed.

Portability (DESIGN.md): the graph uses only what every runner executes the same way. Every
ParDo has a single output (records of different kinds are told apart by type with `Filter`,
because Beam's DaskRunner merges the tagged outputs of a multi-output ParDo into one
collection); there are no side inputs (the DaskRunner computes a side input inside each task
that reads it, recomputing its whole upstream graph: the statistics reach the tokenizer through
a GroupByKey join instead); and the graph has exactly one final leaf, WriteManifest (the
DaskRunner computes only the last leaf). Every file is written under a temporary name and
renamed into place, so a task that a runner retries or runs twice leaves whole files only.

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
import uuid
from typing import Any, Iterable, Iterator

import apache_beam as beam
import numpy as np

from pipeline import job_progress
from preprocessing.datasets.base import BadRecord, DatasetReader, RawExample, hash_fraction
from preprocessing.series_records import RawSeries, make_series_example
from preprocessing.spec import DatasetSpec

# Keys of the dict TokenizeAndSpill returns.
BAD_TAG = "bad"
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
# Raw examples the statistics pass stacks before folding them into its running moments.
STATS_BATCH = 256
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


# === statistics ===
def _moments(values: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, mean, M2) per channel of `values` [rows, channels], float64."""
    mean = values.mean(axis=0)
    return values.shape[0], mean, ((values - mean) ** 2).sum(axis=0)


def merge_moments(a, b):
    """Chan et al.'s parallel update of (count, mean, M2): stays accurate for large raw values
    where a sum of squares would cancel."""
    (na, ma, m2a), (nb, mb, m2b) = a, b
    if na == 0:
        return b
    if nb == 0:
        return a
    n = na + nb
    delta = np.asarray(mb) - np.asarray(ma)
    return n, ma + delta * (nb / n), m2a + m2b + delta**2 * (na * nb / n)


class _SourceMoments(beam.DoFn):
    """(index, source) -> (index, (count, mean, M2)) of the source's `split` examples' raw values
    per channel, accumulated in read order in fixed-size batches, so the result depends on the
    source alone. BadRecords are only counted (the main pass reports them)."""

    def __init__(self, reader: DatasetReader, seed: int, num_channels: int, split: str,
                 metrics_prefix: str):
        self._reader = reader
        self._seed = seed
        self._channels = num_channels
        self._split = split
        self._read = beam.metrics.Metrics.counter(_METRICS_NAMESPACE, metrics_prefix + "examples_read")
        self._bad = beam.metrics.Metrics.counter(_METRICS_NAMESPACE, metrics_prefix + "bad_records")

    def process(self, indexed_source):
        index, source = indexed_source
        acc = (0, np.zeros(self._channels), np.zeros(self._channels))
        batch: list[np.ndarray] = []
        read = 0
        for record in self._reader.read_source(source):
            if isinstance(record, BadRecord):
                self._bad.inc()
                continue
            self._read.inc()
            read += 1
            if read % STATS_BATCH == 0:  # the driver's progress line (pipeline/job_progress.py)
                job_progress.add(job_progress.STATS_READ, STATS_BATCH)
            if self._reader.split_of(record, self._seed) != self._split:
                continue
            batch.append(np.asarray(continuous_input(record.input), np.float64).reshape(-1, self._channels))
            if len(batch) == STATS_BATCH:
                acc = merge_moments(acc, _moments(np.concatenate(batch)))
                batch = []
        if batch:
            acc = merge_moments(acc, _moments(np.concatenate(batch)))
        job_progress.add(job_progress.STATS_READ, read % STATS_BATCH)
        job_progress.add(job_progress.STATS_SOURCES)
        n, mean, m2 = acc
        yield index, (int(n), [float(v) for v in mean], [float(v) for v in m2])


def stats_from_moments(per_source: Iterable[Any], num_channels: int) -> dict[str, Any]:
    """{"mean", "std", "count"} from (index, (count, mean, M2)) pairs, merged in index order so
    the floats do not depend on how a runner grouped or ordered them; None items are skipped."""
    acc = (0, np.zeros(num_channels), np.zeros(num_channels))
    for _, (n, mean, m2) in sorted(item for item in per_source if item is not None):
        acc = merge_moments(acc, (n, np.asarray(mean), np.asarray(m2)))
    n, mean, m2 = acc
    if n == 0:
        return {"mean": [], "std": [], "count": 0}
    std = np.sqrt(m2 / n)
    std = np.where(std < MIN_STD, 1.0, std)
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std], "count": int(n)}


class ComputeStats(beam.PTransform):
    """(index, source) -> exactly one dict {"mean", "std", "count"} over the train split.

    Each source's moments are computed in one DoFn call and all are merged in source order by
    one GroupByKey: a CombineFn would merge in whatever order a runner's bundles give (floats
    differing in the last bits between runners), and CombineGlobally's default value for an
    empty input is computed through a side input. A `None` marker makes the group exist even
    without sources.
    """

    def __init__(self, reader: DatasetReader, seed: int, num_channels: int, split: str = "train",
                 metrics_prefix: str = "stats_pass_"):
        super().__init__()
        self._fn = _SourceMoments(reader, seed, num_channels, split, metrics_prefix)
        self._channels = num_channels

    def expand(self, indexed_sources):
        channels = self._channels
        moments = indexed_sources | "SourceMoments" >> beam.ParDo(self._fn)
        marker = indexed_sources.pipeline | "Marker" >> beam.Create([None])
        return (
            (moments, marker)
            | "WithMarker" >> beam.Flatten()
            | "OneKey" >> beam.Map(lambda item: (None, item))
            | "Gather" >> beam.GroupByKey()
            | "Merge" >> beam.Map(lambda grouped: stats_from_moments(grouped[1], channels))
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


def _temporary_name(path: str) -> str:
    """A unique sibling of `path` to write into before `_rename_into_place`."""
    return f"{path}.tmp-{uuid.uuid4().hex}"


def _rename_into_place(tmp: str, path: str) -> None:
    if "://" in path:
        import tensorflow as tf

        tf.io.gfile.rename(tmp, path, overwrite=True)
    else:
        os.replace(tmp, path)


def _remove_quietly(path: str) -> None:
    """Best effort: the build folder is removed with a failed run anyway."""
    try:
        if "://" in path:
            import tensorflow as tf

            tf.io.gfile.remove(path)
        else:
            os.remove(path)
    except Exception:
        pass


def write_run(path: str, items: Iterable[tuple[str, bytes]]) -> int:
    """Writes (key, record) pairs, already sorted by key, to a run file; returns their number.
    The file appears whole or not at all (a retried task rewrites the same bytes)."""
    if "://" not in path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    count = 0
    tmp = _temporary_name(path)
    try:
        with _open(tmp, "wb") as f:
            for example_id, record in items:
                key = example_id.encode()
                f.write(struct.pack("<II", len(key), len(record)))
                f.write(key)
                f.write(record)
                count += 1
        _rename_into_place(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise
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
    """(index, source, statistics) -> run-file dicts {"split", "shard", "run"} and BadRecords
    (one output; TokenizeAndSpill tells them apart by type)."""

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

    def process(self, element):
        index, source, stats = element
        spec = normalized_spec(self._spec, stats)
        buffers: dict[tuple[str, int], list[tuple[str, bytes]]] = collections.defaultdict(list)
        held, runs, batch = 0, 0, []
        for record in self._reader.read_source(source):
            if isinstance(record, BadRecord):
                self._bad.inc()
                job_progress.add(job_progress.BAD_RECORDS)
                yield record
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
        job_progress.add(job_progress.TOKENIZE_SOURCES)

    def _tokenize(self, batch, spec, buffers) -> int:
        size = 0
        for key, (sort_key, record) in tokenize_batch(batch, spec, self._num_shards, self._seed):
            buffers[key].append((sort_key, record))
            size += len(record) + len(sort_key) + _ITEM_OVERHEAD
        self._count.inc(len(batch))
        job_progress.add(job_progress.TOKENIZED, len(batch))
        before, self._seen = self._seen, self._seen + len(batch)
        # A driver in this process shows the counts on its progress line instead.
        if before // LOG_EVERY != self._seen // LOG_EVERY and not job_progress.watched():
            logging.info("%s: this worker tokenized %d examples", spec.name, self._seen)
        return size

    def _spill(self, index: int, run: int, buffers) -> Iterator[dict[str, Any]]:
        for (split, shard), items in sorted(buffers.items()):
            items.sort(key=lambda kv: kv[0])
            path = os.path.join(self._spill_dir, f"{split}-{shard:05d}", f"{index:06d}-{run:04d}.run")
            write_run(path, items)
            yield {"split": split, "shard": shard, "run": path}
        buffers.clear()


def _is_run(item: Any) -> bool:
    return isinstance(item, dict)


def _is_bad(item: Any) -> bool:
    return isinstance(item, BadRecord)


def _source_and_stats(grouped) -> tuple[int, Any, Any]:
    """(index, [("source", s), ("stats", st)] in any order) -> (index, s, st)."""
    index, tagged = grouped
    parts = dict(tagged)
    return index, parts["source"], parts["stats"]


class TokenizeAndSpill(beam.PTransform):
    """(index, source) -> {RUNS_TAG: run-file dicts, BAD_TAG: BadRecords}.

    `stats` is a PCollection of exactly one element (the statistics dict, or None). It is
    joined to every source by a GroupByKey on the source index rather than passed as a side
    input (see the module docstring); the GroupByKey also spreads the sources over workers.
    """

    def __init__(self, reader: DatasetReader, spec: DatasetSpec, seed: int, num_shards: int,
                 spill_dir: str, stats, num_sources: int, budget_bytes: int | None = None):
        super().__init__()
        self._fn = _ReadTokenizeSpill(reader, spec, seed, num_shards, spill_dir,
                                      budget_bytes or SPILL_BUDGET_BYTES)
        self._stats = stats
        self._num_sources = num_sources

    def expand(self, indexed_sources):
        num_sources = self._num_sources
        keyed = indexed_sources | "KeySource" >> beam.Map(lambda kv: (kv[0], ("source", kv[1])))
        stats = self._stats | "StatsPerSource" >> beam.FlatMap(
            lambda st: [(i, ("stats", st)) for i in range(num_sources)])
        out = (
            (keyed, stats)
            | "Both" >> beam.Flatten()
            | "JoinStats" >> beam.GroupByKey()
            | "SourceAndStats" >> beam.Map(_source_and_stats)
            | "ReadTokenizeSpill" >> beam.ParDo(self._fn)
        )
        return {RUNS_TAG: out | "RunsOnly" >> beam.Filter(_is_run),
                BAD_TAG: out | "BadOnly" >> beam.Filter(_is_bad)}


# === write ===
def write_records(path: str, records: Iterable[bytes]) -> str:
    """Writes a GZIP TFRecord file, whole or not at all; returns the sha256 of the uncompressed
    records."""
    import tensorflow as tf

    digest = hashlib.sha256()
    tf.io.gfile.makedirs(os.path.dirname(path))
    tmp = _temporary_name(path)
    try:
        with tf.io.TFRecordWriter(tmp, tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
            for record in records:
                digest.update(len(record).to_bytes(8, "little"))
                digest.update(record)
                writer.write(record)
        _rename_into_place(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise
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
                if count % LOG_EVERY == 0:
                    job_progress.add(job_progress.EXAMPLES_WRITTEN, LOG_EVERY)
                yield record

        rel = shard_path(split, shard, self._num_shards)
        sha = write_records(os.path.join(self._dir, rel), records())
        job_progress.add(job_progress.EXAMPLES_WRITTEN, count % LOG_EVERY)
        job_progress.add(job_progress.SHARDS_WRITTEN)
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


def _tagged(kind: str):
    return lambda item: (kind, item)


def write_manifest(path: str, grouped) -> str:
    """Writes {kind: [items sorted by their JSON]} to `path`, whole or not at all."""
    import tensorflow as tf

    _, tagged = grouped
    manifest: dict[str, list[Any]] = collections.defaultdict(list)
    for kind, item in tagged:
        manifest[kind].append(item)
    manifest = {kind: sorted(items, key=json.dumps) for kind, items in sorted(manifest.items())}
    tmp = _temporary_name(path)
    with tf.io.gfile.GFile(tmp, "w") as f:
        json.dump(manifest, f)
    _rename_into_place(tmp, path)
    return path


class WriteManifest(beam.PTransform):
    """{kind: PCollection} -> one JSON file {kind: [items]} for the driver to read afterwards.

    This is the job's only final leaf: everything the driver needs (statistics, bad records,
    the shard list) flows into it. A GroupByKey on one key gathers the items (CombineGlobally's
    default value would need a side input); a kind without items is left out of the file.
    """

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def expand(self, pcolls: dict):
        path = self._path
        tagged = [pcoll | f"Tag_{kind}" >> beam.Map(_tagged(kind))
                  for kind, pcoll in sorted(pcolls.items())]
        return (
            tagged
            | "All" >> beam.Flatten()
            | "OneKey" >> beam.Map(lambda item: (None, item))
            | "Gather" >> beam.GroupByKey()
            | "Write" >> beam.Map(lambda grouped: write_manifest(path, grouped))
        )
