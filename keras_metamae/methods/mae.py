"""`MAE`: the masked auto-encoder baseline (He et al. 2022) on the shared encoder.

`--model mae`: the paper's Table 4 row with the Transformer decoder (decoder ✓): the encoder
sees the visible tokens only, the decoder reconstructs the masked ones. `decoder_depth=0`
gives a linear decoder with BERT-style masking (the encoder sees all T tokens, the masked ones
replaced by a learned mask embedding).
"""

import keras
import tensorflow as tf

from keras_metamae.methods.base import PretrainingMethod
from keras_metamae.models import losses as losses_lib
from keras_metamae.models import masking
from keras_metamae.models.decoder import Decoder
from keras_metamae.models.segments import split_segments


@keras.saving.register_keras_serializable(package="keras_metamae")
class MAE(PretrainingMethod):
    """Masked auto-encoder: `loss` = reconstruction error of the masked tokens from g_phi(Z).

    Per example of the batch: random masking keeps `floor((1 - mask_ratio) * T)` tokens (the
    visible set S), `Z = f_theta(S)` (`[B, 1 + |S|, embed_dim]` with the CLS token), and the
    decoder g_phi predicts every token from Z.

    `decoder_depth=0` is the DABS-2.0-style linear decoder: the encoder sees all T tokens, the
    masked ones replaced by a learned mask embedding (BERT style), and g_phi is a per-token
    linear head on the encoder's outputs (tied vocabulary head for discrete tokens).

    Reconstruction error per token: mean squared error over the token's values (continuous
    tokens `[B, T, token_dim]` float32) or cross-entropy against the vocabulary logits (discrete
    tokens `[B, T]` int64). Losses are computed in float32 under a mixed-precision policy
    (float64 under a float64 policy).

    Mixed-token sequences (`segments`, e.g. image patches + caption words, DABS mscoco): the
    tokens are the packed float `[B, T, token_dim]` tensor of `preprocessing/spec.py`. Masking
    is over the whole sequence; the encoder embeds each segment with its own embedding plus a
    learned modality embedding and per-segment sin-cos positions; the decoder has one head per
    segment; the reconstruction loss is the sum over segments of the mean error over that
    segment's target tokens (see `losses.segmented_reconstruction_loss`).

    Logged metrics: `loss`, `reconstruction_loss` (the same value).

    Args (besides `PretrainingMethod`'s):
        decoder_dim: int, decoder width.
        decoder_depth: int, decoder blocks (0: linear decoder, see above).
        decoder_heads: int, decoder attention heads.
        decoder_mlp_dim: int, decoder MLP width.
        mask_ratio: float, fraction of masked tokens.
    """

    method_name = "mae"
    metric_names = ("loss", "reconstruction_loss")
    noise_keys = ("mask_noise",)

    def __init__(
        self,
        num_tokens,
        token_grid,
        decoder_dim=128,
        decoder_depth=4,
        decoder_heads=4,
        decoder_mlp_dim=256,
        mask_ratio=0.85,
        **kwargs,
    ):
        super().__init__(num_tokens, token_grid, **kwargs)
        self.decoder_dim = int(decoder_dim)
        self.decoder_depth = int(decoder_depth)
        self.decoder_heads = int(decoder_heads)
        self.decoder_mlp_dim = int(decoder_mlp_dim)
        self.mask_ratio = float(mask_ratio)
        self.build_networks(use_mask_token=self.decoder_depth == 0)

    def build_objective_layers(self):
        # g_phi (dropout 0, paper Table 7)
        self.decoder = Decoder(
            num_tokens=self.num_tokens,
            token_grid=self.token_grid,
            token_dim=self.token_dim,
            vocab_size=self.vocab_size,
            embed_dim=self.embed_dim,
            decoder_dim=self.decoder_dim,
            depth=self.decoder_depth,
            num_heads=self.decoder_heads,
            mlp_dim=self.decoder_mlp_dim,
            segments=self.segments,
            dtype=self.dtype_policy,
            name="decoder",
        )

    def build_objective(self):
        if not self.decoder.built:
            self.decoder.build((None, None, self.embed_dim))

    # === encoder and decoder ===
    def tied_embeddings(self):
        """The encoder's token embeddings the decoder's vocabulary heads are tied to."""
        if self.segments:
            return [
                None if e is None else tf.convert_to_tensor(e)
                for e in self.encoder.tied_embeddings()
            ]
        if not self.is_discrete:
            return None
        return tf.convert_to_tensor(self.encoder.token_embedding.embeddings)

    def encode(self, tokens, keep_indices, mask, training):
        """Z and the `keep_indices` argument the decoder needs with it."""
        if self.decoder_depth == 0:
            return self.encoder(tokens, token_mask=mask, training=training), None
        return self.encoder(tokens, keep_indices=keep_indices, training=training), keep_indices

    def decode(self, latent, keep_indices, training):
        out = self.decoder(
            latent, keep_indices, embeddings=self.tied_embeddings(), training=training
        )
        return tf.nest.map_structure(lambda t: tf.cast(t, self.loss_dtype), out)

    # === reconstruction errors ===
    def _segment_targets(self, tokens):
        return split_segments(tokens, self.segments), [seg["kind"] for seg in self.segments]

    def per_example_error(self, tokens, predictions, target_mask):
        """`[B]`: each example's mean error over its target tokens."""
        if self.segments:
            targets, kinds = self._segment_targets(tokens)
            return losses_lib.segmented_per_example_reconstruction_loss(
                targets, predictions, target_mask, kinds
            )
        return losses_lib.per_example_reconstruction_loss(
            tokens, predictions, target_mask, discrete=self.is_discrete
        )

    def reconstruction_loss(self, tokens, predictions, target_mask):
        """Mean error over the batch's target tokens (per segment, summed, for segments)."""
        if self.segments:
            targets, kinds = self._segment_targets(tokens)
            return losses_lib.segmented_reconstruction_loss(
                targets, predictions, target_mask, kinds
            )
        return losses_lib.reconstruction_loss(
            tokens, predictions, target_mask, discrete=self.is_discrete
        )

    # === objective ===
    def compute_losses(self, tokens, mask_noise, training=False):
        """`loss` = `reconstruction_loss`: the masked tokens' error from g_phi(Z)."""
        keep_indices, mask = masking.random_masking(mask_noise, self.mask_ratio)
        latent, decoder_indices = self.encode(tokens, keep_indices, mask, training)
        z = tf.cast(latent, self.loss_dtype)
        predictions = self.decode(z, decoder_indices, training)
        reconstruction = self.reconstruction_loss(tokens, predictions, mask)
        return {"loss": reconstruction, "reconstruction_loss": reconstruction}

    def predict_from_latent(self, z, tokens, mask, decoder_indices):
        """Predictions from the latent in inference mode (MetaMAE adapts it first)."""
        return self.decode(z, decoder_indices, False)

    def reconstruct(self, tokens, mask_noise=None):
        """Predictions of every token from a masked view (inference mode), for visualization.

        Args:
            tokens: `[B, T, token_dim]` or `[B, T]` tokens.
            mask_noise: optional `[B, T]` uniform noise; drawn from the evaluation generator if
                None (never from the training one).

        Returns:
            dict with `predictions` (`[B, T, token_dim]` values, or `[B, T, vocab_size]` logits
            for discrete tokens; for segments, a list of those, one per segment) and `mask`
            (`[B, T]` float32, 1.0 where masked).
        """
        tokens = tf.convert_to_tensor(tokens)
        if mask_noise is None:
            mask_noise = self.draw_noise(tf.shape(tokens)[:2], self.evaluation_seed_generator)
        mask_noise = tf.cast(mask_noise, tf.float32)
        keep_indices, mask = masking.random_masking(mask_noise, self.mask_ratio)
        latent, decoder_indices = self.encode(tokens, keep_indices, mask, False)
        z = tf.cast(latent, self.loss_dtype)
        predictions = self.predict_from_latent(z, tokens, mask, decoder_indices)
        return {"predictions": predictions, "mask": mask}

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "decoder_dim": self.decoder_dim,
                "decoder_depth": self.decoder_depth,
                "decoder_heads": self.decoder_heads,
                "decoder_mlp_dim": self.decoder_mlp_dim,
                "mask_ratio": self.mask_ratio,
            }
        )
        return config
