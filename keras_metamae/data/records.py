"""TFRecord shards + spec.json -> tf.data, without knowing which dataset it is.

The trainer only needs a version directory (`find_dataset_dir`) and its `DatasetSpec`:

    version_dir = find_dataset_dir("data/processed", "digits")
    spec = load_spec(version_dir)
    ds = make_dataset(spec, version_dir, "train", batch_size=64, seed=0)
    # {"tokens": float32 [B, T, token_dim] (int64 [B, T] for discrete), "label": ..., "id": string [B]}

Shards of pipeline version 3 store continuous tokens un-normalized in the raw data's dtype
(`DatasetSpec.storage`, e.g. uint16 EuroSAT bands): the reader decodes each batch and applies
the spec's normalization in one XLA-fused pass (`tokenize.stored_to_tokens`), giving the same
float32 tokens the older versions stored, which it still reads.

Problems are reported before training starts where that is cheap (missing split, missing or
empty shards, too few examples for the batch, a first record that does not match the spec);
corruption deeper inside a shard only shows while iterating, and `explain_data_errors` turns
that TensorFlow error into one naming the broken shard file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import json
import os
from typing import Iterator, Sequence

import tensorflow as tf

from commandline import filesystem
from keras_metamae.data.errors import DataError
from preprocessing.spec import SPEC_FILENAME, DatasetSpec, SpecError, load_spec, segment_spec

# The element shuffle buffer holds about this many bytes of tokens (EuroSAT examples are 106 KB).
_SHUFFLE_BUFFER_BYTES = 256 * 2**20
_MAX_SHUFFLE_BUFFER = 10_000
# Epochs of a repeated stream: unbounded in practice (tf.data ranges need an end).
_NEVER_ENDS = 2**62
# Read-ahead of the open shards together, for remote (`gs://`, ...) and compressed shards
# (tf.data's default, 256 KB per file, is ~2 EuroSAT records), at most 4 MB and at least 256 KB
# per file. Uncompressed local shards are read unbuffered: see `_read_buffer_bytes`.
_READ_BUFFER_BYTES = 64 << 20


def _preprocess_hint(dataset: str, output_dir: str) -> str:
    from preprocessing import registry

    if dataset not in registry.names():  # one's own data, named with --name
        return (f"python -m pipeline.preprocess --dataset custom --format npy|csv|text|"
                f"image_folder|audio_folder --raw_data_dir YOUR_FILES --name {dataset} "
                f"--data_dir {output_dir}")
    return f"python -m pipeline.preprocess --dataset {dataset} --data_dir {output_dir}"


def _version_key(path: str):
    name = os.path.basename(path)
    # Numeric versions compare as numbers ("10" > "9"); ties and names fall back to age.
    if filesystem.is_url(path):  # no folder times on an object store
        return (name.isdigit(), int(name) if name.isdigit() else 0, 0)
    return (name.isdigit(), int(name) if name.isdigit() else 0, os.path.getmtime(path))


def find_dataset_dir(output_dir: str, dataset: str) -> str:
    """The newest complete version directory (one holding spec.json) of `dataset`."""
    dataset_dir = os.path.join(output_dir, dataset)
    candidates = []
    if filesystem.isdir(dataset_dir):
        for name in filesystem.listdir(dataset_dir):
            path = os.path.join(dataset_dir, name)
            # Dot-directories are the pipeline's unfinished temp builds; on an object store
            # spec.json is written last, so a version without it is not (yet) one.
            if not name.startswith(".") and filesystem.isfile(os.path.join(path, SPEC_FILENAME)):
                candidates.append(path)
    if not candidates:
        raise DataError(
            f"no preprocessed version of {dataset!r} in {dataset_dir}, i.e. no folder holding "
            f"{SPEC_FILENAME} (--data_dir {output_dir}): run "
            f"`{_preprocess_hint(dataset, output_dir)}` first, or pass the --data_dir that holds it")
    return max(candidates, key=_version_key)


def split_files(spec: DatasetSpec, version_dir: str, split: str) -> list[str]:
    """The sorted shard files of `split`, checked against the spec's shard count."""
    if split not in spec.splits:
        raise DataError(f"{version_dir}/{SPEC_FILENAME}: no split {split!r}; "
                        f"the spec has {sorted(spec.splits)}")
    info = spec.splits[split]
    pattern = os.path.join(version_dir, info.file_pattern)
    if filesystem.is_url(pattern):  # exactly the shards spec.json names, no listing
        files = [pattern.replace("*", f"{shard:05d}") for shard in range(info.num_shards)
                 if filesystem.exists(pattern.replace("*", f"{shard:05d}"))]
    else:
        files = sorted(glob.glob(pattern))
    if not files:
        raise DataError(f"{pattern}: no shard files for split {split!r}. Re-run "
                        f"`{_preprocess_hint(spec.name, os.path.dirname(os.path.dirname(version_dir)))}`.")
    if len(files) != info.num_shards:
        raise DataError(f"{pattern}: found {len(files)} shard files, spec.json says "
                        f"{info.num_shards}; the version directory is incomplete")
    for path, expected in zip(files, info.shard_bytes):
        _check_size(path, expected, spec, version_dir)
    return files


def _file_size(path: str) -> int:
    return tf.io.gfile.stat(path).length if filesystem.is_url(path) else os.path.getsize(path)


def _check_size(path: str, expected: int, spec: DatasetSpec, version_dir: str) -> None:
    """An uncompressed shard cut at a record boundary reads as a shorter valid file: its size
    (recorded in spec.json) is what tells."""
    size = _file_size(path)
    if size != expected:
        raise DataError(
            f"{path}: {size} bytes, spec.json says {expected}: the shard is truncated or was "
            f"changed after the preprocessing. Re-run "
            f"`{_preprocess_hint(spec.name, os.path.dirname(os.path.dirname(version_dir)))}`.")


def _token_feature(view: DatasetSpec) -> tf.io.FixedLenFeature:
    """Parsing spec of one token feature (`view`: the spec, or a segment's view of it)."""
    if view.is_discrete:
        return tf.io.FixedLenFeature([view.num_tokens], tf.int64)
    if view.stores_raw_tokens:  # one bytes value: the stored values (DatasetSpec.storage)
        return tf.io.FixedLenFeature([], tf.string)
    return tf.io.FixedLenFeature([view.num_tokens * view.token_dim], tf.float32)  # version <= 2


def _token_views(spec: DatasetSpec) -> dict[str, DatasetSpec]:
    """{TFRecord feature: the single-modality spec of the tokens it holds}."""
    if spec.is_segmented:
        return {seg["feature"]: segment_spec(spec, seg) for seg in spec.segments}
    return {"tokens": spec}


def feature_spec(spec: DatasetSpec) -> dict[str, tf.io.FixedLenFeature]:
    """tf.io parsing spec of the token contract's tf.train.Example."""
    label_dtype = tf.int64 if spec.label_dtype == "int64" else tf.float32
    features = {key: _token_feature(view) for key, view in _token_views(spec).items()}
    features["label"] = tf.io.FixedLenFeature(list(spec.label_shape), label_dtype)
    features["id"] = tf.io.FixedLenFeature([], tf.string)
    return features


@functools.lru_cache(maxsize=None)
def _compiled_scale_and_normalize(layout_json: str):
    """`tokenize.scale_and_normalize` for one token layout, compiled by XLA: one fused pass
    (cast, scale, normalize) instead of one pass per op, which makes the reader ~1.3x faster
    on a CPU, with the same floats (the same IEEE operations; the constants are arguments, so
    XLA keeps the divisions). tf.data runs it on the host. Cached per layout, so the datasets
    of a process share one compilation."""
    from preprocessing import tokenize

    layout = DatasetSpec.from_dict(json.loads(layout_json))

    @tf.function(jit_compile=True, reduce_retracing=True)
    def scale_and_normalize(stored, scale, mean, std):
        return tokenize.scale_and_normalize(stored, scale, mean, std, layout)

    @tf.function(jit_compile=True, reduce_retracing=True)
    def scale_only(stored, scale):
        return tokenize.scale_and_normalize(stored, scale, None, None, layout)

    return scale_and_normalize, scale_only


# Plain Python on the spec around one op (autograph would only warn about the helpers' generators).
@tf.autograph.experimental.do_not_convert
def _stored_to_tokens(stored: tf.Tensor, view: DatasetSpec) -> tf.Tensor:
    """`tokenize.stored_to_tokens`, XLA-compiled (see `_compiled_scale_and_normalize`)."""
    from preprocessing import storage

    statistics = storage.per_value_statistics(view)
    if statistics is None and view.storage_scale == 1:  # nothing to compute but the cast
        return tf.reshape(tf.cast(stored, tf.float32), [-1, view.num_tokens, view.token_dim])
    layout = dataclasses.replace(view, name="layout", splits={}, command="", content_hash="",
                                 extra={}, label_names=[], normalization={}).to_json()
    scale_and_normalize, scale_only = _compiled_scale_and_normalize(layout)
    scale = tf.constant(view.storage_scale, tf.float32)
    if statistics is None:
        return scale_only(stored, scale)
    mean, std = statistics
    return scale_and_normalize(stored, scale, tf.constant(mean), tf.constant(std))


def _tokens_of(value: tf.Tensor, view: DatasetSpec) -> tf.Tensor:
    """Parsed token feature -> float32 `[B, num_tokens, token_dim]` (int64 `[B, num_tokens]`
    for discrete tokens)."""
    if view.is_discrete:
        return value
    if not view.stores_raw_tokens:  # version <= 2: already the normalized tokens
        return tf.reshape(value, [-1, view.num_tokens, view.token_dim])
    stored = tf.io.decode_raw(value, tf.as_dtype(view.storage_dtype), little_endian=True)
    stored = tf.ensure_shape(stored, [None, view.num_tokens * view.token_dim])
    return _stored_to_tokens(stored, view)


def parse_batch(serialized: tf.Tensor, spec: DatasetSpec) -> dict[str, tf.Tensor]:
    """A batch of serialized examples -> {"tokens", "label", "id"} with token axes restored
    and, for shards that store raw values, normalized with the spec's statistics."""
    features = tf.io.parse_example(serialized, feature_spec(spec))
    views = _token_views(spec)
    if spec.is_segmented:
        # One packed float32 [B, num_tokens, token_dim] tensor (see preprocessing/spec.py), so
        # the trainer, evaluator and exporter read `tokens` as for any continuous dataset.
        from preprocessing import tokenize

        parts = {seg["name"]: _tokens_of(features.pop(seg["feature"]), views[seg["feature"]])
                 for seg in spec.segments}
        return {"tokens": tokenize.pack_segments(parts, spec), **features}
    features["tokens"] = _tokens_of(features["tokens"], spec)
    return features


def _stored_length(view: DatasetSpec) -> tuple[str, int]:
    """(what a token feature holds, its expected length) as a record check counts it."""
    if view.is_discrete:
        return "int64_list values", view.num_tokens
    if view.stores_raw_tokens:
        itemsize = tf.as_dtype(view.storage_dtype).size
        return f"bytes of {view.storage_dtype}", view.num_tokens * view.token_dim * itemsize
    return "float_list values", view.num_tokens * view.token_dim


def _feature_length(feature, view: DatasetSpec) -> int:
    if view.is_discrete:
        return len(feature.int64_list.value)
    if view.stores_raw_tokens:
        values = feature.bytes_list.value
        return len(values[0]) if len(values) == 1 else -1
    return len(feature.float_list.value)


def _check_record(record: bytes, spec: DatasetSpec, path: str) -> None:
    """Compares one example's feature lengths with the spec; DataError naming `path` if not."""
    example = tf.train.Example.FromString(record)
    feature = example.features.feature
    views = _token_views(spec)
    for key in (*views, "label", "id"):
        if key not in feature:
            raise DataError(f"{path}: example has no {key!r} feature (has {sorted(feature)})")
    for key, view in views.items():
        kind, expected = _stored_length(view)
        got = _feature_length(feature[key], view)
        if got != expected:
            shape = (f"num_tokens={view.num_tokens}" if view.is_discrete else
                     f"num_tokens={view.num_tokens}, token_dim={view.token_dim}")
            raise DataError(
                f"{path}: {key!r} has {got} {kind}, spec.json expects {expected} ({shape}); "
                f"spec and shards come from different pipeline runs")
    _check_label(feature, spec, path)


def _check_label(feature, spec: DatasetSpec, path: str) -> None:
    label_kind = "int64_list" if spec.label_dtype == "int64" else "float_list"
    label = getattr(feature["label"], label_kind).value
    expected = 1
    for d in spec.label_shape:
        expected *= int(d)
    if len(label) != expected:
        raise DataError(f"{path}: 'label' has {len(label)} {label_kind} values, spec.json "
                        f"expects shape {spec.label_shape}")


def shards(files: Sequence[str] | tf.Tensor, spec: DatasetSpec, **kwargs) -> tf.data.TFRecordDataset:
    """The records of shard files, read with the compression the spec's version wrote."""
    return tf.data.TFRecordDataset(files, compression_type=spec.shard_compression, **kwargs)


def _check_first_records(files: list[str], spec: DatasetSpec) -> None:
    """Opens every shard and checks its first record: cheap, and catches the common failures
    (wrong spec, files that are not shards, truncated-at-the-start files) before training
    starts."""
    for path in files:
        try:
            for record in shards(path, spec).take(1):
                _check_record(record.numpy(), spec, path)
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
            raise DataError(f"{path}: unreadable shard ({e.message.splitlines()[0]})") from None


def _recorded_size(spec: DatasetSpec, path: str) -> int | None:
    """The size spec.json records for the shard at `path` (`<split>/data-SSSSS-of-NNNNN...`)."""
    info = spec.splits.get(os.path.basename(os.path.dirname(path)))
    name = os.path.basename(path).split("-")
    if info is None or not info.shard_bytes or len(name) < 2 or not name[1].isdigit():
        return None
    index = int(name[1])
    return info.shard_bytes[index] if index < len(info.shard_bytes) else None


def find_corrupt_shards(spec: DatasetSpec, files: list[str]) -> list[tuple[str, str]]:
    """Reads every record of every file; returns (path, problem) for each broken one."""
    broken = []
    for path in files:
        expected = _recorded_size(spec, path)
        if expected is not None and _file_size(path) != expected:
            broken.append((path, f"{_file_size(path)} bytes, spec.json says {expected} "
                                 f"(truncated or changed)"))
            continue
        try:
            first = True
            for record in shards(path, spec):
                if first:
                    _check_record(record.numpy(), spec, path)
                    first = False
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
            broken.append((path, e.message.splitlines()[0]))
        except DataError as e:
            broken.append((path, str(e)))
    return broken


@contextlib.contextmanager
def explain_data_errors(spec: DatasetSpec, version_dir: str, split: str | Sequence[str]) -> Iterator[None]:
    """Re-raises tf.data read/parse errors as DataError naming the broken shard(s).

        with explain_data_errors(spec, version_dir, "train"):
            model.fit(make_dataset(spec, version_dir, "train", 64), ...)
    """
    try:
        yield
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
        names = [split] if isinstance(split, str) else list(split)
        broken = find_corrupt_shards(spec, [f for name in names
                                            for f in split_files(spec, version_dir, name)])
        if not broken:
            raise
        listed = "\n".join(f"  {path}: {problem}" for path, problem in broken)
        raise DataError(f"corrupt or mismatched shards in split {split!r} of {version_dir} "
                        f"(re-run the preprocessing):\n{listed}") from e


def _split_contents(spec: DatasetSpec, version_dir: str, splits: list[str], batch_size: int,
                    drop_remainder: bool) -> tuple[list[str], int]:
    """(shard files, examples) of the splits read as one; ValueError/DataError when they
    cannot yield a batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected at least 1")
    if not splits:
        raise ValueError("make_dataset: no split given")
    split_label = "+".join(splits)
    files = [path for name in splits for path in split_files(spec, version_dir, name)]
    num_examples = sum(spec.splits[name].num_examples for name in splits)
    if num_examples == 0:
        raise DataError(f"{version_dir}: split {split_label!r} has no examples (spec.json num_examples=0)")
    if drop_remainder and num_examples < batch_size:
        raise DataError(
            f"{version_dir}: split {split_label!r} has {num_examples} examples, fewer than "
            f"batch_size={batch_size} with drop_remainder=True, so it would yield no batch; "
            f"lower the batch size"
        )
    return files, num_examples


def make_dataset(
    spec: DatasetSpec | None,
    version_dir: str,
    split: str | Sequence[str],
    batch_size: int,
    *,
    shuffle: bool = True,
    repeat: bool = True,
    seed: int = 0,
    drop_remainder: bool = True,
    input_context: tf.distribute.InputContext | None = None,
    skip_batches: int = 0,
) -> tf.data.Dataset:
    """Batches of {"tokens", "label", "id"} from one split (or several, read as one) of a
    preprocessed version.

    `batch_size` is the global batch size; with an `input_context` (from
    `strategy.distribute_datasets_from_function`) each input pipeline reads its share of the
    shard files and batches `input_context.get_per_replica_batch_size(batch_size)`.
    Shuffling is seeded (epoch e of a repeated stream with `seed + e`), so the same `seed`
    gives the same batches; `skip_batches` skips the batches a resumed run has already
    consumed, and the stream then goes on exactly as it would have.

    Mixing: the pipeline stores each shard in a seeded, label-independent order, and this
    reader shuffles the shard files each epoch, interleaves all of them one record at a time
    and permutes blocks of up to `_MAX_SHUFFLE_BUFFER` examples (the whole split when it is
    small), so a batch's class mix looks like uniform sampling whatever order the raw data
    came in.
    """
    if spec is None:
        spec = load_spec(version_dir)
    splits = [split] if isinstance(split, str) else list(split)
    files, num_examples = _split_contents(spec, version_dir, splits, batch_size, drop_remainder)
    split_label = "+".join(splits)
    if set(splits) & set(spec.windowed_splits):  # series to draw windows from (spec.windows)
        from keras_metamae.data import windows

        return windows.make_window_dataset(
            spec, version_dir, splits, files, batch_size, repeat=repeat, seed=seed,
            drop_remainder=drop_remainder, input_context=input_context, skip_batches=skip_batches)
    _check_first_records(files, spec)

    per_pipeline_batch = batch_size
    if input_context is not None:
        n, index = input_context.num_input_pipelines, input_context.input_pipeline_id
        if n > len(files):
            raise DataError(f"{version_dir}: split {split_label!r} has {len(files)} shard files, fewer than "
                            f"the {n} input pipelines; re-run the preprocessing with --num_shards >= {n}")
        files = files[index::n]
        # About this pipeline's share (shards differ by a few records): a resumed multi-worker
        # run restarts within a few records of where it stopped.
        num_examples = max(1, num_examples // n)
        per_pipeline_batch = input_context.get_per_replica_batch_size(batch_size)

    read_buffer = _read_buffer_bytes(files, spec)
    buffer = shuffle_buffer_size(spec, num_examples, per_pipeline_batch) if shuffle else 0

    def one_epoch(epoch_seed):
        return _epoch_records(files, spec, read_buffer, buffer, epoch_seed)

    if repeat:
        # Epoch e is shuffled with seed + e and the stream is cut into batches across epoch
        # ends, so the position after n batches is (epoch, example) and a resumed run rebuilds
        # exactly the stream it left (`skip_batches`), whatever epoch it stopped in.
        first_epoch, offset = divmod(skip_batches * per_pipeline_batch, num_examples)
        ds = tf.data.Dataset.range(first_epoch, _NEVER_ENDS).flat_map(
            lambda epoch: one_epoch(tf.cast(seed, tf.int64) + epoch))
        ds = ds.skip(offset).batch(per_pipeline_batch, drop_remainder=drop_remainder)
    else:
        ds = one_epoch(tf.constant(seed, tf.int64)).batch(per_pipeline_batch,
                                                          drop_remainder=drop_remainder)
        if skip_batches:  # before parsing: skipped batches are never decoded
            ds = ds.skip(skip_batches)
    ds = ds.map(lambda serialized: parse_batch(serialized, spec), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _epoch_records(files: list[str], spec: DatasetSpec, read_buffer: int, shuffle_buffer: int,
                   seed) -> tf.data.Dataset:
    """One pass over `files` as serialized records. With a `shuffle_buffer`: the files in a
    random order, interleaved one record at a time, then permuted in consecutive blocks of
    `shuffle_buffer` records. Stateless draws seeded by (`seed`, block), so `seed` may be a
    tensor (the epoch's) and an epoch's order depends on nothing but its seed."""
    seed = tf.cast(seed, tf.int64)
    paths = tf.constant(files)
    if shuffle_buffer:
        order = tf.argsort(tf.random.stateless_uniform([len(files)], tf.stack([seed, -1])))
        paths = tf.gather(paths, order)
    ds = tf.data.Dataset.from_tensor_slices(paths).interleave(
        lambda path: shards(path, spec, buffer_size=read_buffer),
        # Every shard open at once, one record from each in turn: a block draws on all of them.
        cycle_length=len(files),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,  # same seed -> same batches, needed for exact resumption
    )
    if not shuffle_buffer:
        return ds

    def permute(block_index, block):
        keys = tf.random.stateless_uniform(tf.shape(block), tf.stack([seed, block_index]))
        return tf.gather(block, tf.argsort(keys))

    return ds.batch(shuffle_buffer).enumerate().map(permute).unbatch()


def _read_buffer_bytes(files: list[str], spec: DatasetSpec) -> int:
    """`TFRecordDataset(buffer_size=...)` per shard. 0 (unbuffered) for uncompressed local
    files: the kernel's page cache already reads ahead, and a user-space buffer would copy
    every record once more (unbuffered, the EuroSAT reader reads a median 25% more examples
    per CPU-second: BENCHMARKS.md).
    Remote files keep a read-ahead (a few large requests instead of three per record), and
    compressed ones their decompressor's input buffer."""
    if not spec.shard_compression and not any("://" in path for path in files):
        return 0
    return min(4 << 20, max(256 << 10, _READ_BUFFER_BYTES // len(files)))


def shuffle_buffer_size(spec: DatasetSpec, num_examples: int, batch_size: int) -> int:
    """Examples held by the element shuffle: the whole split when it is small, else as many as
    `_SHUFFLE_BUFFER_BYTES` of serialized tokens allow, at most `_MAX_SHUFFLE_BUFFER`."""
    bytes_per_example = 0
    for view in _token_views(spec).values():
        if view.is_discrete or not view.stores_raw_tokens:  # 4 bytes per value, as an estimate
            bytes_per_example += 4 * view.num_tokens * max(1, view.token_dim)
        else:
            bytes_per_example += _stored_length(view)[1]
    return int(min(num_examples, _MAX_SHUFFLE_BUFFER,
                   max(batch_size, _SHUFFLE_BUFFER_BYTES // bytes_per_example)))


__all__ = [
    "DataError", "SpecError", "explain_data_errors", "feature_spec", "find_corrupt_shards",
    "find_dataset_dir", "make_dataset", "parse_batch", "shards", "shuffle_buffer_size",
    "split_files",
]
