"""TFRecord shards + spec.json -> tf.data, without knowing which dataset it is.

The trainer only needs a version directory (`find_dataset_dir`) and its `DatasetSpec`:

    version_dir = find_dataset_dir("data/processed", "digits")
    spec = load_spec(version_dir)
    ds = make_dataset(spec, version_dir, "train", batch_size=64, seed=0)
    # {"tokens": float32 [B, T, token_dim] (int64 [B, T] for discrete), "label": ..., "id": string [B]}

Problems are reported before training starts where that is cheap (missing split, missing or
empty shards, too few examples for the batch, a first record that does not match the spec);
corruption deeper inside a shard only shows while iterating, and `explain_data_errors` turns
that TensorFlow error into one naming the broken shard file.
"""

from __future__ import annotations

import contextlib
import glob
import os
from typing import Iterator, Sequence

import tensorflow as tf

from preprocessing.spec import SPEC_FILENAME, DatasetSpec, SpecError, load_spec

# The element shuffle buffer holds about this many bytes of tokens (EuroSAT examples are 213 KB).
_SHUFFLE_BUFFER_BYTES = 256 * 2**20
_MAX_SHUFFLE_BUFFER = 10_000


class DataError(ValueError):
    """Processed data that is missing, incomplete, corrupt or does not match its spec."""


def _preprocess_hint(dataset: str, output_dir: str) -> str:
    return f"python -m pipeline.preprocess --dataset {dataset} --data_dir {output_dir}"


def _version_key(path: str):
    name = os.path.basename(path)
    # Numeric versions compare as numbers ("10" > "9"); ties and names fall back to age.
    return (name.isdigit(), int(name) if name.isdigit() else 0, os.path.getmtime(path))


def find_dataset_dir(output_dir: str, dataset: str) -> str:
    """The newest complete version directory (one holding spec.json) of `dataset`."""
    dataset_dir = os.path.join(output_dir, dataset)
    candidates = []
    if os.path.isdir(dataset_dir):
        for name in os.listdir(dataset_dir):
            path = os.path.join(dataset_dir, name)
            # Dot-directories are the pipeline's unfinished temp builds.
            if not name.startswith(".") and os.path.isfile(os.path.join(path, SPEC_FILENAME)):
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
    files = sorted(glob.glob(pattern))
    if not files:
        raise DataError(f"{pattern}: no shard files for split {split!r}. Re-run "
                        f"`{_preprocess_hint(spec.name, os.path.dirname(os.path.dirname(version_dir)))}`.")
    if len(files) != info.num_shards:
        raise DataError(f"{pattern}: found {len(files)} shard files, spec.json says "
                        f"{info.num_shards}; the version directory is incomplete")
    return files


def feature_spec(spec: DatasetSpec) -> dict[str, tf.io.FixedLenFeature]:
    """tf.io parsing spec of the token contract's tf.train.Example."""
    label_dtype = tf.int64 if spec.label_dtype == "int64" else tf.float32
    if spec.is_segmented:
        features = {
            seg["feature"]: tf.io.FixedLenFeature(
                [int(seg["num_tokens"]) * (int(seg["token_dim"]) if seg["kind"] == "continuous" else 1)],
                tf.int64 if seg["kind"] == "discrete" else tf.float32)
            for seg in spec.segments}
        features["label"] = tf.io.FixedLenFeature(list(spec.label_shape), label_dtype)
        features["id"] = tf.io.FixedLenFeature([], tf.string)
        return features
    return {
        "tokens": tf.io.FixedLenFeature([spec.tokens_feature_length],
                                        tf.int64 if spec.is_discrete else tf.float32),
        "label": tf.io.FixedLenFeature(list(spec.label_shape), label_dtype),
        "id": tf.io.FixedLenFeature([], tf.string),
    }


def parse_batch(serialized: tf.Tensor, spec: DatasetSpec) -> dict[str, tf.Tensor]:
    """A batch of serialized examples -> {"tokens", "label", "id"} with token axes restored."""
    features = tf.io.parse_example(serialized, feature_spec(spec))
    if spec.is_segmented:
        # One packed float32 [B, num_tokens, token_dim] tensor (see preprocessing/spec.py), so
        # the trainer, evaluator and exporter read `tokens` as for any continuous dataset.
        from preprocessing import tokenize

        parts = {seg["name"]: features.pop(seg["feature"]) for seg in spec.segments}
        return {"tokens": tokenize.pack_segments(parts, spec), **features}
    if not spec.is_discrete:
        features["tokens"] = tf.reshape(features["tokens"], [-1, spec.num_tokens, spec.token_dim])
    return features


def _check_record(record: bytes, spec: DatasetSpec, path: str) -> None:
    """Compares one example's feature lengths with the spec; DataError naming `path` if not."""
    example = tf.train.Example.FromString(record)
    feature = example.features.feature
    token_keys = [seg["feature"] for seg in spec.segments] if spec.is_segmented else ["tokens"]
    for key in (*token_keys, "label", "id"):
        if key not in feature:
            raise DataError(f"{path}: example has no {key!r} feature (has {sorted(feature)})")
    if spec.is_segmented:
        for seg in spec.segments:
            kind = "int64_list" if seg["kind"] == "discrete" else "float_list"
            values = getattr(feature[seg["feature"]], kind).value
            expected = int(seg["num_tokens"]) * (int(seg["token_dim"]) if seg["kind"] == "continuous" else 1)
            if len(values) != expected:
                raise DataError(
                    f"{path}: {seg['feature']!r} (segment {seg['name']!r}) has {len(values)} "
                    f"{kind} values, spec.json expects {expected}; spec and shards come from "
                    f"different pipeline runs")
    else:
        _check_tokens(feature, spec, path)
    _check_label(feature, spec, path)


def _check_tokens(feature, spec: DatasetSpec, path: str) -> None:
    kind = "int64_list" if spec.is_discrete else "float_list"
    tokens = getattr(feature["tokens"], kind).value
    if len(tokens) != spec.tokens_feature_length:
        raise DataError(
            f"{path}: 'tokens' has {len(tokens)} {kind} values, spec.json expects "
            f"{spec.tokens_feature_length} (num_tokens={spec.num_tokens}, token_dim={spec.token_dim}); "
            f"spec and shards come from different pipeline runs"
        )


def _check_label(feature, spec: DatasetSpec, path: str) -> None:
    label_kind = "int64_list" if spec.label_dtype == "int64" else "float_list"
    label = getattr(feature["label"], label_kind).value
    expected = 1
    for d in spec.label_shape:
        expected *= int(d)
    if len(label) != expected:
        raise DataError(f"{path}: 'label' has {len(label)} {label_kind} values, spec.json "
                        f"expects shape {spec.label_shape}")


def _check_first_records(files: list[str], spec: DatasetSpec) -> None:
    """Opens every shard and checks its first record: cheap, and catches the common failures
    (wrong spec, non-GZIP or truncated-at-the-start files) before training starts."""
    for path in files:
        try:
            for record in tf.data.TFRecordDataset(path, compression_type="GZIP").take(1):
                _check_record(record.numpy(), spec, path)
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
            raise DataError(f"{path}: unreadable shard ({e.message.splitlines()[0]})") from None


def find_corrupt_shards(spec: DatasetSpec, files: list[str]) -> list[tuple[str, str]]:
    """Reads every record of every file; returns (path, problem) for each broken one."""
    broken = []
    for path in files:
        try:
            first = True
            for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
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
    Shuffling is seeded, so the same `seed` gives the same batches; `skip_batches` skips the
    batches a resumed run has already consumed.

    Mixing: the pipeline stores each shard in a seeded, label-independent order, and this
    reader shuffles the shard files each epoch, interleaves all of them one record at a time
    and shuffles again in a buffer of up to `_MAX_SHUFFLE_BUFFER` examples, so a batch's class
    mix looks like uniform sampling whatever order the raw data came in.
    """
    if spec is None:
        spec = load_spec(version_dir)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected at least 1")
    splits = [split] if isinstance(split, str) else list(split)
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
    if set(splits) & set(spec.windowed_splits):  # series to draw windows from (spec.windows)
        from keras_metamae import windows

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
        num_examples = max(1, num_examples // n)  # about this pipeline's share
        per_pipeline_batch = input_context.get_per_replica_batch_size(batch_size)

    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type="GZIP"),
        # Every shard open at once, one record from each in turn: a batch draws on all of them.
        cycle_length=len(files),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,  # same seed -> same batches, needed for exact resumption
    )
    if shuffle:
        ds = ds.shuffle(shuffle_buffer_size(spec, num_examples, per_pipeline_batch),
                        seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(per_pipeline_batch, drop_remainder=drop_remainder)
    ds = ds.map(lambda serialized: parse_batch(serialized, spec), num_parallel_calls=tf.data.AUTOTUNE)
    if skip_batches:
        ds = ds.skip(skip_batches)
    return ds.prefetch(tf.data.AUTOTUNE)


def shuffle_buffer_size(spec: DatasetSpec, num_examples: int, batch_size: int) -> int:
    """Examples held by the element shuffle: the whole split when it is small, else as many as
    `_SHUFFLE_BUFFER_BYTES` of serialized tokens allow, at most `_MAX_SHUFFLE_BUFFER`."""
    bytes_per_example = max(1, spec.tokens_feature_length * 4)
    return int(min(num_examples, _MAX_SHUFFLE_BUFFER,
                   max(batch_size, _SHUFFLE_BUFFER_BYTES // bytes_per_example)))


__all__ = [
    "DataError", "SpecError", "explain_data_errors", "feature_spec", "find_corrupt_shards",
    "find_dataset_dir", "make_dataset", "parse_batch", "shuffle_buffer_size", "split_files",
]
