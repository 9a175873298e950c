"""The decoder g_phi (paper Table 7): reconstructs every token from the encoder's latent."""

import keras
from keras import ops

from keras_metamae.models.layers import LayerNorm
from keras_metamae.models.layers import TransformerBlock
from keras_metamae.models.layers import sincos_position_embedding
from keras_metamae.models.segments import normalize_segments
from keras_metamae.models.segments import scatter_to_grid
from keras_metamae.models.segments import segment_one_hot
from keras_metamae.models.segments import segment_position_table

_PACKAGE = "keras_metamae"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Decoder(keras.layers.Layer):
    """The decoder g_phi: predicts every token from an (adapted) latent.

    `depth > 0` (paper Table 7): `Dense(embed_dim -> decoder_dim)`, the visible tokens are put
    back at their positions and the masked positions get a learned mask token, a fixed sin-cos
    position embedding is added (zero for CLS), `depth` pre-norm blocks, LayerNorm, then a
    head: `Dense(token_dim)` for continuous tokens, or `Dense(embed_dim)` multiplied by the
    encoder's (tied) embedding matrix for discrete tokens (vocabulary logits `h @ E^T`, no
    extra bias, as in the reference).

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
        segments: None, or a mixed-token sequence (see `Encoder`): the position table is each
            segment's own, a learned modality embedding (`modality_embedding`) is added with it
            (depth > 0), and each segment has its own head (`heads`): `Dense(token_dim)` for a
            continuous segment, `Dense(embed_dim)` times that segment's tied embedding matrix
            for a discrete one. `call` then returns a list of per-segment outputs
            and `embeddings` is the list of per-segment matrices (None for continuous ones).
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
        segments=None,
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
        self.segments = normalize_segments(segments)
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
            if self.segments:
                self._position_table = segment_position_table(self.segments, self.decoder_dim)
                self._segment_one_hot = segment_one_hot(self.segments)
            else:
                self._position_table = sincos_position_embedding(
                    self.token_grid, self.decoder_dim
                )
        if self.segments:
            self.head = None
            self.heads = [
                keras.layers.Dense(
                    self.embed_dim if s["kind"] == "discrete" else s["token_dim"],
                    dtype=policy,
                    name=f"head_{s['name']}",
                )
                for s in self.segments
            ]
        else:
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
            if self.segments:
                self.modality_embedding = self.add_weight(
                    shape=(len(self.segments), self.decoder_dim),
                    initializer=keras.initializers.RandomNormal(stddev=0.02),
                    name="modality_embedding",
                )
        if self.segments:
            for head in self.heads:
                head.build((None, None, width))
        else:
            self.head.build((None, None, width))
        self.built = True

    def call(self, latent, keep_indices=None, embeddings=None, training=None):
        if self.depth > 0:
            x = self.input_projection(latent)
            cls, visible = x[:, :1, :], x[:, 1:, :]
            if keep_indices is not None:
                visible = scatter_to_grid(
                    visible,
                    ops.cast(keep_indices, "int32"),
                    self.num_tokens,
                    ops.cast(self.mask_token, x.dtype),
                )
            visible = visible + ops.cast(self._position_table, x.dtype)
            if self.segments:
                visible = visible + ops.matmul(
                    ops.cast(self._segment_one_hot, x.dtype),
                    ops.cast(self.modality_embedding, x.dtype),
                )
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
        if self.segments:
            return self._segment_heads(x, embeddings)
        out = self.head(x)
        if self.is_discrete:
            if embeddings is None:
                raise ValueError("Decoder: discrete tokens need the tied `embeddings` matrix")
            out = ops.einsum("btd,vd->btv", out, ops.cast(embeddings, out.dtype))
        return out

    def _segment_heads(self, x, embeddings):
        if embeddings is None or len(embeddings) != len(self.segments):
            raise ValueError("Decoder: a segmented decoder needs `embeddings`, one entry per "
                             "segment (the tied matrix of each discrete segment, else None)")
        outputs, start = [], 0
        for seg, head, matrix in zip(self.segments, self.heads, embeddings):
            n = seg["num_tokens"]
            out = head(x[:, start:start + n, :])
            if seg["kind"] == "discrete":
                out = ops.einsum("btd,vd->btv", out, ops.cast(matrix, out.dtype))
            outputs.append(out)
            start += n
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "segments": self.segments,
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
