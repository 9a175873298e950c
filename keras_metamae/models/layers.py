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

Speed (the second-order step differentiates every op here twice): `LayerNorm` and the exact GELU
have hand-written backward passes (`layer_norm`, `gelu_exact`), a handful of fused-friendly ops
instead of what autodiff derives from the forward ops, and those backward passes are themselves
plain differentiable ops, so the second-order gradient stays exact. In training, the attention
core (`softmax(q k^T / sqrt(d)) v`) runs as three XLA-compiled functions: forward, its
gradient, and the gradient of that gradient (`attention_core`), because the many small batched
matmuls of attention over few tokens run 2-3x faster compiled than as TensorFlow ops.

The defaults follow the reference's timm ViT blocks and PyTorch layers: LayerNorm epsilon 1e-5,
no bias on the attention's query/key/value projection.

Under a mixed-precision policy the statistics and the attention softmax are computed in float32;
under a float64 policy (used by the finite-difference tests) everything stays float64.
"""

import functools
import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

_PACKAGE = "keras_metamae"


def _stat_dtype(compute_dtype):
    """float32 for 16-bit compute dtypes (their range is too small for statistics), else the
    compute dtype itself (float32 or float64)."""
    return "float32" if compute_dtype in ("float16", "bfloat16") else compute_dtype


def layer_norm(x, gamma, beta, epsilon):
    """`(x - mean) / sqrt(var + epsilon) * gamma + beta` over the last axis, with the textbook
    backward pass `dx = (g - mean(g) - x_hat * mean(g * x_hat)) / std` (`g = dy * gamma`)
    written out: fewer and cheaper ops than autodiff's, and, being plain ops of `x` and `dy`,
    differentiable again (exact second order, checked against float64 finite differences)."""

    @tf.custom_gradient
    def normalize(x, gamma, beta):
        mean = tf.reduce_mean(x, axis=-1, keepdims=True)
        centered = x - mean
        inv_std = tf.math.rsqrt(tf.reduce_mean(tf.square(centered), axis=-1, keepdims=True)
                                + epsilon)
        x_hat = centered * inv_std

        def grad(dy):
            g = dy * gamma
            dx = inv_std * (g - tf.reduce_mean(g, axis=-1, keepdims=True)
                            - x_hat * tf.reduce_mean(g * x_hat, axis=-1, keepdims=True))
            batch_axes = tf.range(tf.rank(dy) - 1)
            d_gamma = tf.reduce_sum(dy * x_hat, axis=batch_axes)
            return dx, d_gamma, tf.reduce_sum(dy, axis=batch_axes)

        return x_hat * gamma + beta, grad

    return normalize(x, gamma, beta)


_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


@tf.custom_gradient
def gelu_exact(x):
    """Exact (erf) GELU `x * Phi(x)` with its derivative `Phi(x) + x * phi(x)` written out
    (reusing `Phi` from the forward pass); differentiable again."""
    cdf = 0.5 * tf.math.erfc(-x * tf.cast(_SQRT_HALF, x.dtype))

    def grad(dy):
        pdf = tf.exp(-0.5 * tf.square(x)) * tf.cast(_INV_SQRT_2PI, x.dtype)
        return dy * (cdf + x * pdf)

    return x * cdf, grad


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LayerNorm(keras.layers.Layer):
    """Layer normalization over the last axis with exact second-order gradients.

    `y = (x - mean) / sqrt(var + epsilon) * gamma + beta` with `mean` and `var` computed with
    plain reductions and a written-out backward pass (`layer_norm`), so gradients of gradients
    flow through both statistics. Computed in float32 under mixed precision (gamma and beta are
    kept in float32, not auto-cast).

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
        y = layer_norm(ops.cast(inputs, dtype), ops.cast(self.gamma, dtype),
                       ops.cast(self.beta, dtype), self.epsilon)
        return ops.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"epsilon": self.epsilon})
        return config


def _attend(qkv, num_heads, head_dim, stat_dtype):
    """`[B, N, 3 * D]` fused queries/keys/values -> `[B, N, D]` attention output (timm's layout:
    heads split off the last axis, scores scaled by `head_dim ** -0.5`, softmax in `stat_dtype`)."""
    shape = tf.shape(qkv)
    batch, length = shape[0], shape[1]
    qkv = tf.transpose(tf.reshape(qkv, (batch, length, 3, num_heads, head_dim)), (2, 0, 3, 1, 4))
    q, k, v = tf.unstack(qkv, 3, axis=0)  # [B, H, N, dh]
    scores = tf.linalg.matmul(q * tf.cast(1.0 / math.sqrt(head_dim), q.dtype), k,
                              transpose_b=True)
    probs = tf.cast(tf.nn.softmax(tf.cast(scores, stat_dtype), axis=-1), qkv.dtype)
    out = tf.linalg.matmul(probs, v)  # [B, H, N, dh]
    return tf.reshape(tf.transpose(out, (0, 2, 1, 3)), (batch, length, num_heads * head_dim))


@functools.lru_cache(maxsize=None)
def attention_core(num_heads, head_dim, stat_dtype):
    """`_attend` for `num_heads` heads of `head_dim`, as a function whose value, gradient and
    gradient of the gradient each run as one XLA-compiled function (the second-order step needs
    all three). The compiled functions compute the ops of `_attend` and their autodiff
    gradients (equal to the uncompiled ones to 1e-12 in float64, tested); XLA compiles them
    once per input shape."""

    def forward(qkv):
        return _attend(qkv, num_heads, head_dim, stat_dtype)

    def vjp(qkv, d_out):
        with tf.GradientTape() as tape:
            tape.watch(qkv)
            out = forward(qkv)
        return tape.gradient(out, qkv, output_gradients=d_out)

    def vjp_of_vjp(qkv, d_out, g):
        with tf.GradientTape() as tape:
            tape.watch([qkv, d_out])
            d_qkv = vjp(qkv, d_out)
        return tape.gradient(d_qkv, [qkv, d_out], output_gradients=g)

    compiled = functools.partial(tf.function, jit_compile=True, reduce_retracing=True)
    forward_xla, vjp_xla, vjp_of_vjp_xla = compiled(forward), compiled(vjp), compiled(vjp_of_vjp)

    @tf.custom_gradient
    def core_vjp(qkv, d_out):
        return vjp_xla(qkv, d_out), lambda g: vjp_of_vjp_xla(qkv, d_out, g)

    @tf.custom_gradient
    def core(qkv):
        return forward_xla(qkv), lambda d_out: core_vjp(qkv, d_out)

    return core


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MultiHeadSelfAttention(keras.layers.Layer):
    """Multi-head self-attention laid out as timm's ViT `Attention`.

    One fused `Dense(3 * dim)` gives queries, keys and values (no bias by default, timm's
    `qkv_bias=False` as in the reference); scores are scaled by `head_dim ** -0.5`, the softmax
    is taken in float32 under mixed precision, and an output `Dense(dim)` (with bias) projects
    back, followed by dropout (timm's `proj_drop`). Written out rather than using
    `keras.layers.MultiHeadAttention` for that weight layout and the float32 softmax, not for
    second-order gradients (Keras' layer gets those right too).

    In training (`training=True`) with `xla_core`, the core runs through `attention_core`
    (XLA-compiled value and gradients); otherwise, and always in evaluation and in exported
    SavedModels (which then need no XLA at serving time, and see any batch size without a
    recompilation), the same ops run as TensorFlow ops.

    Args:
        num_heads: int, number of heads; must divide the input width.
        dropout: float, dropout rate after the output projection.
        qkv_bias: bool, add a bias to the query/key/value projection.
        xla_core: bool, compile the attention core in training (see above).
        **kwargs: `keras.layers.Layer` arguments.
    """

    def __init__(self, num_heads, dropout=0.0, qkv_bias=False, xla_core=True, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.dropout = float(dropout)
        self.qkv_bias = bool(qkv_bias)
        self.xla_core = bool(xla_core)

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim % self.num_heads:
            raise ValueError(
                f"MultiHeadSelfAttention: width {dim} is not divisible by "
                f"num_heads={self.num_heads}"
            )
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
        qkv = self.qkv(inputs)
        stat_dtype = _stat_dtype(self.compute_dtype)
        if training and self.xla_core:
            out = attention_core(self.num_heads, self.head_dim, stat_dtype)(qkv)
        else:
            out = _attend(qkv, self.num_heads, self.head_dim, stat_dtype)
        return self.proj_dropout(self.proj(out), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {"num_heads": self.num_heads, "dropout": self.dropout, "qkv_bias": self.qkv_bias,
             "xla_core": self.xla_core}
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
        xla_core: bool, the attention's XLA-compiled core in training
            (`MultiHeadSelfAttention`).
        **kwargs: `keras.layers.Layer` arguments.
    """

    def __init__(self, num_heads, mlp_dim, dropout=0.0, epsilon=1e-5, qkv_bias=False,
                 xla_core=True, **kwargs):
        super().__init__(**kwargs)
        self.xla_core = bool(xla_core)
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
            self.num_heads, self.dropout, self.qkv_bias, self.xla_core, dtype=policy,
            name="attention",
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
        h = gelu_exact(self.fc1(self.norm2(x)))
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
                "xla_core": self.xla_core,
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
