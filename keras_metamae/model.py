"""The three MetaMAE networks (paper Table 7): encoder f_theta, decoder g_phi, projector h_psi."""

import keras
from keras import ops

from keras_metamae.layers import LayerNorm
from keras_metamae.layers import TokenEmbedding
from keras_metamae.layers import TransformerBlock
from keras_metamae.layers import sincos_position_embedding

_PACKAGE = "keras_metamae"


def _scatter_to_grid(visible, keep_indices, num_tokens, fill):
    """Places `visible` `[B, n, D]` at positions `keep_indices` `[B, n]` of a `[B, T, D]`
    sequence whose other positions hold `fill` `[D]` (the mask token).

    Written as a one-hot contraction rather than a scatter: it is differentiable to any order
    and its cost (B*n*T*D) is negligible next to the Transformer blocks."""
    one_hot = ops.one_hot(keep_indices, num_tokens, dtype=visible.dtype)  # [B, n, T]
    placed = ops.einsum("bnt,bnd->btd", one_hot, visible)
    is_masked = 1.0 - ops.sum(one_hot, axis=1)  # [B, T]
    return placed + is_masked[..., None] * fill


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Encoder(keras.layers.Layer):
    """The Transformer encoder f_theta.

    Token embedding plus a fixed sin-cos position embedding (from `token_grid`), then a
    learned CLS token (position embedding zero, as in MAE) is prepended, `depth` pre-norm
    Transformer blocks and a final LayerNorm.

    `call(tokens, keep_indices=None, token_mask=None, training=None)` returns the latent
    `[B, 1 + n, embed_dim]` (CLS first):
    - `keep_indices` `[B, n]` int: only these tokens are encoded (MAE: the visible set S).
    - `token_mask` `[B, T]` float, 1 where masked (needs `use_mask_token=True`): every token is
      encoded, masked ones replaced by a learned mask embedding (BERT / DABS-2.0 MAE style).
    - neither: all T tokens are encoded (evaluation, serving).

    `features(tokens)` is the evaluation embedding: the mean of the non-CLS output tokens.

    Args:
        num_tokens: int, tokens per example T.
        token_grid: list of 1 or 2 ints, token layout for the position embedding.
        token_dim: int, values per continuous token (0 for discrete tokens).
        vocab_size: int, vocabulary size of discrete tokens (0 for continuous).
        embed_dim: int, width d.
        depth: int, number of Transformer blocks.
        num_heads: int, attention heads.
        mlp_dim: int, MLP hidden width.
        dropout: float, dropout rate p of the blocks.
        use_mask_token: bool, create the learned mask embedding used by `token_mask`.
        **kwargs: `keras.layers.Layer` arguments.
    """

    def __init__(
        self,
        num_tokens,
        token_grid,
        token_dim=0,
        vocab_size=0,
        embed_dim=256,
        depth=12,
        num_heads=8,
        mlp_dim=512,
        dropout=0.0,
        use_mask_token=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_tokens = int(num_tokens)
        self.token_grid = [int(g) for g in token_grid]
        self.token_dim = int(token_dim)
        self.vocab_size = int(vocab_size)
        self.embed_dim = int(embed_dim)
        self.depth = int(depth)
        self.num_heads = int(num_heads)
        self.mlp_dim = int(mlp_dim)
        self.dropout = float(dropout)
        self.use_mask_token = bool(use_mask_token)
        policy = self.dtype_policy
        self.token_embedding = TokenEmbedding(
            self.embed_dim, self.token_dim, self.vocab_size, dtype=policy, name="token_embedding"
        )
        self.blocks = [
            TransformerBlock(
                self.num_heads, self.mlp_dim, self.dropout, dtype=policy, name=f"block_{i}"
            )
            for i in range(self.depth)
        ]
        self.norm = LayerNorm(dtype=policy, name="norm")
        # Fixed, not a weight: rebuilt from the config, never saved or trained.
        self._position_table = sincos_position_embedding(self.token_grid, self.embed_dim)

    @property
    def is_discrete(self):
        return self.vocab_size > 0

    def build(self, tokens_shape=None):
        if self.is_discrete:
            self.token_embedding.build((None, self.num_tokens))
        else:
            self.token_embedding.build((None, self.num_tokens, self.token_dim))
        init = keras.initializers.RandomNormal(stddev=0.02)
        self.cls_token = self.add_weight(
            shape=(1, 1, self.embed_dim), initializer=init, name="cls_token"
        )
        if self.use_mask_token:
            self.mask_token = self.add_weight(
                shape=(self.embed_dim,), initializer=init, name="mask_token"
            )
        for block in self.blocks:
            block.build((None, None, self.embed_dim))
        self.norm.build((None, None, self.embed_dim))
        self.built = True

    def call(self, tokens, keep_indices=None, token_mask=None, training=None):
        x = self.token_embedding(tokens)  # [B, T, D]
        if token_mask is not None:
            if not self.use_mask_token:
                raise ValueError("Encoder: token_mask needs use_mask_token=True")
            m = ops.cast(token_mask, x.dtype)[..., None]
            x = x * (1.0 - m) + m * ops.cast(self.mask_token, x.dtype)
        x = x + ops.cast(self._position_table, x.dtype)
        if keep_indices is not None:
            x = ops.take_along_axis(x, ops.cast(keep_indices, "int32")[..., None], axis=1)
        cls = ops.broadcast_to(
            ops.cast(self.cls_token, x.dtype), (ops.shape(x)[0], 1, self.embed_dim)
        )
        x = ops.concatenate([cls, x], axis=1)
        for block in self.blocks:
            x = block(x, training=training)
        return self.norm(x)

    def features(self, tokens, training=False):
        """`[B, embed_dim]`: mean of the non-CLS output tokens (evaluation / serving)."""
        return ops.mean(self(tokens, training=training)[:, 1:, :], axis=1)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_tokens": self.num_tokens,
                "token_grid": self.token_grid,
                "token_dim": self.token_dim,
                "vocab_size": self.vocab_size,
                "embed_dim": self.embed_dim,
                "depth": self.depth,
                "num_heads": self.num_heads,
                "mlp_dim": self.mlp_dim,
                "dropout": self.dropout,
                "use_mask_token": self.use_mask_token,
            }
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Decoder(keras.layers.Layer):
    """The decoder g_phi: predicts every token from an (adapted) latent.

    `depth > 0` (paper Table 7): `Dense(embed_dim -> decoder_dim)`, the visible tokens are put
    back at their positions and the masked positions get a learned mask token, a fixed sin-cos
    position embedding is added (zero for CLS), `depth` pre-norm blocks, LayerNorm, then a
    head: `Dense(token_dim)` for continuous tokens, or `Dense(embed_dim)` multiplied by the
    encoder's (tied) embedding matrix plus a bias for discrete tokens (vocabulary logits).

    `depth == 0` (DABS-2.0 MAE, linear decoder): the latent must already cover all T positions
    (the encoder ran on the full sequence with mask tokens); the head is applied to each
    non-CLS latent token directly (a per-token linear map).

    `call(latent, keep_indices=None, embeddings=None, training=None)`:
    - `latent` `[B, 1 + n, embed_dim]` (CLS first).
    - `keep_indices` `[B, n]`: positions of the n latent tokens; None means n == T in order.
    - `embeddings` `[vocab_size, embed_dim]`: the tied matrix, required for discrete tokens.
    Returns `[B, T, token_dim]` predictions or `[B, T, vocab_size]` logits.

    Args:
        num_tokens: int, T.
        token_grid: list of 1 or 2 ints, for the position embedding.
        token_dim: int, values per continuous token (0 for discrete).
        vocab_size: int, vocabulary of discrete tokens (0 for continuous).
        embed_dim: int, encoder width (input width; tied head width).
        decoder_dim: int, decoder width.
        depth: int, number of blocks (0: linear decoder, see above).
        num_heads: int, attention heads.
        mlp_dim: int, MLP hidden width.
        dropout: float, dropout of the blocks (0 in the paper).
        **kwargs: `keras.layers.Layer` arguments.
    """

    def __init__(
        self,
        num_tokens,
        token_grid,
        token_dim=0,
        vocab_size=0,
        embed_dim=256,
        decoder_dim=128,
        depth=4,
        num_heads=4,
        mlp_dim=256,
        dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_tokens = int(num_tokens)
        self.token_grid = [int(g) for g in token_grid]
        self.token_dim = int(token_dim)
        self.vocab_size = int(vocab_size)
        self.embed_dim = int(embed_dim)
        self.decoder_dim = int(decoder_dim)
        self.depth = int(depth)
        self.num_heads = int(num_heads)
        self.mlp_dim = int(mlp_dim)
        self.dropout = float(dropout)
        policy = self.dtype_policy
        if self.depth > 0:
            self.input_projection = keras.layers.Dense(
                self.decoder_dim, dtype=policy, name="input_projection"
            )
            self.blocks = [
                TransformerBlock(
                    self.num_heads, self.mlp_dim, self.dropout, dtype=policy, name=f"block_{i}"
                )
                for i in range(self.depth)
            ]
            self.norm = LayerNorm(dtype=policy, name="norm")
            self._position_table = sincos_position_embedding(
                self.token_grid, self.decoder_dim
            )
        head_dim = self.embed_dim if self.is_discrete else self.token_dim
        self.head = keras.layers.Dense(head_dim, dtype=policy, name="head")

    @property
    def is_discrete(self):
        return self.vocab_size > 0

    def build(self, latent_shape=None):
        width = self.embed_dim
        if self.depth > 0:
            self.input_projection.build((None, None, self.embed_dim))
            self.mask_token = self.add_weight(
                shape=(self.decoder_dim,),
                initializer=keras.initializers.RandomNormal(stddev=0.02),
                name="mask_token",
            )
            for block in self.blocks:
                block.build((None, None, self.decoder_dim))
            self.norm.build((None, None, self.decoder_dim))
            width = self.decoder_dim
        self.head.build((None, None, width))
        if self.is_discrete:
            self.vocab_bias = self.add_weight(
                shape=(self.vocab_size,), initializer="zeros", name="vocab_bias"
            )
        self.built = True

    def call(self, latent, keep_indices=None, embeddings=None, training=None):
        if self.depth > 0:
            x = self.input_projection(latent)
            cls, visible = x[:, :1, :], x[:, 1:, :]
            if keep_indices is not None:
                visible = _scatter_to_grid(
                    visible,
                    ops.cast(keep_indices, "int32"),
                    self.num_tokens,
                    ops.cast(self.mask_token, x.dtype),
                )
            visible = visible + ops.cast(self._position_table, x.dtype)
            x = ops.concatenate([cls, visible], axis=1)
            for block in self.blocks:
                x = block(x, training=training)
            x = self.norm(x)[:, 1:, :]
        else:
            if keep_indices is not None:
                raise ValueError(
                    "Decoder(depth=0) is a per-token linear head: the latent must cover all "
                    "tokens (run the encoder with token_mask, not keep_indices)"
                )
            x = latent[:, 1:, :]
        out = self.head(x)
        if self.is_discrete:
            if embeddings is None:
                raise ValueError("Decoder: discrete tokens need the tied `embeddings` matrix")
            out = ops.einsum("btd,vd->btv", out, ops.cast(embeddings, out.dtype))
            out = out + ops.cast(self.vocab_bias, out.dtype)
        return out

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_tokens": self.num_tokens,
                "token_grid": self.token_grid,
                "token_dim": self.token_dim,
                "vocab_size": self.vocab_size,
                "embed_dim": self.embed_dim,
                "decoder_dim": self.decoder_dim,
                "depth": self.depth,
                "num_heads": self.num_heads,
                "mlp_dim": self.mlp_dim,
                "dropout": self.dropout,
            }
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Projector(keras.layers.Layer):
    """The projector h_psi of the task-contrastive loss:
    `Dense(hidden_dim, no bias) -> BatchNorm -> ReLU -> Dense(output_dim, no bias)`.

    The BatchNorm is synchronized: under a distribution strategy its batch statistics are
    computed over the global batch, so training does not depend on the number of replicas.

    Args:
        hidden_dim: int, hidden width (1024).
        output_dim: int, output width (128).
        **kwargs: `keras.layers.Layer` arguments.
    """

    def __init__(self, hidden_dim=1024, output_dim=128, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = int(hidden_dim)
        self.output_dim = int(output_dim)
        policy = self.dtype_policy
        self.dense1 = keras.layers.Dense(
            self.hidden_dim, use_bias=False, dtype=policy, name="dense1"
        )
        self.batch_norm = keras.layers.BatchNormalization(
            synchronized=True, dtype=policy, name="batch_norm"
        )
        self.dense2 = keras.layers.Dense(
            self.output_dim, use_bias=False, dtype=policy, name="dense2"
        )

    def build(self, input_shape):
        self.dense1.build(input_shape)
        self.batch_norm.build(tuple(input_shape[:-1]) + (self.hidden_dim,))
        self.dense2.build(tuple(input_shape[:-1]) + (self.hidden_dim,))
        self.built = True

    def call(self, inputs, training=None):
        x = self.batch_norm(self.dense1(inputs), training=training)
        return self.dense2(ops.relu(x))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim,)

    def get_config(self):
        config = super().get_config()
        config.update({"hidden_dim": self.hidden_dim, "output_dim": self.output_dim})
        return config
