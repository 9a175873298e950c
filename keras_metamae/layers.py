"""Building blocks of the MetaMAE networks: LayerNorm, self-attention, Transformer block,
token embedding and the fixed sin-cos position embedding.

Every op here is twice differentiable with exact second-order gradients, because the MetaMAE
outer loss differentiates through the gradient of the inner (latent adaptation) loss. That is
why `LayerNorm` is written out by hand: `keras.layers.LayerNormalization` computes its statistics
with `tf.nn.moments`, which stops the gradient through the mean inside the variance. The
first-order gradient is unaffected (the derivative of the variance w.r.t. the mean is zero at the
mean) but the second-order gradient is wrong. (Attention has no such problem: Keras'
`MultiHeadAttention` also matches float64 finite differences; ours exists for the reasons given
in its docstring.)

The defaults follow the reference's timm ViT blocks and PyTorch layers: LayerNorm epsilon 1e-5,
no bias on the attention's query/key/value projection.

Under a mixed-precision policy the statistics and the attention softmax are computed in float32;
under a float64 policy (used by the finite-difference tests) everything stays float64.
"""

import math

import keras
import numpy as np
from keras import ops

_PACKAGE = "keras_metamae"


def _stat_dtype(compute_dtype):
    """float32 for 16-bit compute dtypes (their range is too small for statistics), else the
    compute dtype itself (float32 or float64)."""
    return "float32" if compute_dtype in ("float16", "bfloat16") else compute_dtype


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LayerNorm(keras.layers.Layer):
    """Layer normalization over the last axis with exact second-order gradients.

    `y = (x - mean) / sqrt(var + epsilon) * gamma + beta` with `mean` and `var` computed with
    plain reductions, so gradients of gradients flow through both statistics. Computed in
    float32 under mixed precision (gamma and beta are kept in float32, not auto-cast).

    Args:
        epsilon: small float added to the variance (1e-5, PyTorch's `nn.LayerNorm` default).
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).
    """

    def __init__(self, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)
        self.supports_masking = True

    def build(self, input_shape):
        dim = input_shape[-1]
        # autocast=False: read the float32 variables as float32 under mixed precision.
        self.gamma = self.add_weight(
            shape=(dim,), initializer="ones", name="gamma", autocast=False
        )
        self.beta = self.add_weight(
            shape=(dim,), initializer="zeros", name="beta", autocast=False
        )
        self.built = True

    def call(self, inputs):
        dtype = _stat_dtype(self.compute_dtype)
        x = ops.cast(inputs, dtype)
        mean = ops.mean(x, axis=-1, keepdims=True)
        centered = x - mean
        var = ops.mean(ops.square(centered), axis=-1, keepdims=True)
        y = centered * ops.rsqrt(var + self.epsilon)
        y = y * ops.cast(self.gamma, dtype) + ops.cast(self.beta, dtype)
        return ops.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"epsilon": self.epsilon})
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MultiHeadSelfAttention(keras.layers.Layer):
    """Multi-head self-attention laid out as timm's ViT `Attention`.

    One fused `Dense(3 * dim)` gives queries, keys and values (no bias by default, timm's
    `qkv_bias=False` as in the reference); scores are scaled by `head_dim ** -0.5`, the softmax
    is taken in float32 under mixed precision, and an output `Dense(dim)` (with bias) projects
    back, followed by dropout (timm's `proj_drop`). Written out rather than using
    `keras.layers.MultiHeadAttention` for that weight layout and the float32 softmax, not for
    second-order gradients (Keras' layer gets those right too).

    Args:
        num_heads: int, number of heads; must divide the input width.
        dropout: float, dropout rate after the output projection.
        qkv_bias: bool, add a bias to the query/key/value projection.
        **kwargs: `keras.layers.Layer` arguments.
    """

    def __init__(self, num_heads, dropout=0.0, qkv_bias=False, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.dropout = float(dropout)
        self.qkv_bias = bool(qkv_bias)

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim % self.num_heads:
            raise ValueError(
                f"MultiHeadSelfAttention: width {dim} is not divisible by "
                f"num_heads={self.num_heads}"
            )
        self.dim = dim
        self.head_dim = dim // self.num_heads
        self.qkv = keras.layers.Dense(
            3 * dim, use_bias=self.qkv_bias, dtype=self.dtype_policy, name="qkv"
        )
        self.qkv.build(input_shape)
        self.proj = keras.layers.Dense(dim, dtype=self.dtype_policy, name="proj")
        self.proj.build(tuple(input_shape[:-1]) + (dim,))
        self.proj_dropout = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="proj_dropout"
        )
        self.built = True

    def call(self, inputs, training=None):
        shape = ops.shape(inputs)
        batch, length = shape[0], shape[1]
        qkv = ops.reshape(
            self.qkv(inputs), (batch, length, 3, self.num_heads, self.head_dim)
        )
        # One unstack, not three slices: its gradient is one Pack instead of three
        # StridedSliceGrads (and their second-order gradients).
        q, k, v = ops.unstack(qkv, 3, axis=2)  # [B, N, H, dh]
        scores = ops.einsum("bqhd,bkhd->bhqk", q, k) * (1.0 / math.sqrt(self.head_dim))
        probs = ops.softmax(ops.cast(scores, _stat_dtype(self.compute_dtype)), axis=-1)
        probs = ops.cast(probs, self.compute_dtype)
        out = ops.einsum("bhqk,bkhd->bqhd", probs, v)
        out = ops.reshape(out, (batch, length, self.dim))
        return self.proj_dropout(self.proj(out), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {"num_heads": self.num_heads, "dropout": self.dropout, "qkv_bias": self.qkv_bias}
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TransformerBlock(keras.layers.Layer):
    """Pre-norm Transformer block (paper Table 7): `x + Attn(LN(x))`, then `x + MLP(LN(x))`.

    The MLP is `Dense(mlp_dim) -> GELU (exact, erf) -> Dropout -> Dense(dim) -> Dropout`, as in
    timm's ViT block that the reference builds on.

    Args:
        num_heads: int, attention heads.
        mlp_dim: int, hidden width of the MLP.
        dropout: float, dropout rate (attention output and MLP), `P_drop` of Table 7.
        epsilon: float, LayerNorm epsilon.
        qkv_bias: bool, bias on the attention's query/key/value projection.
        **kwargs: `keras.layers.Layer` arguments.
    """

    def __init__(self, num_heads, mlp_dim, dropout=0.0, epsilon=1e-5, qkv_bias=False,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.mlp_dim = int(mlp_dim)
        self.dropout = float(dropout)
        self.epsilon = float(epsilon)
        self.qkv_bias = bool(qkv_bias)

    def build(self, input_shape):
        dim = input_shape[-1]
        policy = self.dtype_policy
        self.norm1 = LayerNorm(self.epsilon, dtype=policy, name="norm1")
        self.norm1.build(input_shape)
        self.attention = MultiHeadSelfAttention(
            self.num_heads, self.dropout, self.qkv_bias, dtype=policy, name="attention"
        )
        self.attention.build(input_shape)
        self.norm2 = LayerNorm(self.epsilon, dtype=policy, name="norm2")
        self.norm2.build(input_shape)
        self.fc1 = keras.layers.Dense(self.mlp_dim, dtype=policy, name="fc1")
        self.fc1.build(input_shape)
        self.fc2 = keras.layers.Dense(dim, dtype=policy, name="fc2")
        self.fc2.build(tuple(input_shape[:-1]) + (self.mlp_dim,))
        self.mlp_dropout = keras.layers.Dropout(self.dropout, dtype=policy, name="mlp_dropout")
        self.built = True

    def call(self, inputs, training=None):
        x = inputs + self.attention(self.norm1(inputs), training=training)
        h = ops.gelu(self.fc1(self.norm2(x)), approximate=False)
        h = self.mlp_dropout(h, training=training)
        h = self.mlp_dropout(self.fc2(h), training=training)
        return x + h

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "mlp_dim": self.mlp_dim,
                "dropout": self.dropout,
                "epsilon": self.epsilon,
                "qkv_bias": self.qkv_bias,
            }
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TokenEmbedding(keras.layers.Layer):
    """Embeds tokens: `Dense` for continuous tokens `[B, T, token_dim]`, `Embedding` for
    discrete tokens `[B, T]` (int ids below `vocab_size`).

    The discrete embedding matrix (`embeddings`, `[vocab_size, embed_dim]`) is shared with the
    decoder's vocabulary head (tied weights, as in the reference) and initialized Xavier-uniform
    (`glorot_uniform`), as the reference initializes it.

    Args:
        embed_dim: int, output width.
        token_dim: int, values per continuous token (0 for discrete tokens).
        vocab_size: int, vocabulary size of discrete tokens (0 for continuous tokens).
        **kwargs: `keras.layers.Layer` arguments.
    """

    def __init__(self, embed_dim, token_dim=0, vocab_size=0, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim = int(embed_dim)
        self.token_dim = int(token_dim)
        self.vocab_size = int(vocab_size)
        if (self.token_dim > 0) == (self.vocab_size > 0):
            raise ValueError(
                f"TokenEmbedding: exactly one of token_dim ({token_dim}) and vocab_size "
                f"({vocab_size}) must be > 0"
            )
        if self.is_discrete:
            self.embedding = keras.layers.Embedding(
                self.vocab_size,
                self.embed_dim,
                embeddings_initializer="glorot_uniform",
                dtype=self.dtype_policy,
                name="embedding",
            )
        else:
            self.embedding = keras.layers.Dense(
                self.embed_dim, dtype=self.dtype_policy, name="projection"
            )

    @property
    def is_discrete(self):
        return self.vocab_size > 0

    @property
    def embeddings(self):
        """The `[vocab_size, embed_dim]` matrix of discrete tokens (for the tied head)."""
        if not self.is_discrete:
            raise AttributeError("continuous tokens have no embedding matrix")
        return self.embedding.embeddings

    def build(self, input_shape):
        if self.is_discrete:
            self.embedding.build(input_shape)
        else:
            self.embedding.build(tuple(input_shape[:-1]) + (self.token_dim,))
        self.built = True

    def call(self, tokens):
        return self.embedding(tokens)

    def compute_output_shape(self, input_shape):
        if self.is_discrete:
            return tuple(input_shape) + (self.embed_dim,)
        return tuple(input_shape[:-1]) + (self.embed_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "embed_dim": self.embed_dim,
                "token_dim": self.token_dim,
                "vocab_size": self.vocab_size,
            }
        )
        return config


def _sincos_1d(positions, dim):
    """`[len(positions), dim]`: first half sin, second half cos (MAE convention)."""
    half = dim // 2
    omega = 1.0 / 10000.0 ** (np.arange(half, dtype=np.float64) / max(half, 1))
    angles = np.outer(np.asarray(positions, np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_position_embedding(token_grid, dim):
    """Fixed sin-cos position embedding for a 1-D or 2-D token grid (numpy, float32).

    1-D grid `[T]`: the MAE 1-D table over positions 0..T-1. 2-D grid `[rows, cols]`: half of
    the channels encode the row, half the column (MAE's 2-D table), tokens in row-major order.
    Channels that do not divide evenly (dim not a multiple of 2, or of 4 in 2-D) are zero.

    Args:
        token_grid: sequence of 1 or 2 ints, the token layout.
        dim: int, embedding width.

    Returns:
        np.ndarray `[prod(token_grid), dim]`, float32.
    """
    grid = [int(g) for g in token_grid]
    if len(grid) == 1:
        table = _sincos_1d(np.arange(grid[0]), 2 * (dim // 2))
    elif len(grid) == 2:
        rows, cols = grid
        quarter_dim = 2 * (dim // 4)
        row_ids, col_ids = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        table = np.concatenate(
            [
                _sincos_1d(row_ids.reshape(-1), quarter_dim),
                _sincos_1d(col_ids.reshape(-1), quarter_dim),
            ],
            axis=1,
        )
    else:
        raise ValueError(f"token_grid must be 1-D or 2-D, got {token_grid}")
    pad = dim - table.shape[1]
    if pad:
        table = np.concatenate([table, np.zeros((table.shape[0], pad))], axis=1)
    return table.astype(np.float32)
