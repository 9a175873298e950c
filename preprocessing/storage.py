"""How the preprocessing job stores tokens in its shards (pipeline version 3), in NumPy only.

The Beam workers use this module instead of TensorFlow, so a worker that only reads and
tokenizes never imports TensorFlow (seconds of start-up per worker process), and no example
goes through a per-example TensorFlow call or a `tf.train.Example` object.

- `storage_for` picks `DatasetSpec.storage`: continuous tokens are stored un-normalized, in the
  narrowest dtype that holds the raw values exactly (the reader declares it: uint8 pixels,
  uint16 EuroSAT bands), float32 otherwise; the tf.data reader normalizes them
  (`preprocessing.tokenize.stored_to_tokens`).
- `token_layout` is `tokenize.raw_to_tokens` without the normalization, in NumPy: the stored
  values are already in token order, so reading is a cast, one affine map per value and a
  reshape.
- `stored_tokens` converts a raw batch to the storage dtype and says, per example, whether that
  was exact (an example that is not becomes a bad record instead of silently losing precision).
- `serialize_example` writes the `tf.train.Example` wire format directly (protobuf encoding,
  fields in the order `SerializeToString(deterministic=True)` writes them): building a
  `tf.train.Example` per example cost more than everything else the job does per example.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from preprocessing.spec import STORAGE_DTYPES, DatasetSpec

# Shards are not compressed: inflating GZIP cost more CPU than everything else the tf.data
# reader does per EuroSAT example (and deflating it most of the job's time).
SHARD_COMPRESSION = ""
SHARD_SUFFIX = {"": ".tfrecord", "GZIP": ".tfrecord.gz"}


def storage_for(spec: DatasetSpec, dtype: str = "float32", scale: float = 1.0) -> dict[str, Any]:
    """`spec.storage` for a reader that declares its raw values exact in `dtype` after
    multiplying by `scale` (discrete tokens are always int64 ids)."""
    if spec.is_discrete:
        return {"dtype": "int64", "compression": SHARD_COMPRESSION}
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"{spec.name}: storage dtype {dtype!r}, expected one of {STORAGE_DTYPES}")
    if dtype == "float32" and scale != 1:
        raise ValueError(f"{spec.name}: float32 storage keeps the raw values (scale 1), got {scale}")
    return {"dtype": dtype, "scale": float(scale), "compression": SHARD_COMPRESSION}


# === token layout ===
def token_layout(raw: np.ndarray, spec: DatasetSpec) -> np.ndarray:
    """A raw batch `[B, *input_shape]` -> `[B, num_tokens, token_dim]`, the order of
    `tokenize.raw_to_tokens` (patch grid row-major, each token its patch in (row, col,
    channel) order), values unchanged. Not contiguous for patch2d (a transposed view)."""
    raw = np.asarray(raw)
    expected = tuple(int(s) for s in spec.input_shape)
    if raw.shape[1:] != expected:
        raise ValueError(f"{spec.name}: raw batch has shape {list(raw.shape)}, expected "
                         f"[B, {', '.join(map(str, expected))}] (spec.input_shape)")
    b = raw.shape[0]
    if spec.tokenizer == "patch2d":
        (h, w, c), (ph, pw) = expected, [int(p) for p in spec.patch_shape]
        x = raw.reshape(b, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(b, spec.num_tokens, spec.token_dim)
    if spec.tokenizer in ("patch1d", "tabular"):
        return raw.reshape(b, spec.num_tokens, spec.token_dim)
    raise ValueError(f"{spec.name}: tokenizer {spec.tokenizer!r} has no continuous token layout")


def per_value_statistics(spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, std), float32 `[num_tokens * token_dim]`: the statistic of each stored value's
    channel, in token order; None for the identity normalization (mean 0, std 1)."""
    norm = spec.normalization or {}
    if "mean" not in norm or "std" not in norm:
        return None
    mean, std = np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32)
    if np.all(mean == 0) and np.all(std == 1):
        return None
    shape = [int(s) for s in spec.input_shape]

    def in_token_order(per_channel):  # per channel = along the last raw axis
        image = np.broadcast_to(per_channel, shape)[np.newaxis]
        return np.ascontiguousarray(token_layout(image, spec)).reshape(-1)

    return in_token_order(mean), in_token_order(std)


def stored_tokens(raw: np.ndarray, spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """(stored `[B, num_tokens, token_dim]` C-contiguous in `spec.storage` dtype, exact `[B]`
    bool): `exact[i]` is False when example i's raw values are not all exactly
    `float32(stored) / scale` (NaN, out of range, not integer after scaling)."""
    dtype, scale = spec.storage_dtype, spec.storage_scale
    values = np.asarray(raw)
    if values.dtype == np.dtype(dtype) and scale == 1:  # already the stored values
        return np.ascontiguousarray(token_layout(values, spec)), np.ones(len(values), bool)
    # The values the float path tokenized: float32 (as tokenize.raw_to_tokens casts them).
    values = np.asarray(values, np.float32)
    if dtype == "float32":
        return np.ascontiguousarray(token_layout(values, spec)), np.ones(len(values), bool)
    # A value that is not an integer after scaling, out of range or NaN does not survive the
    # round trip (the cast truncates or wraps it): that is the exactness check.
    with np.errstate(invalid="ignore", over="ignore"):
        integers = np.rint(values * np.float32(scale)) if scale != 1 else values
        stored = integers.astype(dtype)
        back = stored.astype(np.float32)
        if scale != 1:
            back = back / np.float32(scale)
        exact = (back == values).reshape(len(values), -1).all(axis=1)
    return np.ascontiguousarray(token_layout(stored, spec)), exact


# === tf.train.Example wire format ===
def _varint_of(n: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int (or an int64, as two's complement)."""
    n &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL_VARINTS = [_varint_of(n) for n in range(1 << 14)]  # every length below 16 KB


def _varint(n: int) -> bytes:
    return _SMALL_VARINTS[n] if 0 <= n < (1 << 14) else _varint_of(n)


def varint_rows(values: np.ndarray) -> list[bytes]:
    """The packed varints of each row of int64 `values` `[N, L]` (vectorized)."""
    values = np.asarray(values, np.int64)
    rows = values.reshape(len(values), -1)
    if rows.size and rows.min() >= 0 and rows.max() < 0x80:  # one byte per id, the common case
        packed = rows.astype(np.uint8)
        return [row.tobytes() for row in packed]
    unsigned = rows.view(np.uint64)
    groups = np.stack([(unsigned >> np.uint64(7 * k)) & np.uint64(0x7F) for k in range(10)], -1)
    # Bytes per value: 1 + the index of the highest non-zero 7-bit group.
    nonzero = groups != 0
    length = np.where(nonzero.any(-1), 9 - np.argmax(nonzero[..., ::-1], axis=-1), 0) + 1
    position = np.arange(10)
    keep = position < length[..., np.newaxis]
    continues = np.where(position < (length - 1)[..., np.newaxis], 0x80, 0).astype(np.uint8)
    encoded = groups.astype(np.uint8) | continues
    row_bytes = keep.reshape(len(rows), -1).sum(axis=1)
    flat = encoded[keep].tobytes()
    ends = np.cumsum(row_bytes)
    return [flat[end - n:end] for end, n in zip(ends.tolist(), row_bytes.tolist())]


# A feature is (kind, payload): one bytes value, or a packed float32 / int64 (varint) list.
BYTES, FLOATS, INT64S = b"\x0a", b"\x12", b"\x1a"  # the Feature field (tag) of each kind


def bytes_feature(value: bytes) -> tuple[bytes, bytes]:
    return BYTES, value


def float_feature(values: np.ndarray) -> tuple[bytes, bytes]:
    return FLOATS, np.asarray(values, "<f4").reshape(-1).tobytes()


def int64_feature(packed_varints: bytes) -> tuple[bytes, bytes]:
    """A packed `int64_list` (the varints from `varint_rows`)."""
    return INT64S, packed_varints


def id_feature(example_id: str) -> tuple[bytes, bytes]:
    return BYTES, example_id.encode()


_ENTRY_PREFIXES: dict[tuple[str, bytes, int], bytes] = {}


def _entry_prefix(key: str, kind: bytes, size: int) -> bytes:
    """Everything of a `Features.feature` map entry before the payload of its `size` bytes:
    the entry's tag and length, the key, the Feature's length and its list's header."""
    cached = _ENTRY_PREFIXES.get((key, kind, size))
    if cached is not None:
        return cached
    if kind == BYTES:  # BytesList{value: [payload]}
        inner = b"\x0a" + _varint(size)
    else:  # FloatList / Int64List{value: packed payload}; an empty list is an empty message
        inner = b"\x0a" + _varint(size) if size else b""
    feature_header = kind + _varint(len(inner) + size) + inner
    feature_length = len(feature_header) + size
    encoded_key = key.encode()
    key_part = b"\x0a" + _varint(len(encoded_key)) + encoded_key + b"\x12" + _varint(feature_length)
    prefix = b"\x0a" + _varint(len(key_part) + feature_length) + key_part + feature_header
    if len(_ENTRY_PREFIXES) < 100_000:
        _ENTRY_PREFIXES[(key, kind, size)] = prefix
    return prefix


def serialize_example(features: Mapping[str, tuple[bytes, bytes]]) -> bytes:
    """The serialized `tf.train.Example` of `{key: (kind, payload)}`, byte-identical to
    `SerializeToString(deterministic=True)` (map entries sorted by key)."""
    return serialize_examples({key: (kind, [payload]) for key, (kind, payload) in features.items()})[0]


def serialize_examples(columns: Mapping[str, tuple[bytes, Sequence[bytes]]]) -> list[bytes]:
    """The serialized `tf.train.Example`s of a batch, `{key: (kind, [payload per example])}`.
    Each payload is copied once; the bytes around it depend only on the key, the kind and the
    payload's length, so they are computed once per column when the lengths agree (tokens,
    labels) and come from a cache otherwise (ids)."""
    parts, lengths = [], 0
    for key in sorted(columns):
        kind, payloads = columns[key]
        sizes = np.fromiter(map(len, payloads), np.int64, len(payloads))
        if len(sizes) and (sizes == sizes[0]).all():
            prefix = _entry_prefix(key, kind, int(sizes[0]))
            prefixes = [prefix] * len(payloads)
            lengths = lengths + sizes + len(prefix)
        else:
            prefixes = [_entry_prefix(key, kind, int(size)) for size in sizes]
            lengths = lengths + sizes + np.fromiter(map(len, prefixes), np.int64, len(prefixes))
        parts += (prefixes, payloads)
    varint = _varint
    return [b"".join((b"\x0a", varint(length), *row))
            for length, row in zip(np.asarray(lengths).tolist(), zip(*parts))]


def label_features(labels: Any, spec: DatasetSpec, ids: Sequence[str]) -> list[tuple[bytes, bytes]]:
    """The `label` Feature of each example; ValueError naming the example whose label does not
    have `spec.label_shape` values."""
    expected = int(np.prod(spec.label_shape)) if spec.label_shape else 1
    stacked = labels if isinstance(labels, np.ndarray) and labels.dtype != object else None
    if stacked is None or stacked.size != len(ids) * expected:  # a list: check each label
        rows = [np.asarray(label).reshape(-1) for label in labels]
        for row, example_id in zip(rows, ids):
            if row.size != expected:
                raise ValueError(f"{spec.name}: example {example_id} has {row.size} label "
                                 f"values, spec.label_shape={spec.label_shape} expects {expected}")
        stacked = np.stack(rows) if rows else np.zeros((0, expected))
    stacked = stacked.reshape(len(ids), expected)
    if spec.label_dtype == "int64":
        return [int64_feature(v) for v in varint_rows(stacked.astype(np.int64))]
    return [float_feature(row) for row in stacked.astype(np.float32)]


