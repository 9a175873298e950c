"""`MetaMAE`: the Keras model whose `train_step` implements paper Algorithm 1 (Eq. 1-5)."""

import keras
import tensorflow as tf

from keras_metamae.methods.mae import MAE
from keras_metamae.models import losses as losses_lib
from keras_metamae.models import masking
from keras_metamae.models.projector import Projector


@keras.saving.register_keras_serializable(package="keras_metamae")
class MetaMAE(MAE):
    """Meta-learned masked auto-encoder (Jang et al., NeurIPS 2023).

    One training step, per example of the batch:
    1. Random masking: keep `floor((1 - mask_ratio) * T)` tokens (the support set S), the rest
       is the query set Q.
    2. Amortization: `Z = f_theta(S)`, `[1 + |S|, embed_dim]` with the CLS token.
    3. Latent adaptation (Eq. 2): with the support set `S~ = S + Nearby-S` (masked grid
       neighbours of visible tokens, each with probability `nearby_ratio`),
       `Z* = Z - alpha * dL_inner/dZ`, where `L_inner` is the reconstruction error of `S~` from
       `g_phi(Z)`: the mean over each example's `S~` tokens, summed over the batch, so that each
       example's latent takes its own gradient step, independent of batch size and replicas.
       Repeated `inner_steps` times; the whole latent (CLS included) is updated. The outer
       gradient goes through this inner gradient (second order) unless `first_order=True`.
    4. `L_grad`: reconstruction error of the masked tokens from `g_phi(Z*)` (mean over masked
       tokens).
    5. `L_con` (Eq. 3-4): symmetric NT-Xent (temperature `temperature`) between
       `h_psi(mean of non-CLS Z)` and `h_psi(mean of non-CLS Z*)` over the (global) batch;
       h_psi is called once per view, so its BatchNorm normalizes each view with that view's
       own (global-batch) statistics, as in the reference.
    6. `loss = L_grad + contrast_weight * L_con` (Eq. 5).

    The encoder, decoder, masking and reconstruction errors are `MAE`'s (see there for the
    linear decoder, discrete tokens and mixed-token `segments`). With `decoder_depth=0`, Z
    covers all T positions (the adaptation and the pooled representations use all of them).
    With segments, Nearby-S neighbours are taken within each segment's own grid.

    Batches may carry `"mask_noise"` and `"nearby_noise"` (uniform `[B, T]` noise fixing the
    masks).

    Logged metrics: `loss`, `reconstruction_loss` (L_grad), `contrastive_loss`,
    `contrastive_accuracy`, `inner_loss_before` and `inner_loss_after` (the inner loss per
    example, i.e. the mean over the batch of each example's error on S~, from Z and from Z*).

    Args (besides `MAE`'s):
        projector_hidden_dim: int, projector hidden width.
        projector_dim: int, projector output width.
        inner_lr: float, alpha, step size of the latent adaptation.
        contrast_weight: float, lambda, weight of the task-contrastive loss.
        nearby_ratio: float, r, probability of adding each Nearby-S token to the support set.
        inner_steps: int, latent adaptation steps.
        first_order: bool, stop the gradient through the inner gradient.
        temperature: float, tau of the NT-Xent loss.
    """

    method_name = "metamae"
    metric_names = ("loss", "reconstruction_loss", "contrastive_loss", "contrastive_accuracy",
                    "inner_loss_before", "inner_loss_after")
    noise_keys = ("mask_noise", "nearby_noise")

    def __init__(
        self,
        num_tokens,
        token_grid,
        projector_hidden_dim=1024,
        projector_dim=128,
        inner_lr=0.5,
        contrast_weight=0.1,
        nearby_ratio=0.1,
        inner_steps=1,
        first_order=False,
        temperature=0.5,
        **kwargs,
    ):
        if int(inner_steps) < 1:
            raise ValueError(f"MetaMAE: inner_steps={inner_steps} must be >= 1")
        # Stored before MAE's constructor, which creates the networks (the projector too).
        self.projector_hidden_dim = int(projector_hidden_dim)
        self.projector_dim = int(projector_dim)
        self.inner_lr = float(inner_lr)
        self.contrast_weight = float(contrast_weight)
        self.nearby_ratio = float(nearby_ratio)
        self.inner_steps = int(inner_steps)
        self.first_order = bool(first_order)
        self.temperature = float(temperature)
        super().__init__(num_tokens, token_grid, **kwargs)

    def build_objective_layers(self):
        super().build_objective_layers()
        # h_psi
        self.projector = Projector(
            self.projector_hidden_dim, self.projector_dim, dtype=self.dtype_policy,
            name="projector"
        )

    def build_objective(self):
        super().build_objective()
        if not self.projector.built:
            self.projector.build((None, self.embed_dim))

    @property
    def mask_grid(self):
        """The grid(s) of Nearby-S: `token_grid`, or the list of the segments' grids."""
        if self.segments:
            return [seg["token_grid"] for seg in self.segments]
        return self.token_grid

    def adapt(self, latent, tokens, support, keep_indices=None, training=False, first_order=None):
        """Latent adaptation (Eq. 2): `inner_steps` gradient steps on the latent.

        `Z <- Z - inner_lr * dL_inner/dZ` with `L_inner` the sum over the batch of each
        example's mean reconstruction error on its `support` tokens, so each example's latent
        moves by the gradient of its own loss only. The gradient is taken with a nested tape:
        under an enclosing tape the result is differentiable to second order, unless
        `first_order` (default: the model's `first_order`) stops the gradient through it.

        Args:
            latent: `[B, 1 + n, embed_dim]` Z in the loss dtype (CLS first; it is updated too).
            tokens: `[B, T, token_dim]` or `[B, T]` targets.
            support: `[B, T]` float, 1.0 on the support tokens S~.
            keep_indices: `[B, n]` positions of the latent tokens (None: all T positions).
            training: bool, decoder in training mode.
            first_order: bool or None.

        Returns:
            `(Z*, L_inner(Z))`.
        """
        first_order = self.first_order if first_order is None else first_order
        z_star = latent
        inner_loss_before = None
        for _ in range(self.inner_steps):
            # Only Z is differentiated: a tape that also watched the weights would build the
            # decoder's weight-gradient matmuls for nothing (a larger graph to trace).
            with tf.GradientTape(watch_accessed_variables=False) as inner_tape:
                inner_tape.watch(z_star)
                predictions = self.decode(z_star, keep_indices, training)
                # Summed over the batch: each example's latent gets the gradient of its own
                # mean error, whatever the batch size or the number of replicas.
                inner_loss = tf.reduce_sum(self.per_example_error(tokens, predictions, support))
            if inner_loss_before is None:
                inner_loss_before = inner_loss
            inner_grad = inner_tape.gradient(inner_loss, z_star)
            if first_order:
                inner_grad = tf.stop_gradient(inner_grad)
            z_star = z_star - self.inner_lr * inner_grad
        return z_star, inner_loss_before

    def compute_losses(self, tokens, mask_noise, nearby_noise=None, training=False):
        """All MetaMAE losses of a batch for given masking noise.

        Differentiable w.r.t. every weight (call it under a `tf.GradientTape`); the inner
        gradient is taken with a nested tape, so the result is second order unless
        `first_order`.

        Args:
            tokens: `[B, T, token_dim]` float or `[B, T]` int tokens.
            mask_noise: `[B, T]` uniform noise for the random masking.
            nearby_noise: `[B, T]` uniform noise for Nearby-S.
            training: bool, dropout and BatchNorm in training mode.

        Returns:
            dict of scalars: `loss`, `reconstruction_loss`, `contrastive_loss`,
            `contrastive_accuracy`, `inner_loss_before`, `inner_loss_after` (the inner losses
            as per-example means, for logging).
        """
        keep_indices, mask = masking.random_masking(mask_noise, self.mask_ratio)
        latent, decoder_indices = self.encode(tokens, keep_indices, mask, training)
        z = tf.cast(latent, self.loss_dtype)

        support = masking.support_mask(mask, self.mask_grid, nearby_noise, self.nearby_ratio)
        batch_size = tf.cast(tf.shape(z)[0], self.loss_dtype)
        z_star, inner_loss_before = self.adapt(
            z, tokens, support, decoder_indices, training=training
        )

        predictions = self.decode(z_star, decoder_indices, training)
        reconstruction = self.reconstruction_loss(tokens, predictions, mask)
        # The same predictions give the inner loss after adaptation (for logging only).
        inner_loss_after = tf.reduce_sum(
            self.per_example_error(
                tokens, tf.nest.map_structure(tf.stop_gradient, predictions), support
            )
        )

        pooled = tf.reduce_mean(z[:, 1:, :], axis=1)
        pooled_star = tf.reduce_mean(z_star[:, 1:, :], axis=1)
        # One projector call per view, as the reference does: each view's BatchNorm uses its
        # own batch statistics (never those of the 2B rows of both views together).
        view = tf.cast(self.projector(pooled, training=training), self.loss_dtype)
        view_star = tf.cast(self.projector(pooled_star, training=training), self.loss_dtype)
        contrastive, accuracy = losses_lib.nt_xent(view, view_star, self.temperature)

        loss = reconstruction + self.contrast_weight * contrastive
        return {
            "loss": loss,
            "reconstruction_loss": reconstruction,
            "contrastive_loss": contrastive,
            "contrastive_accuracy": accuracy,
            "inner_loss_before": tf.stop_gradient(inner_loss_before) / batch_size,
            "inner_loss_after": inner_loss_after / batch_size,
        }

    def predict_from_latent(self, z, tokens, mask, decoder_indices):
        """Predictions from the adapted latent Z* (support set: the visible tokens only,
        without Nearby-S tokens)."""
        z_star, _ = self.adapt(z, tokens, 1.0 - mask, decoder_indices, training=False)
        return self.decode(z_star, decoder_indices, False)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "projector_hidden_dim": self.projector_hidden_dim,
                "projector_dim": self.projector_dim,
                "inner_lr": self.inner_lr,
                "contrast_weight": self.contrast_weight,
                "nearby_ratio": self.nearby_ratio,
                "inner_steps": self.inner_steps,
                "first_order": self.first_order,
                "temperature": self.temperature,
            }
        )
        return config
