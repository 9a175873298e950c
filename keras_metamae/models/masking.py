"""Per-example random masking and the Nearby-S support set (paper Sec. 2.2), and the DABS
baselines' top-k corruption (ShED, Capri, DABS-2.0 MAE), from noise.

Both take uniform noise `[B, T]` as input instead of drawing it, so that a batch's masks are
reproducible (tests, replica-equivalence) and the caller decides where randomness comes from.
"""

import math

import tensorflow as tf


def num_kept(num_tokens, mask_ratio):
    """Visible tokens per example: `floor((1 - mask_ratio) * T)`, at least 1 and at most T."""
    kept = int((1.0 - float(mask_ratio)) * int(num_tokens) + 1e-6)
    return max(1, min(int(num_tokens), kept))


def random_masking(noise, mask_ratio):
    """Keeps the `num_kept(T, mask_ratio)` lowest-noise tokens of each example.

    Args:
        noise: `[B, T]` float, uniform noise; T must be static.
        mask_ratio: float, fraction of tokens to mask.

    Returns:
        `(keep_indices, mask)`: `[B, n]` int32 positions of the visible tokens in increasing
        order, and `[B, T]` float32, 1.0 where the token is masked (the query set Q).
    """
    num_tokens = noise.shape[-1]
    if num_tokens is None:
        raise ValueError("random_masking: the number of tokens must be static")
    kept = num_kept(num_tokens, mask_ratio)
    order = tf.argsort(noise, axis=-1, stable=True)
    keep_indices = tf.sort(order[:, :kept], axis=-1)
    visible = tf.reduce_sum(tf.one_hot(keep_indices, num_tokens, dtype=tf.float32), axis=1)
    return keep_indices, 1.0 - visible


def _shift(x, offset, axis):
    """Shifts `x` by `offset` (+1 or -1) along `axis`, zero-filled: `out[i] = x[i - offset]`."""
    lead = (slice(None),) * axis
    if offset > 0:
        body, edge = x[lead + (slice(None, -1),)], x[lead + (slice(None, 1),)]
        return tf.concat([tf.zeros_like(edge), body], axis=axis)
    body, edge = x[lead + (slice(1, None),)], x[lead + (slice(-1, None),)]
    return tf.concat([body, tf.zeros_like(edge)], axis=axis)


def _grid_size(grid):
    size = 1
    for g in grid:
        size *= int(g)
    return size


def grid_neighbours(visible, token_grid):
    """`[B, T]` float: 1.0 on tokens that are grid neighbours of a visible token (the visible
    tokens themselves included when they touch another visible one).

    1-D grid `[T]`: left and right. 2-D grid `[rows, cols]` (row-major tokens): up, down, left,
    right. No wrap-around at the borders. A list of such grids describes a segmented
    (mixed-token) sequence: each segment's tokens only neighbour tokens of the same segment."""
    visible = tf.cast(visible, tf.float32)
    if token_grid and isinstance(token_grid[0], (list, tuple)):
        # Segmented sequence: a list of grids, one per segment in sequence order; neighbours
        # are taken within each segment only (never across a segment boundary).
        sizes = [_grid_size(g) for g in token_grid]
        parts = tf.split(visible, sizes, axis=1)
        return tf.concat([grid_neighbours(p, g) for p, g in zip(parts, token_grid)], axis=1)
    grid = [int(g) for g in token_grid]
    if len(grid) == 1:
        return tf.maximum(_shift(visible, 1, 1), _shift(visible, -1, 1))
    if len(grid) != 2:
        raise ValueError(f"token_grid must be 1-D or 2-D, got {token_grid}")
    rows, cols = grid
    v = tf.reshape(visible, [-1, rows, cols])
    near = tf.reduce_max(
        tf.stack(
            [_shift(v, 1, 1), _shift(v, -1, 1), _shift(v, 1, 2), _shift(v, -1, 2)], axis=0
        ),
        axis=0,
    )
    return tf.reshape(near, [-1, rows * cols])


def nearby_mask(mask, token_grid, noise, nearby_ratio):
    """Nearby-S tokens N(S; r): masked tokens that are grid neighbours of a visible token, each
    kept when its `noise` is below `nearby_ratio` (i.e. with probability r).

    Args:
        mask: `[B, T]` float, 1.0 where masked.
        token_grid: list of 1 or 2 ints, or a list of such grids (one per segment).
        noise: `[B, T]` uniform noise in [0, 1).
        nearby_ratio: float, r.

    Returns:
        `[B, T]` float32, 1.0 on the selected nearby tokens.
    """
    mask = tf.cast(mask, tf.float32)
    candidates = grid_neighbours(1.0 - mask, token_grid) * mask
    chosen = tf.cast(tf.cast(noise, tf.float32) < float(nearby_ratio), tf.float32)
    return candidates * chosen


def support_mask(mask, token_grid, noise, nearby_ratio):
    """The support set S~ = S (visible) union N(S; r), `[B, T]` float32, 1.0 on its tokens."""
    mask = tf.cast(mask, tf.float32)
    return (1.0 - mask) + nearby_mask(mask, token_grid, noise, nearby_ratio)


# === the DABS baselines: the top-k of uniform noise are corrupted ===
def num_masked(num_tokens, ratio):
    """Masked tokens per example, as DABS counts them: `ceil(T * ratio)` in float64
    arithmetic (so `0.14 * 50`, 7.000000000000001, masks 8), at least 1 and at most T."""
    masked = math.ceil(int(num_tokens) * float(ratio))
    return max(1, min(int(num_tokens), masked))


def top_k_mask(noise, ratio):
    """`[B, T]` float32, 1.0 on the `num_masked(T, ratio)` tokens of each example with the
    largest noise (DABS: the top-k of uniform noise are masked).

    Args:
        noise: `[B, T]` float, uniform noise; T must be static.
        ratio: float, share of tokens to mask (rounded up).
    """
    num_tokens = noise.shape[-1]
    if num_tokens is None:
        raise ValueError("top_k_mask: the number of tokens must be static")
    _, indices = tf.math.top_k(noise, k=num_masked(num_tokens, ratio), sorted=False)
    return tf.reduce_sum(tf.one_hot(indices, num_tokens, dtype=tf.float32), axis=1)


def zero_masked(embeddings, mask):
    """`embeddings` `[B, T, D]` with the rows where `mask` `[B, T]` is 1.0 set to zero (a
    product, not a scatter: differentiable to any order)."""
    keep = 1.0 - tf.cast(mask, embeddings.dtype)
    return embeddings * keep[..., None]
