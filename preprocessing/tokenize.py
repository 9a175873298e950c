"""Tokenizers as TensorFlow ops: raw example batch <-> token sequences.

Written once and used in three places so they can never disagree (the TFX lesson):
the Beam job (eagerly, on NumPy batches), the trainer's reconstruction images, and the exported
serving signature (inside a `tf.function`). Everything here is pure TensorFlow on tensors whose
leading axis is the batch.

Token layouts (all channels-last, see `preprocessing/spec.py`):
- `patch2d`:  images `[B, H, W, C]` -> `[B, (H/ph)*(W/pw), ph*pw*C]`; tokens follow the patch
  grid row-major, and each token is its patch flattened in `(row, col, channel)` order.
- `patch1d`:  sequences `[B, T, C]` -> `[B, T/p, p*C]`; each token is `p` consecutive steps
  flattened in `(step, channel)` order.
- `tabular`:  rows `[B, F]` -> `[B, F, 1]`, one token per feature.
- `discrete`: token ids `[B, L]` -> `[B, L]` int64, unchanged.
- `column_vocab`: categorical csv cells, strings `[B, F]` -> int64 ids `[B, F]` by one
  vocabulary per column (`column_vocab_to_tokens`; a segment beside the numeric columns, or
  the whole spec); the serving graph takes the raw strings too, and NaN for an empty
  numeric cell (`complete_table_rows` fills in the train mean and the `<column>:missing`
  companion cell the pipeline wrote for it).
- `wordpiece`: strings `[B]` (or pairs `[B, 2]`) -> BERT WordPiece ids `[B, num_tokens]` int64
  with the vocabulary in `spec.extra["vocabulary"]` (`preprocessing/wordpiece.py`); used as a
  segment (the mscoco captions), so raw caption strings are tokenized in the serving graph too.
- `segments`: a dict of raw batches, one per segment of `spec.segments` (e.g. `{"image":
  [B, 32, 32, 3], "text": [B, L]}`) -> a dict of token batches by segment name
  (`raw_to_segment_tokens`), which `pack_segments` packs into the one float32
  `[B, num_tokens, token_dim]` tensor the model reads (see `preprocessing/spec.py`).

Normalization `(x - mean) / std` is per channel, i.e. broadcast along the last raw axis
(the feature axis for tabular rows), and happens before tokenization.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import tensorflow as tf

from preprocessing.spec import DatasetSpec


def _normalization_of(spec_or_normalization: DatasetSpec | Mapping[str, Any] | None):
    if spec_or_normalization is None:
        return {}
    if isinstance(spec_or_normalization, DatasetSpec):
        return spec_or_normalization.normalization or {}
    return spec_or_normalization


def _mean_std(spec_or_normalization, dtype=tf.float32):
    norm = _normalization_of(spec_or_normalization)
    if not norm or "mean" not in norm or "std" not in norm:
        return None, None
    mean = tf.constant(norm["mean"], dtype)
    std = tf.constant(norm["std"], dtype)
    return mean, std


def normalize(x, spec_or_normalization: DatasetSpec | Mapping[str, Any] | None) -> tf.Tensor:
    """`(x - mean) / std` per channel (last axis), as float32; identity when no statistics."""
    x = tf.cast(tf.convert_to_tensor(x), tf.float32)
    mean, std = _mean_std(spec_or_normalization)
    if mean is None:
        return x
    return (x - mean) / std


def denormalize(x, spec_or_normalization: DatasetSpec | Mapping[str, Any] | None) -> tf.Tensor:
    """Inverse of `normalize`: `x * std + mean` per channel (last axis)."""
    x = tf.cast(tf.convert_to_tensor(x), tf.float32)
    mean, std = _mean_std(spec_or_normalization)
    if mean is None:
        return x
    return x * std + mean


def _dim(x: tf.Tensor, axis: int):
    """The static size of `axis` when known (keeps shapes inferable), else a dynamic scalar."""
    static = x.shape[axis]
    return static if static is not None else tf.shape(x)[axis]


def _check_divisible(size, patch: int, what: str):
    if isinstance(size, int) and size % patch:
        raise ValueError(f"{what}={size} is not divisible by the patch size {patch}")


def patchify_2d(images, patch_shape: Sequence[int]) -> tf.Tensor:
    """`[B, H, W, C]` -> `[B, (H/ph)*(W/pw), ph*pw*C]` (row-major patch grid)."""
    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4:
        raise ValueError(f"patchify_2d expects [B, H, W, C], got shape {images.shape}")
    ph, pw = (int(p) for p in patch_shape)
    b, h, w, c = (_dim(images, i) for i in range(4))
    _check_divisible(h, ph, "image height")
    _check_divisible(w, pw, "image width")
    rows, cols = h // ph, w // pw
    x = tf.reshape(images, [b, rows, ph, cols, pw, c])
    x = tf.transpose(x, [0, 1, 3, 2, 4, 5])  # [B, rows, cols, ph, pw, C]
    return tf.reshape(x, [b, rows * cols, ph * pw * c])


def unpatchify_2d(tokens, patch_shape: Sequence[int], image_shape: Sequence[int]) -> tf.Tensor:
    """Inverse of `patchify_2d`: `[B, T, ph*pw*C]` -> `[B, H, W, C]` with `image_shape=[H, W, C]`."""
    tokens = tf.convert_to_tensor(tokens)
    if tokens.shape.rank != 3:
        raise ValueError(f"unpatchify_2d expects [B, T, D], got shape {tokens.shape}")
    ph, pw = (int(p) for p in patch_shape)
    h, w, c = (int(s) for s in image_shape)
    rows, cols = h // ph, w // pw
    b = _dim(tokens, 0)
    x = tf.reshape(tokens, [b, rows, cols, ph, pw, c])
    x = tf.transpose(x, [0, 1, 3, 2, 4, 5])  # [B, rows, ph, cols, pw, C]
    return tf.reshape(x, [b, h, w, c])


def patchify_1d(sequences, patch_size: int | Sequence[int]) -> tf.Tensor:
    """`[B, T, C]` -> `[B, T/p, p*C]` (consecutive steps per token)."""
    sequences = tf.convert_to_tensor(sequences)
    if sequences.shape.rank != 3:
        raise ValueError(f"patchify_1d expects [B, T, C], got shape {sequences.shape}")
    p = int(patch_size[0] if isinstance(patch_size, (list, tuple)) else patch_size)
    b, t, c = (_dim(sequences, i) for i in range(3))
    _check_divisible(t, p, "sequence length")
    # Row-major memory order already is (step, channel) within each run of p steps.
    return tf.reshape(sequences, [b, t // p, p * c])


def unpatchify_1d(tokens, patch_size: int | Sequence[int], sequence_shape: Sequence[int]) -> tf.Tensor:
    """Inverse of `patchify_1d`: `[B, T/p, p*C]` -> `[B, T, C]` with `sequence_shape=[T, C]`."""
    tokens = tf.convert_to_tensor(tokens)
    t, c = (int(s) for s in sequence_shape)
    return tf.reshape(tokens, [_dim(tokens, 0), t, c])


def tabular_to_tokens(rows) -> tf.Tensor:
    """`[B, F]` -> `[B, F, 1]`: one token per feature."""
    rows = tf.convert_to_tensor(rows)
    if rows.shape.rank != 2:
        raise ValueError(f"tabular tokens expect rows [B, F], got shape {rows.shape}")
    return rows[..., tf.newaxis]


def tokens_to_tabular(tokens) -> tf.Tensor:
    """Inverse of `tabular_to_tokens`: `[B, F, 1]` -> `[B, F]`."""
    return tf.squeeze(tf.convert_to_tensor(tokens), axis=-1)


def discrete_to_tokens(ids) -> tf.Tensor:
    """Discrete sequences are already tokens: `[B, L]` ids as int64."""
    ids = tf.convert_to_tensor(ids)
    if ids.shape.rank != 2:
        raise ValueError(f"discrete tokens expect ids [B, L], got shape {ids.shape}")
    if ids.dtype.is_floating:
        ids = tf.round(ids)
    return tf.cast(ids, tf.int64)


def wordpiece_to_tokens(texts, spec: DatasetSpec) -> tf.Tensor:
    """Strings `[B]` / pairs `[B, 2]` -> int64 WordPiece ids `[B, num_tokens]`."""
    from preprocessing import wordpiece

    vocabulary = (spec.extra or {}).get("vocabulary")
    if not vocabulary:
        raise ValueError(f"{spec.name}: a wordpiece segment needs spec.extra['vocabulary'] "
                         f"(the reader's --reader_option vocab_file)")
    return wordpiece.encode(texts, vocabulary, int(spec.num_tokens))


def column_vocab_to_tokens(values, spec: DatasetSpec) -> tf.Tensor:
    """Categorical columns, strings `[B, F]` -> int64 ids `[B, F]` by the vocabularies in
    `spec.extra["categorical"]` (one `{"name", "values"}` per column): per column, `offset + 0`
    for an empty cell (missing), `offset + 1` for a value not in its vocabulary, `offset + 2 + i`
    for its i-th value; each column's offset is the id count of the columns before it. Plain
    comparisons against constants: no lookup table, so the serving graph needs no resource."""
    columns = (spec.extra or {}).get("categorical") or []
    values = tf.strings.strip(tf.convert_to_tensor(values, tf.string))
    ids, offset = [], 0
    for i, column in enumerate(columns):
        cell = values[:, i]
        local = tf.ones_like(cell, tf.int64)  # out of vocabulary
        if column["values"]:
            hits = tf.equal(cell[:, None], tf.constant(column["values"], tf.string)[None, :])
            position = tf.argmax(tf.cast(hits, tf.int32), axis=1, output_type=tf.int64)
            local = tf.where(tf.reduce_any(hits, axis=1), position + 2, local)
        local = tf.where(tf.equal(cell, ""), tf.zeros_like(local), local)
        ids.append(local + offset)
        offset += 2 + len(column["values"])
    return tf.stack(ids, axis=1)


def missing_numeric(spec: DatasetSpec) -> list[dict[str, Any]]:
    """A csv table's numeric columns with empty cells (`spec.extra["missing_numeric"]`, one
    `{"name", "index", "mean", "companion"}` each, in companion order); [] for other specs."""
    return list((spec.extra or {}).get("missing_numeric") or [])


def complete_table_rows(raw: Mapping[str, Any], spec: DatasetSpec) -> dict[str, tf.Tensor]:
    """A csv table's rows as a user has them -> the raw batch the pipeline tokenized
    (preprocessing/datasets/_custom_table.py): NaN in a numeric column of `missing_numeric`
    becomes that column's train-split mean, and per such column a companion cell (`no`, or
    `yes` where it was NaN) is appended to the categorical cells, which are the csv's own
    categorical columns (no input at all when it has none). Other specs: `raw` unchanged."""
    imputed = missing_numeric(spec)
    if not imputed:
        return dict(raw)
    (numeric,) = [s for s in spec.segments if s["kind"] == "continuous"]
    (categorical,) = [s["name"] for s in spec.segments if s.get("tokenizer") == "column_vocab"]
    means = [0.0] * int(numeric["input_shape"][0])
    imputable = [False] * len(means)
    for column in imputed:
        means[column["index"]], imputable[column["index"]] = column["mean"], True
    x = tf.cast(tf.convert_to_tensor(raw[numeric["name"]]), tf.float32)
    empty = tf.logical_and(tf.math.is_nan(x), tf.constant(imputable)[tf.newaxis, :])
    vocab = {c["name"]: c["values"] for c in spec.extra["categorical"]}
    no, yes = vocab[imputed[0]["companion"]]  # every companion's vocabulary
    companions = tf.where(tf.gather(empty, [c["index"] for c in imputed], axis=1), yes, no)
    cells = [tf.convert_to_tensor(raw[categorical], tf.string)] if categorical in raw else []
    out = dict(raw)
    out[numeric["name"]] = tf.where(empty, tf.constant(means)[tf.newaxis, :], x)
    out[categorical] = tf.concat(cells + [companions], axis=1)
    return out


def _check_batch_shape(x: tf.Tensor, spec: DatasetSpec):
    expected = [int(s) for s in spec.input_shape]
    if x.shape.rank is None:
        return
    if x.shape.rank != len(expected) + 1:
        raise ValueError(
            f"{spec.name}: raw_to_tokens expects a batch of shape [B, {', '.join(map(str, expected))}], "
            f"got shape {x.shape}"
        )
    for got, want in zip(x.shape[1:], expected):
        if got is not None and got != want:
            raise ValueError(
                f"{spec.name}: raw batch has shape {x.shape}, expected [B, "
                f"{', '.join(map(str, expected))}] (spec.input_shape)"
            )


def _segment_spec(spec: DatasetSpec, segment: Mapping[str, Any]) -> DatasetSpec:
    from preprocessing.spec import segment_spec

    return segment_spec(spec, dict(segment))


def raw_to_segment_tokens(raw: Mapping[str, Any], spec: DatasetSpec) -> dict[str, tf.Tensor]:
    """Segmented specs: `{segment name: raw batch}` -> `{segment name: tokens}` (continuous
    float32 `[B, n, token_dim]` normalized with the spec's statistics, discrete int64 `[B, n]`).
    Discrete ids outside `[0, vocab_size)` raise (InvalidArgumentError in graph mode)."""
    if not spec.is_segmented:
        raise ValueError(f"{spec.name}: raw_to_segment_tokens needs a spec with segments")
    missing = [s["name"] for s in spec.segments if s["name"] not in raw]
    if missing:
        raise ValueError(f"{spec.name}: raw batch lacks segments {missing} (has {sorted(raw)})")
    out = {}
    for segment in spec.segments:
        tokens = raw_to_tokens(raw[segment["name"]], _segment_spec(spec, segment))
        if segment["kind"] == "discrete":
            vocab = int(segment["vocab_size"])
            check = tf.debugging.assert_less(
                tokens, tf.constant(vocab, tf.int64),
                message=f"{spec.name}: {segment['name']} ids must be < vocab_size={vocab}")
            check2 = tf.debugging.assert_non_negative(
                tokens, message=f"{spec.name}: {segment['name']} ids must be >= 0")
            with tf.control_dependencies([check, check2]):
                tokens = tf.identity(tokens)
        out[segment["name"]] = tokens
    return out


def pack_segments(parts: Mapping[str, Any], spec: DatasetSpec) -> tf.Tensor:
    """`{segment name: tokens}` -> the packed float32 `[B, num_tokens, token_dim]` tensor.

    Continuous segment rows hold their values zero-padded to `token_dim` (the packed width);
    discrete segment rows hold the id in column 0, zeros elsewhere."""
    width = int(spec.token_dim)
    rows = []
    for segment in spec.segments:
        x = tf.convert_to_tensor(parts[segment["name"]])
        n = int(segment["num_tokens"])
        if segment["kind"] == "discrete":
            x = tf.cast(tf.reshape(x, [-1, n]), tf.float32)[..., tf.newaxis]
            dim = 1
        else:
            dim = int(segment["token_dim"])
            x = tf.reshape(tf.cast(x, tf.float32), [-1, n, dim])
        if dim < width:
            x = tf.pad(x, [[0, 0], [0, 0], [0, width - dim]])
        rows.append(x)
    return tf.ensure_shape(tf.concat(rows, axis=1), [None, spec.num_tokens, width])


def unpack_segments(tokens, spec: DatasetSpec) -> dict[str, tf.Tensor]:
    """Inverse of `pack_segments`: continuous float32 `[B, n, token_dim]`, discrete int64 `[B, n]`."""
    tokens = tf.convert_to_tensor(tokens)
    out, start = {}, 0
    for segment in spec.segments:
        n = int(segment["num_tokens"])
        part = tokens[:, start:start + n, :]
        if segment["kind"] == "discrete":
            out[segment["name"]] = tf.cast(tf.round(part[..., 0]), tf.int64)
        else:
            out[segment["name"]] = part[..., :int(segment["token_dim"])]
        start += n
    return out


def stored_to_tokens(stored, spec: DatasetSpec) -> tf.Tensor:
    """The stored values of continuous tokens (`[B, num_tokens * token_dim]` or `[B,
    num_tokens, token_dim]` in `spec.storage` dtype, token order; see preprocessing/spec.py)
    -> the float32 tokens `[B, num_tokens, token_dim]` that `raw_to_tokens` gives for the same
    raw values: the same float32 operations, `(float32(stored) / scale - mean) / std` per
    channel, so the result is identical."""
    from preprocessing import storage

    scale = tf.constant(spec.storage_scale, tf.float32)
    statistics = storage.per_value_statistics(spec)
    if statistics is None:
        return scale_and_normalize(stored, scale, None, None, spec)
    mean, std = statistics
    return scale_and_normalize(stored, scale, tf.constant(mean), tf.constant(std), spec)


def scale_and_normalize(stored, scale, mean, std, spec: DatasetSpec) -> tf.Tensor:
    """`stored_to_tokens` with its constants as arguments: `(float32(stored) / scale - mean) /
    std` (`mean`, `std` per stored value `[num_tokens * token_dim]`, or None for the identity).
    Passed as arguments, an XLA compilation of it keeps the divisions (with a constant divisor
    XLA multiplies by its reciprocal, which differs in the last bit)."""
    x = tf.cast(tf.reshape(stored, [-1, spec.num_tokens * spec.token_dim]), tf.float32)
    if spec.storage_scale != 1:
        x = x / scale
    if mean is not None:
        x = (x - mean) / std
    return tf.reshape(x, [-1, spec.num_tokens, spec.token_dim])


def raw_to_tokens(raw, spec: DatasetSpec) -> tf.Tensor:
    """A raw batch `[B, *spec.input_shape]` -> tokens, as the spec prescribes.

    Continuous: normalized float32 `[B, num_tokens, token_dim]`. Discrete: int64 `[B, num_tokens]`.
    Segmented specs: `raw` is a dict of per-segment batches; returns the packed float32
    `[B, num_tokens, token_dim]` tensor (`raw_to_segment_tokens` then `pack_segments`).
    """
    if spec.is_segmented:
        return pack_segments(raw_to_segment_tokens(raw, spec), spec)
    raw = tf.convert_to_tensor(raw)
    _check_batch_shape(raw, spec)
    if spec.tokenizer == "discrete":
        return discrete_to_tokens(raw)
    if spec.tokenizer == "wordpiece":
        return wordpiece_to_tokens(raw, spec)
    if spec.tokenizer == "column_vocab":
        return column_vocab_to_tokens(raw, spec)
    x = normalize(raw, spec)
    if spec.tokenizer == "patch2d":
        tokens = patchify_2d(x, spec.patch_shape)
    elif spec.tokenizer == "patch1d":
        tokens = patchify_1d(x, spec.patch_shape)
    elif spec.tokenizer == "tabular":
        tokens = tabular_to_tokens(x)
    else:
        raise ValueError(f"{spec.name}: unknown tokenizer {spec.tokenizer!r}")
    return tf.ensure_shape(tokens, [None, spec.num_tokens, spec.token_dim])


def tokens_to_raw(tokens, spec: DatasetSpec) -> tf.Tensor:
    """Inverse of `raw_to_tokens` including de-normalization (e.g. for reconstruction images).

    Accepts `[B, num_tokens, token_dim]` or the flat `[B, num_tokens*token_dim]` TFRecord layout.
    Returns float32 `[B, *input_shape]` (int64 `[B, L]` for discrete tokens).
    """
    if spec.is_segmented:
        raise ValueError(f"{spec.name}: a segmented spec has no single raw layout; use "
                         f"unpack_segments (tokens per segment) instead of tokens_to_raw")
    tokens = tf.convert_to_tensor(tokens)
    if spec.tokenizer == "discrete":
        return tf.cast(tokens, tf.int64)
    if tokens.shape.rank == 2:
        tokens = tf.reshape(tokens, [_dim(tokens, 0), spec.num_tokens, spec.token_dim])
    tokens = tf.cast(tokens, tf.float32)
    if spec.tokenizer == "patch2d":
        x = unpatchify_2d(tokens, spec.patch_shape, spec.input_shape)
    elif spec.tokenizer == "patch1d":
        x = unpatchify_1d(tokens, spec.patch_shape, spec.input_shape)
    elif spec.tokenizer == "tabular":
        x = tokens_to_tabular(tokens)
    else:
        raise ValueError(f"{spec.name}: unknown tokenizer {spec.tokenizer!r}")
    return denormalize(x, spec)


def token_layout(spec: DatasetSpec) -> dict[str, Any]:
    """The token geometry a tokenizer implies for `spec.input_shape` and `spec.patch_shape`.

    Readers use it to fill `num_tokens`, `token_dim` and `token_grid` consistently.
    """
    if spec.tokenizer == "segments":
        total = 0
        for segment in spec.segments:
            layout = token_layout(_segment_spec(spec, segment))
            if layout["num_tokens"] != int(segment["num_tokens"]) or \
                    layout["token_grid"] != [int(g) for g in segment["token_grid"]]:
                raise ValueError(f"{spec.name}: segment {segment['name']!r} does not match its "
                                 f"tokenizer's layout {layout}")
            total += layout["num_tokens"]
        return {"num_tokens": total, "token_dim": spec.token_dim, "token_grid": [total]}
    shape = [int(s) for s in spec.input_shape]
    patch = [int(p) for p in spec.patch_shape]
    if spec.tokenizer == "patch2d":
        (h, w, c), (ph, pw) = shape, patch
        if h % ph or w % pw:
            raise ValueError(f"{spec.name}: input {shape} not divisible by patch {patch}")
        return {"num_tokens": (h // ph) * (w // pw), "token_dim": ph * pw * c,
                "token_grid": [h // ph, w // pw]}
    if spec.tokenizer == "patch1d":
        (t, c), (p,) = shape, patch
        if t % p:
            raise ValueError(f"{spec.name}: input {shape} not divisible by patch {patch}")
        return {"num_tokens": t // p, "token_dim": p * c, "token_grid": [t // p]}
    if spec.tokenizer == "tabular":
        (f,) = shape
        return {"num_tokens": f, "token_dim": 1, "token_grid": [f]}
    if spec.tokenizer == "discrete":
        (length,) = shape
        return {"num_tokens": length, "token_dim": 0, "token_grid": [length]}
    if spec.tokenizer == "wordpiece":  # any text length -> the fixed num_tokens ids
        return {"num_tokens": int(spec.num_tokens), "token_dim": 0,
                "token_grid": [int(spec.num_tokens)]}
    raise ValueError(f"{spec.name}: unknown tokenizer {spec.tokenizer!r}")
