"""The three MetaMAE networks (paper Table 7): encoder f_theta, decoder g_phi, projector h_psi."""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_metamae.layers import LayerNorm
from keras_metamae.layers import TokenEmbedding
from keras_metamae.layers import TransformerBlock
from keras_metamae.layers import sincos_position_embedding

_PACKAGE = "keras_metamae"


# === mixed-token (segmented) sequences ===
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
    learned CLS token (position embedding zero, as in MAE) is prepended, dropout at the blocks'
    rate is applied to the embedded sequence (timm's `pos_drop`, as in the reference), then
    `depth` pre-norm Transformer blocks and a final LayerNorm.

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
                visible = _scatter_to_grid(
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


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Projector(keras.layers.Layer):
    """The projector h_psi of the task-contrastive loss:
    `Dense(hidden_dim, no bias) -> BatchNorm -> ReLU -> Dense(output_dim, no bias)`.

    The BatchNorm is synchronized: under a distribution strategy its batch statistics are
    computed over the global batch, so training does not depend on the number of replicas. Its
    epsilon (1e-5) and momentum (0.9, i.e. PyTorch's 0.1) are PyTorch's `BatchNorm1d` defaults,
    as in the reference. Callers project each view in its own call, so that each view is
    normalized with its own batch statistics (see `MetaMAE.compute_losses`).

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
            momentum=0.9, epsilon=1e-5, synchronized=True, dtype=policy, name="batch_norm"
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
