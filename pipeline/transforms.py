"""Beam PTransforms of the preprocessing job (see `pipeline/preprocess.py` for the graph).

One pass over the raw data: TokenizeAndSpill reads each source (through the reader's
`read_source_batches`), splits, lays each batch out as tokens in NumPy and writes them in the
storage dtype (DatasetSpec.storage: un-normalized, so nothing waits for the statistics), then
writes id-sorted runs to spill files, at most SPILL_BUDGET_BYTES of examples in memory at a
time. When the pipeline computes the normalization, the same read also yields each source's
moments of its train (and unlabelled pool) examples, which MergeStats merges in source order (so the floats are the
same on every runner). MergeShards merges each (split, shard)'s runs into its TFRecord shard.
The dataset-specific parts come from a `DatasetReader`; the token layout and the record format
from `preprocessing.storage` (NumPy; no per-example TensorFlow call, no `tf.train.Example`
objects), which the tf.data reader undoes with `preprocessing.tokenize.stored_to_tokens`.

Every DoFn call also reports a StageTime (wall span, CPU seconds, examples), which the driver
sums per stage (`stage_seconds`) for the job summary and the benchmark.

Memory: nothing but source descriptions, run-file names, statistics and timings pass between
stages, so a local runner (which keeps what passes between stages in memory) stays bounded
however large the dataset.

Portability (DESIGN.md): the graph uses only what every runner executes the same way. Every
ParDo has a single output (records of different kinds are told apart by type with `Filter`,
because Beam's DaskRunner merges the tagged outputs of a multi-output ParDo into one
collection); there are no side inputs (the DaskRunner computes a side input inside each task
that reads it, recomputing its whole upstream graph); and the graph has exactly one final leaf,
WriteManifest (the DaskRunner computes only the last leaf). Every file is written under a temporary name and
renamed into place, so a task that a runner retries or runs twice leaves whole files only.

Determinism and mixing: each shard holds its examples sorted by `order_key` — a seeded hash of
the id, then the id — (a merge of sorted runs), and the shard is that hash's leading bits,
so a rerun with the same inputs and flags produces byte-identical shards whatever the runner's
parallelism or bundle order, and the order inside a shard never follows the label even where
ids start with the class or speaker (EuroSAT `AnnualCrop_1`, LibriSpeech `103-1240-0000`).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import heapq
import json
import logging
import os
import struct
import sys
import time
import uuid
from typing import Any, Iterable, Iterator

import apache_beam as beam
import numpy as np

from commandline import native_logs
from pipeline import job_progress
from preprocessing import storage
from preprocessing.datasets.base import BadRecord, DatasetReader, RawBatch
from preprocessing.series_records import RawSeries, make_series_example
from preprocessing.spec import DatasetSpec

# Keys of the dict TokenizeAndSpill returns.
BAD_TAG = "bad"
RUNS_TAG = "runs"
MOMENTS_TAG = "moments"
# The splits normalization statistics come from: the training split, and an unlabelled pool
# beside it (custom data), which pretraining reads as much as the training split.
STATISTICS_SPLITS = ("train", "unlabeled")
TIMINGS_TAG = "timings"
_METRICS_NAMESPACE = "keras_metamae.preprocess"
# A worker logs one progress line per this many tokenized examples.
LOG_EVERY = 1000
# Standard deviations below this are replaced by 1 so constant channels do not blow up.
MIN_STD = 1e-6
# Serialized examples a worker holds before writing them out as sorted runs.
SPILL_BUDGET_BYTES = 64 << 20
# Runs merged at once (open files); more are merged in rounds.
MERGE_FAN_IN = 128
# Examples per RawBatch of a reader's default `read_source_batches` (a reader that yields
# batches itself, e.g. HIGGS, chooses its own size).
TOKENIZE_BATCH = 64
# Train examples stacked before they are folded into a source's running moments.
STATS_BATCH = 256
# Python's own bytes per held (id, record) pair (tuple, str and bytes headers, list slot).
_ITEM_OVERHEAD = 150
# Each spill-run item: key length, record length (little-endian uint32), key, record.
_RUN_HEADER = struct.Struct("<II")
_RUN_READ_BYTES = 1 << 20


def shard_path(split: str, shard: int, num_shards: int,
               compression: str = storage.SHARD_COMPRESSION) -> str:
    """Shard file path relative to the version directory."""
    return f"{split}/data-{shard:05d}-of-{num_shards:05d}{storage.SHARD_SUFFIX[compression]}"


def shard_pattern(split: str, num_shards: int, compression: str = storage.SHARD_COMPRESSION) -> str:
    return f"{split}/data-*-of-{num_shards:05d}{storage.SHARD_SUFFIX[compression]}"


_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


def _mix64(h: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer: every input bit flips about half of the output bits."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def order_hashes(ids: list[bytes], seed: int) -> np.ndarray:
    """A seeded 64-bit hash of each UTF-8 id (FNV-1a over its bytes, then `_mix64`), computed
    for a whole batch at once: the same value for an id whatever batch it comes in."""
    width = max(map(len, ids), default=0)
    table = np.frombuffer(b"".join(i.ljust(width, b"\0") for i in ids), np.uint8).reshape(len(ids), width)
    lengths = np.fromiter(map(len, ids), np.int64, len(ids))
    seed_bits = _mix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], np.uint64))
    h = np.full(len(ids), _FNV_OFFSET, np.uint64) ^ seed_bits
    for j in range(width):
        inside = j < lengths
        h = np.where(inside, (h ^ table[:, j].astype(np.uint64)) * _FNV_PRIME, h)
    return _mix64(h ^ lengths.astype(np.uint64))


def order_key(example_id: str, seed: int) -> str:
    """Where an example goes inside its shard: a seeded hash (so the order is independent of
    any class or speaker prefix of the id), then the id itself (unique, so ties are
    impossible). Sorts like the bytes keys `placements` gives the spill files."""
    return f"{int(order_hashes([example_id.encode()], seed)[0]):016x}/{example_id}"


def placements(ids: list[bytes], seed: int, num_shards: int) -> tuple[list[int], list[bytes]]:
    """(shard of each example, its order key: the 8 big-endian bytes of its `order_hashes`
    value, then the id). The shard is that hash's leading 32 bits scaled to `num_shards`: one
    hash for both, and neither follows the id's order or the label."""
    hashes = order_hashes(ids, seed)
    shards = ((hashes >> np.uint64(32)) * np.uint64(num_shards)) >> np.uint64(32)
    packed = hashes.astype(">u8").tobytes()
    return shards.tolist(), [packed[8 * i:8 * i + 8] + i_d for i, i_d in enumerate(ids)]


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


@dataclasses.dataclass
class SourceMoments:
    """(count, mean, M2) per channel of one source's train examples' raw values."""

    index: int
    count: int
    mean: list[float]
    m2: list[float]


class _MomentsOfSource:
    """Running moments of one source's train examples, folded in read order every STATS_BATCH
    examples, so the floats depend on the source alone (not on how its reading was batched)."""

    def __init__(self, num_channels: int):
        self._channels = num_channels
        self._acc = (0, np.zeros(num_channels), np.zeros(num_channels))
        self._pending: list[np.ndarray] = []  # [examples, rows, channels] blocks not yet folded
        self._pending_examples = 0

    def add(self, values: np.ndarray) -> None:
        """`values` [examples, ...]: each example's raw values, channels last."""
        block = np.asarray(values, np.float64).reshape(len(values), -1, self._channels)
        self._pending.append(block)
        self._pending_examples += len(block)
        if self._pending_examples >= STATS_BATCH:
            pending = np.concatenate(self._pending)
            whole = len(pending) - len(pending) % STATS_BATCH
            for start in range(0, whole, STATS_BATCH):
                self._fold(pending[start:start + STATS_BATCH])
            self._pending = [pending[whole:]]
            self._pending_examples = len(pending) - whole

    def _fold(self, examples: np.ndarray) -> None:
        if len(examples):
            self._acc = merge_moments(self._acc, _moments(examples.reshape(-1, self._channels)))

    def result(self, index: int) -> SourceMoments:
        if self._pending_examples:
            self._fold(np.concatenate(self._pending))
        n, mean, m2 = self._acc
        return SourceMoments(index, int(n), [float(v) for v in mean], [float(v) for v in m2])


def stats_from_moments(per_source: Iterable[Any], num_channels: int) -> dict[str, Any]:
    """{"mean", "std", "count"} from SourceMoments, merged in source order so the floats do not
    depend on how a runner grouped or ordered them; None items are skipped."""
    acc = (0, np.zeros(num_channels), np.zeros(num_channels))
    for item in sorted((m for m in per_source if m is not None), key=lambda m: m.index):
        acc = merge_moments(acc, (item.count, np.asarray(item.mean), np.asarray(item.m2)))
    n, mean, m2 = acc
    if n == 0:
        return {"mean": [], "std": [], "count": 0}
    std = np.sqrt(m2 / n)
    std = np.where(std < MIN_STD, 1.0, std)
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std], "count": int(n)}


class MergeStats(beam.PTransform):
    """SourceMoments -> exactly one dict {"mean", "std", "count"} over the train split.

    The moments come out of the main pass (ReadTokenizeSpill computes them while it reads, so
    the raw data is read once) and are merged in source order by one GroupByKey: a CombineFn
    would merge in whatever order a runner's bundles give (floats differing in the last bits
    between runners), and CombineGlobally's default value for an empty input is computed
    through a side input. A `None` marker makes the group exist even without sources.
    """

    def __init__(self, num_channels: int):
        super().__init__()
        self._channels = num_channels

    def expand(self, moments):
        channels = self._channels
        marker = moments.pipeline | "Marker" >> beam.Create([None])
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


def _continuous_inputs(batch: RawBatch, spec: DatasetSpec) -> np.ndarray:
    """The continuous raw values of a batch `[N, *input_shape]` (the continuous segment's for a
    segmented spec)."""
    if not spec.is_segmented:
        return np.asarray(batch.inputs)
    (segment,) = [s for s in spec.segments if s["kind"] == "continuous"]
    return np.stack([np.asarray(v) for v in batch.inputs[segment["name"]]])


# === stage timings (reported by the driver, not part of the output) ===
@dataclasses.dataclass
class StageTime:
    """What one DoFn call of a stage took: wall-clock span (epoch seconds), CPU seconds of its
    process, and the examples it handled."""

    stage: str
    start: float
    end: float
    cpu_seconds: float
    examples: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Clock:
    def __init__(self, stage: str):
        self._stage, self._start, self._cpu = stage, time.time(), time.process_time()

    def stop(self, examples: int) -> StageTime:
        return StageTime(self._stage, self._start, time.time(),
                         time.process_time() - self._cpu, examples)


# The job's stages in order: the driver's own (`prepare`: reader, raw files, sources; `finish`:
# spec and publishing) around the Beam graph's, whose time outside its two timed stages
# (worker start-up, grouping, the manifest) is `beam_other`.
STAGES = ("prepare", "read_tokenize_spill", "merge_write", "beam_other", "finish")


def stage_seconds(timings: Iterable[dict[str, Any]], start: float, graph_start: float,
                  graph_end: float, end: float) -> dict[str, dict[str, float]]:
    """{stage: {"seconds", "cpu_seconds", "examples"}} in STAGES order. A Beam stage's seconds
    run from its first DoFn call's start to its last one's end (wall clock; with several
    workers its CPU seconds, summed over them, can exceed it); the driver's stages are timed
    by the driver (`start`, `graph_start`, `graph_end`, `end`: epoch seconds)."""
    spans: dict[str, dict[str, float]] = {}
    for t in timings:
        s = spans.setdefault(t["stage"], {"start": t["start"], "end": t["end"],
                                          "cpu_seconds": 0.0, "examples": 0})
        s["start"], s["end"] = min(s["start"], t["start"]), max(s["end"], t["end"])
        s["cpu_seconds"] += t["cpu_seconds"]
        s["examples"] += t["examples"]
    out = {"prepare": {"seconds": graph_start - start}}
    timed = 0.0
    for stage in ("read_tokenize_spill", "merge_write"):
        span = spans.get(stage, {"start": 0.0, "end": 0.0, "cpu_seconds": 0.0, "examples": 0})
        out[stage] = {"seconds": span["end"] - span["start"], "cpu_seconds": span["cpu_seconds"],
                      "examples": span["examples"]}
        timed += out[stage]["seconds"]
    out["beam_other"] = {"seconds": max(0.0, graph_end - graph_start - timed)}
    out["finish"] = {"seconds": end - graph_end}
    return out


def format_stages(stages: dict[str, dict[str, float]]) -> str:
    """`prepare 0.2 s, read_tokenize_spill 4.1 s (CPU 4.0 s), ...`"""
    return ", ".join(f"{name} {s['seconds']:.1f} s"
                     + (f" (CPU {s['cpu_seconds']:.1f} s)" if "cpu_seconds" in s else "")
                     for name, s in stages.items())


# === tokenize ===
def make_example(tokens: Any, label: Any, example_id: str, spec: DatasetSpec) -> bytes:
    """The serialized tf.train.Example of one example as the shards store it (see
    `DatasetSpec.storage`): `tokens` are the stored values `[num_tokens, token_dim]` in the
    storage dtype (int64 ids `[num_tokens]` for discrete tokens; for segmented specs
    `{segment name: tokens}`)."""
    label_feature = storage.label_features([label], spec, [example_id])[0]
    return storage.serialize_example({**_token_features(tokens, spec), "label": label_feature,
                                      "id": storage.id_feature(example_id)})


def _token_features(tokens: Any, spec: DatasetSpec) -> dict[str, tuple[bytes, bytes]]:
    def feature(values, discrete, dtype):
        if discrete:
            return storage.int64_feature(storage.varint_rows(np.asarray(values)[np.newaxis])[0])
        return storage.bytes_feature(np.ascontiguousarray(values, dtype).tobytes())

    if not spec.is_segmented:
        return {"tokens": feature(tokens, spec.is_discrete, spec.storage_dtype)}
    return {seg["feature"]: feature(tokens[seg["name"]], seg["kind"] == "discrete",
                                    spec.storage_dtype) for seg in spec.segments}


def with_storage(spec: DatasetSpec, reader: DatasetReader) -> DatasetSpec:
    """`spec` with the storage its reader declares (`DatasetSpec.storage`)."""
    return dataclasses.replace(spec, storage=storage.storage_for(
        spec, reader.storage_dtype, reader.storage_scale))


def normalized_spec(spec: DatasetSpec, stats: dict[str, Any] | None) -> DatasetSpec:
    """`spec` with the pipeline's statistics as its normalization (None: fixed or discrete)."""
    if stats is None:
        return spec
    if not stats.get("mean"):
        raise ValueError(f"{spec.name}: the train split is empty, so there are no "
                         f"statistics to normalize with")
    return dataclasses.replace(spec, normalization=stats)


def _discrete_ids(raw: Any, spec: DatasetSpec) -> np.ndarray:
    """int64 ids `[N, num_tokens]` of a discrete (segment) spec's raw batch."""
    if spec.tokenizer == "wordpiece":  # text: the WordPiece op the serving graph runs too
        from preprocessing import tokenize

        return tokenize.wordpiece_to_tokens(np.stack([np.asarray(v) for v in raw]), spec).numpy()
    if spec.tokenizer == "column_vocab":  # categorical cells: the op serving runs too
        from preprocessing import tokenize

        cells = np.stack([np.asarray(v, dtype=object) for v in raw]).astype(bytes)
        return tokenize.column_vocab_to_tokens(cells, spec).numpy()
    return np.asarray(raw).astype(np.int64).reshape(len(raw), -1)


def _stored_segments(batch: RawBatch, spec: DatasetSpec) -> tuple[dict[str, Any], np.ndarray]:
    """({segment name: stored values [N, ...]}, exact [N]) of a segmented spec's batch."""
    from preprocessing.spec import segment_spec

    parts, exact = {}, np.ones(len(batch), bool)
    for segment in spec.segments:
        view = segment_spec(spec, segment)
        raw = batch.inputs[segment["name"]]
        if segment["kind"] == "continuous":
            parts[segment["name"]], exact = storage.stored_tokens(np.stack(raw), view)
            continue
        ids = _discrete_ids(raw, view)
        vocab = int(segment["vocab_size"])
        if ids.size and (ids.min() < 0 or ids.max() >= vocab):
            raise ValueError(f"{spec.name}: {segment['name']} ids must be in [0, {vocab}), got "
                             f"[{ids.min()}, {ids.max()}]")
        parts[segment["name"]] = ids
    return parts, exact


def encode_batch(batch: RawBatch, splits: list[str], spec: DatasetSpec, num_shards: int,
                 seed: int = 0) -> tuple[list[tuple[tuple[str, int], bytes, bytes]],
                                         list[BadRecord], np.ndarray]:
    """A batch of fixed examples -> ([((split, shard), order key, serialized Example)], bad
    records, exact [N] bool): an example whose values its storage dtype cannot hold exactly is
    a BadRecord. NumPy only: no per-example TensorFlow call (see preprocessing/storage.py)."""
    if spec.is_segmented:
        parts, exact = _stored_segments(batch, spec)
        columns = {seg["feature"]: (storage.INT64S, storage.varint_rows(parts[seg["name"]]))
                   if seg["kind"] == "discrete" else
                   (storage.BYTES, [row.tobytes() for row in parts[seg["name"]]])
                   for seg in spec.segments}
    elif spec.is_discrete:
        exact = np.ones(len(batch), bool)
        columns = {"tokens": (storage.INT64S, storage.varint_rows(_discrete_ids(batch.inputs, spec)))}
    else:
        stored, exact = storage.stored_tokens(batch.inputs, spec)
        columns = {"tokens": (storage.BYTES, [row.tobytes() for row in stored])}
    labels = storage.label_features(batch.labels, spec, batch.ids)
    columns["label"] = (labels[0][0] if labels else storage.INT64S, [p for _, p in labels])
    columns["id"] = (storage.BYTES, [example_id.encode() for example_id in batch.ids])
    records = storage.serialize_examples(columns)
    shards, keys = placements(columns["id"][1], seed, num_shards)
    if exact.all():  # the common case, without a Python step per example
        return list(zip(zip(splits, shards), keys, records)), [], exact
    out, bad = [], []
    for example_id, split, record, ok, shard, key in zip(batch.ids, splits, records,
                                                          exact.tolist(), shards, keys):
        if not ok:
            bad.append(BadRecord(
                path=f"{spec.name}:{example_id}",
                reason=f"values not exactly representable as the dataset's storage dtype "
                       f"{spec.storage_dtype} (scale {spec.storage_scale:g}): NaN, out of range "
                       f"or not a multiple of 1/scale"))
            continue
        out.append(((split, shard), key, record))
    return out, bad, exact


def _check_series_split(record: Any, split: str, spec: DatasetSpec) -> None:
    """A series outside the windowed splits, or a fixed example inside one, is a reader bug."""
    if isinstance(record, RawSeries) != (split in spec.windowed_splits):
        raise ValueError(f"{spec.name}: {type(record).__name__} {record.id} is in split {split!r}; "
                         f"spec.windows stores series for {spec.windowed_splits} only, "
                         f"and only series there")


# === files: local ones through os, a URL (`gs://...`) through Beam's FileSystems ===
def _beam_files():
    from apache_beam.io.filesystems import CompressionTypes, FileSystems

    return FileSystems, CompressionTypes.UNCOMPRESSED


def _open(path: str, mode: str):
    if "://" in path:
        files, uncompressed = _beam_files()
        if "w" in mode:
            return files.create(path, compression_type=uncompressed)
        return files.open(path, compression_type=uncompressed)
    return open(path, mode, buffering=1 << 20)


def _temporary_name(path: str) -> str:
    """A unique sibling of `path` to write into before `_rename_into_place`."""
    return f"{path}.tmp-{uuid.uuid4().hex}"


def _rename_into_place(tmp: str, path: str) -> None:
    if "://" in path:  # a copy and a delete: the job's manifest, not this, publishes files
        _beam_files()[0].rename([tmp], [path])
    else:
        os.replace(tmp, path)


def _file_size(path: str) -> int:
    if "://" in path:
        return int(_beam_files()[0].match([path])[0].metadata_list[0].size_in_bytes)
    return os.path.getsize(path)


def _remove_quietly(path: str) -> None:
    """Best effort: the build folder is removed with a failed run anyway."""
    try:
        if "://" in path:
            _beam_files()[0].delete([path])
        else:
            os.remove(path)
    except Exception:
        pass


def write_run(path: str, items: Iterable[tuple[bytes | str, bytes]]) -> int:
    """Writes (key, record) pairs, already sorted by key, to a run file; returns their number.
    The file appears whole or not at all (a retried task rewrites the same bytes). A str key
    is stored as UTF-8, which sorts like the str."""
    if "://" not in path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    count = 0
    tmp = _temporary_name(path)
    try:
        with _open(tmp, "wb") as f:
            pack, pieces = _RUN_HEADER.pack, []
            for key, record in items:
                if isinstance(key, str):
                    key = key.encode()
                pieces += (pack(len(key), len(record)), key, record)
                count += 1
                if len(pieces) >= 3 * 1024:  # one write per 1,024 items
                    f.write(b"".join(pieces))
                    pieces.clear()
            f.write(b"".join(pieces))
        _rename_into_place(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise
    return count


def read_run(path: str) -> Iterator[tuple[bytes, bytes]]:
    """The (key, record) pairs of a run file, parsed from blocks of _RUN_READ_BYTES (a few
    reads per thousand records, not three per record)."""
    unpack = _RUN_HEADER.unpack_from
    with _open(path, "rb") as f:
        buffer, position = b"", 0
        while True:
            if len(buffer) - position >= 8:
                key_length, record_length = unpack(buffer, position)
                start = position + 8
                end = start + key_length + record_length
                if end <= len(buffer):
                    yield buffer[start:start + key_length], buffer[start + key_length:end]
                    position = end
                    continue
                need = end - len(buffer)
            else:
                need = 8 - (len(buffer) - position)
            more = f.read(max(_RUN_READ_BYTES, need))
            if not more:
                if position < len(buffer):
                    raise IOError(f"{path}: truncated run file")
                return
            buffer, position = buffer[position:] + more, 0


def merged_runs(paths: list[str], scratch_prefix: str,
                fan_in: int | None = None) -> Iterator[tuple[bytes, bytes]]:
    """The key-ordered merge of sorted runs, with at most `fan_in` (default MERGE_FAN_IN) files
    open at once: more runs are first merged in groups into runs `<scratch_prefix>-<round>-<group>`."""
    fan_in = fan_in or MERGE_FAN_IN
    round_ = 0
    while len(paths) > fan_in:
        merged = []
        for g in range(0, len(paths), fan_in):
            out = f"{scratch_prefix}-{round_}-{g // fan_in:05d}.run"
            # Keys are unique (they end with the example id), so tuples compare by key alone.
            write_run(out, heapq.merge(*(read_run(p) for p in paths[g:g + fan_in])))
            merged.append(out)
        paths, round_ = merged, round_ + 1
    yield from heapq.merge(*(read_run(p) for p in paths))


class _ReadTokenizeSpill(beam.DoFn):
    """(index, source) -> run-file dicts {"split", "shard", "run"}, BadRecords, the source's
    SourceMoments (when the statistics are computed) and its StageTime (one output; the
    consumers tell them apart by type)."""

    def __init__(self, reader: DatasetReader, spec: DatasetSpec, seed: int, num_shards: int,
                 spill_dir: str, budget_bytes: int, compute_stats: bool):
        self._reader = reader
        self._spec = spec
        self._seed = seed
        self._num_shards = num_shards
        self._spill_dir = spill_dir
        self._budget = budget_bytes
        self._stats_channels = int(spec.input_shape[-1]) if compute_stats else 0
        self._read = beam.metrics.Metrics.counter(_METRICS_NAMESPACE, "examples_read")
        self._bad = beam.metrics.Metrics.counter(_METRICS_NAMESPACE, "bad_records")
        self._count = beam.metrics.Metrics.counter(_METRICS_NAMESPACE, "examples_tokenized")
        self._seen = 0

    def process(self, element):
        index, source = element
        clock = _Clock("read_tokenize_spill")
        spec = self._spec
        moments = _MomentsOfSource(self._stats_channels) if self._stats_channels else None
        buffers: dict[tuple[str, int], list[tuple[bytes, bytes]]] = collections.defaultdict(list)
        held, runs, examples = 0, 0, 0
        for item in self._reader.read_source_batches(source, TOKENIZE_BATCH):
            if isinstance(item, BadRecord):
                self._bad.inc()
                job_progress.add(job_progress.BAD_RECORDS)
                yield item
                continue
            if isinstance(item, RawSeries):  # stored as they are; windows are drawn at read time
                split = self._reader.split_of(item, self._seed)
                _check_series_split(item, split, spec)
                self._read.inc()
                (shard,), (sort_key,) = placements([item.id.encode()], self._seed, self._num_shards)
                record = make_series_example(item, spec)
                buffers[(split, shard)].append((sort_key, record))
                held += len(record) + len(sort_key) + _ITEM_OVERHEAD
                examples += 1
                self._log_progress(1)
            elif isinstance(item, RawBatch):
                size, bad = self._encode(item, spec, buffers, moments)
                held += size
                examples += len(item)
                self._log_progress(len(item))
                for record in bad:
                    self._bad.inc()
                    job_progress.add(job_progress.BAD_RECORDS)
                    yield record
            if held >= self._budget:
                yield from self._spill(index, runs, buffers)
                held, runs = 0, runs + 1
        yield from self._spill(index, runs, buffers)
        job_progress.add(job_progress.TOKENIZE_SOURCES)
        if moments is not None:
            yield moments.result(index)
        yield clock.stop(examples)

    def _encode(self, batch: RawBatch, spec: DatasetSpec, buffers,
                moments) -> tuple[int, list[BadRecord]]:
        """Adds a batch's records to `buffers` and its exact train examples to `moments`;
        returns (the bytes added, its bad records)."""
        splits = self._reader.split_of_batch(batch, self._seed)
        if spec.windows:
            windowed = set(spec.windowed_splits)
            for i, split in enumerate(splits):
                if split in windowed:
                    _check_series_split(batch.example(i), split, spec)
        self._read.inc(len(batch))
        encoded, bad, exact = encode_batch(batch, splits, spec, self._num_shards, self._seed)
        if moments is not None:
            train = np.flatnonzero(np.isin(splits, STATISTICS_SPLITS) & exact)
            if len(train):
                moments.add(_continuous_inputs(batch, spec)[train])
        size = 0
        for where, sort_key, record in encoded:
            buffers[where].append((sort_key, record))
            size += len(record) + len(sort_key) + _ITEM_OVERHEAD
        return size, bad

    def _log_progress(self, n: int) -> None:
        self._count.inc(n)
        job_progress.add(job_progress.TOKENIZED, n)
        before, self._seen = self._seen, self._seen + n
        # A driver in this process shows the counts on its progress line instead.
        if before // LOG_EVERY != self._seen // LOG_EVERY and not job_progress.watched():
            logging.info("%s: this worker tokenized %d examples", self._spec.name, self._seen)

    def _spill(self, index: int, run: int, buffers) -> Iterator[dict[str, Any]]:
        for (split, shard), items in sorted(buffers.items()):
            items.sort()  # by key: keys are unique (they end with the id)
            path = os.path.join(self._spill_dir, f"{split}-{shard:05d}", f"{index:06d}-{run:04d}.run")
            write_run(path, items)
            yield {"split": split, "shard": shard, "run": path}
        buffers.clear()


def _is_run(item: Any) -> bool:
    return isinstance(item, dict)


def _is_bad(item: Any) -> bool:
    return isinstance(item, BadRecord)


def _is_moments(item: Any) -> bool:
    return isinstance(item, SourceMoments)


def _timing_of(item: Any) -> list[dict[str, Any]]:
    return [item.as_dict()] if isinstance(item, StageTime) else []


class TokenizeAndSpill(beam.PTransform):
    """(index, source) -> {RUNS_TAG: run-file dicts, BAD_TAG: BadRecords, MOMENTS_TAG:
    SourceMoments (only with `compute_stats`), TIMINGS_TAG: StageTime dicts}.

    One pass over the raw data: the shards hold un-normalized values (DatasetSpec.storage), so
    tokenizing does not wait for the statistics, which are computed from the same read.
    """

    def __init__(self, reader: DatasetReader, spec: DatasetSpec, seed: int, num_shards: int,
                 spill_dir: str, compute_stats: bool, budget_bytes: int | None = None):
        super().__init__()
        self._fn = _ReadTokenizeSpill(reader, spec, seed, num_shards, spill_dir,
                                      budget_bytes or SPILL_BUDGET_BYTES, compute_stats)

    def expand(self, indexed_sources):
        out = indexed_sources | "ReadTokenizeSpill" >> beam.ParDo(self._fn)
        return {RUNS_TAG: out | "RunsOnly" >> beam.Filter(_is_run),
                BAD_TAG: out | "BadOnly" >> beam.Filter(_is_bad),
                MOMENTS_TAG: out | "MomentsOnly" >> beam.Filter(_is_moments),
                TIMINGS_TAG: out | "TimingsOnly" >> beam.FlatMap(_timing_of)}


# === write ===
@functools.lru_cache(maxsize=None)
def _native_record_io():
    """TensorFlow's TFRecord writer module (native CRC32C), loaded from its extension file
    alone: importing all of TensorFlow costs each worker process seconds of start-up for this
    one class. None when that file is not where TensorFlow 2.x keeps it."""
    import glob
    import importlib.machinery
    import importlib.util

    name = "tensorflow.python.lib.io._pywrap_record_io"
    if name in sys.modules:
        return sys.modules[name]
    try:
        package = importlib.util.find_spec("tensorflow")  # locates it without importing it
        (path,) = glob.glob(os.path.join(os.path.dirname(package.origin),
                                         "python", "lib", "io", "_pywrap_record_io*.so"))
        loader = importlib.machinery.ExtensionFileLoader(name, path)
        with native_logs.loading_tensorflow_library():  # it loads TensorFlow's core library
            module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
            loader.exec_module(module)
        module.RecordWriter, module.RecordWriterOptions  # noqa: B018  (the API used below)
    except Exception:  # another layout or build: the public API below
        return None
    # Registered under its own name, so a later `import tensorflow` uses this copy: a pybind11
    # extension cannot be initialized twice in one process.
    sys.modules[name] = module
    return module


def _record_writer(path: str, compression: str):
    """A TFRecord writer (`write(bytes)`, `close()`) for a local `path` without importing
    TensorFlow when possible; `tf.io.TFRecordWriter` otherwise."""
    record_io = _native_record_io()
    if record_io is not None:
        return record_io.RecordWriter(path.encode(),
                                      record_io.RecordWriterOptions(compression.encode()))
    import tensorflow as tf

    return tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type=compression))


def write_records(path: str, records: Iterable[bytes],
                  compression: str = storage.SHARD_COMPRESSION) -> str:
    """Writes a TFRecord file (`compression` "" or "GZIP"), whole or not at all; returns the
    sha256 of the uncompressed records."""
    if "://" in path:
        return _write_records_remotely(path, records, compression)
    digest = hashlib.sha256()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = _temporary_name(path)
    try:
        writer = _record_writer(tmp, compression)
        try:
            for record in records:
                digest.update(len(record).to_bytes(8, "little"))
                digest.update(record)
                writer.write(record)
        finally:
            writer.close()
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
        clock = _Clock("merge_write")
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
        path = os.path.join(self._dir, rel)
        sha = write_records(path, records())
        job_progress.add(job_progress.EXAMPLES_WRITTEN, count % LOG_EVERY)
        job_progress.add(job_progress.SHARDS_WRITTEN)
        yield {"split": split, "shard": shard, "path": rel, "num_examples": count, "sha256": sha,
               "bytes": _file_size(path)}
        yield clock.stop(count)


class MergeShards(beam.PTransform):
    """Run-file dicts -> {"shards": one manifest dict per written shard, TIMINGS_TAG: StageTime
    dicts} (only file names are grouped)."""

    def __init__(self, version_dir: str, num_shards: int, spill_dir: str):
        super().__init__()
        self._fn = _MergeShard(version_dir, num_shards, spill_dir)

    def expand(self, runs):
        out = (
            runs
            | "KeyByShard" >> beam.Map(lambda r: ((r["split"], r["shard"]), r["run"]))
            | "GroupByShard" >> beam.GroupByKey()
            | "Merge" >> beam.ParDo(self._fn)
        )
        return {"shards": out | "ShardsOnly" >> beam.Filter(_is_run),
                TIMINGS_TAG: out | "TimingsOnly" >> beam.FlatMap(_timing_of)}


def _write_records_remotely(path: str, records: Iterable[bytes], compression: str) -> str:
    """`write_records` for a URL: written locally (TensorFlow's record writer needs a local
    file), then copied up under a temporary name and renamed."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="keras-metamae-shard-") as local_dir:
        local = os.path.join(local_dir, os.path.basename(path))
        digest = write_records(local, records, compression)
        tmp = _temporary_name(path)
        try:
            with open(local, "rb") as source, _open(tmp, "wb") as target:
                shutil.copyfileobj(source, target, 1 << 20)
            _rename_into_place(tmp, path)
        except BaseException:
            _remove_quietly(tmp)
            raise
    return digest


def _tagged(kind: str):
    return lambda item: (kind, item)


def write_manifest(path: str, grouped) -> str:
    """Writes {kind: [items sorted by their JSON]} to `path`, whole or not at all."""
    _, tagged = grouped
    manifest: dict[str, list[Any]] = collections.defaultdict(list)
    for kind, item in tagged:
        manifest[kind].append(item)
    manifest = {kind: sorted(items, key=json.dumps) for kind, items in sorted(manifest.items())}
    tmp = _temporary_name(path)
    with _open(tmp, "wb") as f:
        f.write(json.dumps(manifest).encode())
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
