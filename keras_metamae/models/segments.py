"""Mixed-token (segmented) sequences, e.g. image patches + caption words (DABS mscoco): the
model's view of `DatasetSpec.segments`, the packed token tensor, and per-segment tables."""

import numpy as np
from keras import ops

from keras_metamae.models.layers import sincos_position_embedding


def normalize_segments(segments):
    """The model's view of `DatasetSpec.segments` (None or empty: a single-modality model).

    Returns a list of `{"name", "kind", "num_tokens", "token_grid", "token_dim", "vocab_size"}`
    (other spec keys such as `feature` or `input_shape` are dropped), or None."""
    if not segments:
        return None
    out = []
    for seg in segments:
        kind = seg["kind"]
        if kind not in ("continuous", "discrete"):
            raise ValueError(f"segment {seg.get('name')!r}: kind={kind!r}, expected "
                             f"'continuous' or 'discrete'")
        entry = {
            "name": str(seg["name"]),
            "kind": kind,
            "num_tokens": int(seg["num_tokens"]),
            "token_grid": [int(g) for g in seg["token_grid"]],
            "token_dim": int(seg.get("token_dim", 0)) if kind == "continuous" else 0,
            "vocab_size": int(seg.get("vocab_size", 0)) if kind == "discrete" else 0,
        }
        if (entry["token_dim"] > 0) == (entry["vocab_size"] > 0):
            raise ValueError(f"segment {entry['name']!r}: a continuous segment needs token_dim "
                             f"> 0, a discrete one vocab_size > 0")
        if int(np.prod(entry["token_grid"])) != entry["num_tokens"] or \
                len(entry["token_grid"]) not in (1, 2):
            raise ValueError(f"segment {entry['name']!r}: token_grid={entry['token_grid']} must "
                             f"be 1-D or 2-D with product num_tokens={entry['num_tokens']}")
        out.append(entry)
    return out


def packed_width(segments):
    """Width of the packed token tensor: max(1, continuous token_dims)."""
    return max([1] + [s["token_dim"] for s in segments if s["kind"] == "continuous"])


def split_segments(tokens, segments):
    """Packed `[B, T, width]` tokens -> one tensor per segment, in order: continuous
    `[B, n, token_dim]` (float), discrete `[B, n]` int32 ids (column 0, rounded).
    See `preprocessing/spec.py` for the packing."""
    parts, start = [], 0
    for seg in segments:
        n = seg["num_tokens"]
        part = tokens[:, start:start + n, :]
        if seg["kind"] == "discrete":
            parts.append(ops.cast(ops.round(ops.cast(part[..., 0], "float32")), "int32"))
        else:
            parts.append(part[..., : seg["token_dim"]])
        start += n
    return parts


def segment_position_table(segments, dim):
    """`[T, dim]`: each segment's own sin-cos table (2-D for a grid, 1-D for text), concatenated."""
    return np.concatenate(
        [sincos_position_embedding(s["token_grid"], dim) for s in segments], axis=0
    ).astype(np.float32)


def segment_one_hot(segments):
    """`[T, num_segments]` float32 one-hot of each token's segment (for modality embeddings)."""
    ids = np.concatenate([np.full(s["num_tokens"], i) for i, s in enumerate(segments)])
    return np.eye(len(segments), dtype=np.float32)[ids]


def scatter_to_grid(visible, keep_indices, num_tokens, fill):
    """Places `visible` `[B, n, D]` at positions `keep_indices` `[B, n]` of a `[B, T, D]`
    sequence whose other positions hold `fill` `[D]` (the mask token).

    Written as a one-hot contraction rather than a scatter: it is differentiable to any order
    and its cost (B*n*T*D) is negligible next to the Transformer blocks."""
    one_hot = ops.one_hot(keep_indices, num_tokens, dtype=visible.dtype)  # [B, n, T]
    placed = ops.einsum("bnt,bnd->btd", one_hot, visible)
    is_masked = 1.0 - ops.sum(one_hot, axis=1)  # [B, T]
    return placed + is_masked[..., None] * fill
