"""`DABSMAE`: the DABS-2.0 masked auto-encoding baseline (BERT style) on the shared encoder.

`--model dabs-mae`: the "MAE" column of the MetaMAE paper's comparison with the DABS
baselines. Unlike `mae` (He et al. 2022), there is no decoder: a random share of the token
embeddings is zeroed, the encoder sees all T positions, and a per-token head predicts the
masked tokens from the encoder's output.
"""

import keras
import tensorflow as tf

from keras_metamae.methods.base import PretrainingMethod
from keras_metamae.models.losses import l2_error, masked_mean
from keras_metamae.models.masking import top_k_mask, zero_masked
from keras_metamae.models.segments import split_segments


@keras.saving.register_keras_serializable(package="keras_metamae")
class DABSMAE(PretrainingMethod):
    """DABS-2.0 masked auto-encoding: `loss` = error of the zeroed tokens predicted from f_theta.

    One step, per example of the batch (DABS's `MAESystem`):
    1. Masking: the `ceil(mask_ratio * T)` tokens with the largest `mask_noise` are masked
       (see `top_k_mask`); their token embeddings (`embed_tokens`, before positions) are set
       to zero.
    2. Encoding: all T embeddings go through the encoder (positions, CLS, blocks, final norm):
       `Z = f_theta(...)`, `[B, 1 + T, embed_dim]`.
    3. Prediction, per non-CLS output token of a masked position:
       - continuous tokens: `Dense(token_dim)(ReLU(z))` (the `head`); the error is the
         un-squared Euclidean distance to the token's raw values;
       - discrete tokens: vocabulary logits `z @ E^T` with E the encoder's own token embedding
         matrix (tied, no extra weights); the error is the cross-entropy against the token id.
       `loss` is the mean error over the batch's masked tokens.

    Mixed-token sequences (`segments`, e.g. image patches + caption words, DABS mscoco): the
    tokens are the packed float `[B, T, token_dim]` tensor of `preprocessing/spec.py`; masking
    is over the whole sequence; each continuous segment has its own head, each discrete one
    its own tied matrix; the loss is the mean over segments of each segment's mean error over
    its masked tokens (DABS: `(img_loss + text_loss) / 2`). A segment with no masked token in
    the batch contributes 0.

    Losses are computed in float32 under a mixed-precision policy (float64 under a float64
    policy). Batches may carry `"mask_noise"` (uniform `[B, T]` noise fixing the masks).

    Logged metrics: `loss`, `reconstruction_loss` (the same value).

    Args (besides `PretrainingMethod`'s):
        mask_ratio: float, share of tokens masked per example (rounded up).
    """

    method_name = "dabs-mae"
    metric_names = ("loss", "reconstruction_loss")
    noise_keys = ("mask_noise",)

    def __init__(self, num_tokens, token_grid, mask_ratio=0.85, **kwargs):
        super().__init__(num_tokens, token_grid, **kwargs)
        self.mask_ratio = float(mask_ratio)
        self.build_networks()

    # === the heads ===
    def _parts(self):
        """`(kind, token_dim)` of each part of the sequence: the segments, or the one kind."""
        if self.segments:
            return [(seg["kind"], seg["token_dim"]) for seg in self.segments]
        return [("discrete", 0) if self.is_discrete else ("continuous", self.token_dim)]

    def build_objective_layers(self):
        # One head per continuous part (none for discrete tokens: their head is tied).
        names = [seg["name"] for seg in self.segments] if self.segments else [None]
        self.heads = [
            keras.layers.Dense(
                dim, dtype=self.dtype_policy, name="head" if name is None else f"head_{name}"
            )
            for (kind, dim), name in zip(self._parts(), names)
            if kind == "continuous"
        ]

    def build_objective(self):
        for head in self.heads:
            if not head.built:
                head.build((None, None, self.embed_dim))

    def tied_embeddings(self):
        """The encoder's `[vocab, embed_dim]` matrix of each part (None for continuous)."""
        if self.segments:
            return self.encoder.tied_embeddings()
        return [self.encoder.token_embedding.embeddings if self.is_discrete else None]

    # === forward ===
    def encode(self, tokens, mask, training):
        """`Z`, `[B, 1 + T, embed_dim]`: the encoder on all T token embeddings, those where
        `mask` `[B, T]` is 1.0 zeroed."""
        embeddings = self.encoder.embed_tokens(tokens)
        return self.encoder.encode_embeddings(zero_masked(embeddings, mask), training=training)

    def predict_parts(self, latent):
        """Per part (segment, or the single modality), in the loss dtype: `[B, n, token_dim]`
        predicted values of a continuous part, `[B, n, vocab]` logits of a discrete one."""
        outputs = latent[:, 1:]
        heads = iter(self.heads)
        predictions, start = [], 0
        for (kind, _), matrix, size in zip(self._parts(), self.tied_embeddings(),
                                           self._part_sizes()):
            z = outputs[:, start:start + size]
            start += size
            if kind == "continuous":
                out = next(heads)(tf.nn.relu(z))
            else:
                out = tf.einsum("btd,vd->btv", z, tf.cast(matrix, z.dtype))
            predictions.append(tf.cast(out, self.loss_dtype))
        return predictions

    def _part_sizes(self):
        if self.segments:
            return [seg["num_tokens"] for seg in self.segments]
        return [self.num_tokens]

    def _targets(self, tokens):
        if self.segments:
            return split_segments(tokens, self.segments)
        return [tokens]

    # === objective ===
    def part_losses(self, tokens, predictions, mask):
        """Per part: the mean error over the batch's masked tokens of that part."""
        masks = tf.split(mask, self._part_sizes(), axis=1)
        out = []
        for (kind, _), target, prediction, part_mask in zip(
                self._parts(), self._targets(tokens), predictions, masks):
            if kind == "continuous":
                error = l2_error(target, prediction)
            else:
                error = tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels=tf.cast(target, tf.int32), logits=prediction
                )
            out.append(masked_mean(error, part_mask))
        return out

    def compute_losses(self, tokens, mask_noise, training=False):
        """`loss` = `reconstruction_loss`: the mean over parts of the masked tokens' error."""
        mask = top_k_mask(mask_noise, self.mask_ratio)
        latent = self.encode(tokens, mask, training)
        parts = self.part_losses(tokens, self.predict_parts(latent), mask)
        loss = tf.add_n(parts) / float(len(parts))
        return {"loss": loss, "reconstruction_loss": loss}

    def reconstruct(self, tokens, mask_noise=None):
        """Predictions of every token from a masked view (inference mode), for visualization:
        what `MAE.reconstruct` returns, the mask being DABS's top-k one."""
        tokens = tf.convert_to_tensor(tokens)
        if mask_noise is None:
            mask_noise = self.draw_noise(tf.shape(tokens)[:2], self.evaluation_seed_generator)
        mask = top_k_mask(tf.cast(mask_noise, tf.float32), self.mask_ratio)
        predictions = self.predict_parts(self.encode(tokens, mask, False))
        if not self.segments:
            predictions = predictions[0]
        return {"predictions": predictions, "mask": mask}

    def get_config(self):
        config = super().get_config()
        config.update({"mask_ratio": self.mask_ratio})
        return config
