"""The Transformer encoder f_theta (paper Table 7), shared by every pretraining method."""

import keras
import tensorflow as tf
from keras import ops

from keras_metamae.models.layers import LayerNorm
from keras_metamae.models.layers import TokenEmbedding
from keras_metamae.models.layers import TransformerBlock
from keras_metamae.models.layers import sincos_position_embedding
from keras_metamae.models.segments import normalize_segments
from keras_metamae.models.segments import segment_one_hot
from keras_metamae.models.segments import segment_position_table
from keras_metamae.models.segments import split_segments

_PACKAGE = "keras_metamae"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Encoder(keras.layers.Layer):
    """The Transformer encoder f_theta.

    Token embedding plus a fixed sin-cos position embedding (from `token_grid`), then a
    learned CLS token (position embedding zero, as in MAE) is prepended, dropout at the blocks'
    rate is applied to the embedded sequence (timm's `pos_drop`, as in the reference), then
    `depth` pre-norm Transformer blocks and a final LayerNorm.

    `call(tokens, keep_indices=None, token_mask=None, training=None)` returns the latent
    `[B, 1 + n, embed_dim]` (CLS first):
    - `keep_indices` `[B, n]` int: only these tokens are encoded (MAE: the visible set S).
    - `token_mask` `[B, T]` float, 1 where masked (needs `use_mask_token=True`): every token is
      encoded, masked ones replaced by a learned mask embedding (BERT / DABS-2.0 MAE style).
    - neither: all T tokens are encoded (evaluation, serving).
    `encode_embeddings(embeddings)` encodes token embeddings a method has altered.

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
        dropout: float, dropout rate p of the embedded sequence and of the blocks.
        use_mask_token: bool, create the learned mask embedding used by `token_mask`.
        segments: None, or a mixed-token sequence (`DatasetSpec.segments`): then `tokens` are
            the packed float `[B, T, token_dim]` tensor (see `split_segments`), each segment
            has its own token embedding (`segment_embeddings`: Dense or Embedding), a learned
            modality embedding (`modality_embedding`, one row per segment) is added, and the
            fixed position embedding is each segment's own (2-D grid or 1-D) sin-cos table.
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
        segments=None,
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
        self.segments = normalize_segments(segments)
        policy = self.dtype_policy
        if self.segments:
            self.token_embedding = None
            self.segment_embeddings = [
                TokenEmbedding(self.embed_dim, s["token_dim"], s["vocab_size"], dtype=policy,
                               name=f"token_embedding_{s['name']}")
                for s in self.segments
            ]
        else:
            self.token_embedding = TokenEmbedding(
                self.embed_dim, self.token_dim, self.vocab_size, dtype=policy,
                name="token_embedding"
            )
        self.blocks = [
            TransformerBlock(
                self.num_heads, self.mlp_dim, self.dropout, dtype=policy, name=f"block_{i}"
            )
            for i in range(self.depth)
        ]
        self.norm = LayerNorm(dtype=policy, name="norm")
        self.embedding_dropout = keras.layers.Dropout(
            self.dropout, dtype=policy, name="embedding_dropout"
        )
        # Fixed, not a weight: rebuilt from the config, never saved or trained.
        if self.segments:
            self._position_table = segment_position_table(self.segments, self.embed_dim)
            self._segment_one_hot = segment_one_hot(self.segments)
        else:
            self._position_table = sincos_position_embedding(self.token_grid, self.embed_dim)

    @property
    def is_discrete(self):
        return self.vocab_size > 0

    def build(self, tokens_shape=None):
        init = keras.initializers.RandomNormal(stddev=0.02)
        if self.segments:
            for seg, embedding in zip(self.segments, self.segment_embeddings):
                if seg["kind"] == "discrete":
                    embedding.build((None, seg["num_tokens"]))
                else:
                    embedding.build((None, seg["num_tokens"], seg["token_dim"]))
            self.modality_embedding = self.add_weight(
                shape=(len(self.segments), self.embed_dim), initializer=init,
                name="modality_embedding"
            )
        elif self.is_discrete:
            self.token_embedding.build((None, self.num_tokens))
        else:
            self.token_embedding.build((None, self.num_tokens, self.token_dim))
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

    def embed_tokens(self, tokens):
        """`[B, T, embed_dim]` token (+ modality, for segments) embeddings, no positions."""
        if not self.segments:
            return self.token_embedding(tokens)
        parts = split_segments(tokens, self.segments)
        x = ops.concatenate(
            [embedding(part) for embedding, part in zip(self.segment_embeddings, parts)], axis=1
        )
        modality = ops.matmul(
            ops.cast(self._segment_one_hot, x.dtype), ops.cast(self.modality_embedding, x.dtype)
        )
        return x + modality

    def tied_embeddings(self):
        """Segmented encoders: per segment, the `[vocab, embed_dim]` matrix of a discrete
        segment (for the decoder's tied head) or None."""
        return [
            e.embeddings if s["kind"] == "discrete" else None
            for s, e in zip(self.segments, self.segment_embeddings)
        ]

    def embed_kept_tokens(self, tokens, keep_indices):
        """`[B, n, embed_dim]`: token (+ modality) and position embeddings of the kept tokens
        only. Equal to embedding all T tokens and then keeping n of them (the embeddings are
        per token), but the embedding and its backward run on n tokens instead of T (85% of
        them are masked in the paper's configs)."""
        keep_indices = tf.cast(keep_indices, "int32")
        # A batched gather, not ops.take_along_axis (which broadcasts and transposes first).
        kept = tf.gather(tokens, keep_indices, batch_dims=1)  # [B, n, ...]
        if self.segments:
            x = self._embed_kept_segments(kept, keep_indices)
        else:
            x = self.token_embedding(kept)
        positions = tf.gather(tf.constant(self._position_table), keep_indices)  # [B, n, D]
        return x + ops.cast(positions, x.dtype)

    def _embed_kept_segments(self, kept, keep_indices):
        """Kept tokens of a mixed sequence come from any segment, in any mix per example: each
        segment's embedding runs on all n kept tokens and a one-hot of the token's segment
        selects the right one (n * segments embeddings, still far fewer than T)."""
        one_hot = tf.gather(tf.constant(self._segment_one_hot), keep_indices)  # [B, n, S]
        x = None
        for i, (seg, embedding) in enumerate(zip(self.segments, self.segment_embeddings)):
            in_segment = one_hot[..., i]
            if seg["kind"] == "discrete":
                ids = tf.cast(tf.round(tf.cast(kept[..., 0], "float32")), "int32")
                # Tokens of other segments hold values that are not ids of this vocabulary.
                ids = tf.where(in_segment > 0, ids, tf.zeros_like(ids))
                part = embedding(ids)
            else:
                part = embedding(kept[..., : seg["token_dim"]])
            part = part * ops.cast(in_segment, part.dtype)[..., None]
            x = part if x is None else x + part
        modality = ops.matmul(
            ops.cast(one_hot, x.dtype), ops.cast(self.modality_embedding, x.dtype)
        )
        return x + modality

    def call(self, tokens, keep_indices=None, token_mask=None, training=None):
        if keep_indices is not None and token_mask is None:
            x = self.embed_kept_tokens(tokens, keep_indices)  # [B, n, D]
        else:
            x = self.embed_tokens(tokens)  # [B, T, D]
            if token_mask is not None:
                if not self.use_mask_token:
                    raise ValueError("Encoder: token_mask needs use_mask_token=True")
                m = ops.cast(token_mask, x.dtype)[..., None]
                x = x * (1.0 - m) + m * ops.cast(self.mask_token, x.dtype)
            x = x + ops.cast(self._position_table, x.dtype)
            if keep_indices is not None:
                x = tf.gather(x, tf.cast(keep_indices, "int32"), batch_dims=1)
        return self._transform(x, training)

    def encode_embeddings(self, embeddings, training=None):
        """The latent `[B, 1 + T, embed_dim]` of all T token embeddings `[B, T, embed_dim]`
        as `embed_tokens` gives them, possibly altered by a method first (mixed, shuffled or
        zeroed, as DABS's e-Mix, ShED, MAE and Capri do before positions are added): the
        position embedding is added, then CLS, dropout, the blocks and the final norm."""
        x = embeddings + ops.cast(self._position_table, embeddings.dtype)
        return self._transform(x, training)

    def _transform(self, x, training):
        """CLS prepended, dropout, the blocks, the final LayerNorm."""
        cls = ops.broadcast_to(
            ops.cast(self.cls_token, x.dtype), (ops.shape(x)[0], 1, self.embed_dim)
        )
        x = ops.concatenate([cls, x], axis=1)
        x = self.embedding_dropout(x, training=training)
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
                "segments": self.segments,
            }
        )
        return config
