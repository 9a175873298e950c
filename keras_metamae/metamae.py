"""`MetaMAE`: the Keras model whose `train_step` implements paper Algorithm 1 (Eq. 1-5)."""

import keras
import tensorflow as tf

from keras_metamae import losses as losses_lib
from keras_metamae import masking
from keras_metamae.model import Decoder
from keras_metamae.model import Encoder
from keras_metamae.model import Projector
from keras_metamae.model import normalize_segments
from keras_metamae.model import packed_width
from keras_metamae.model import split_segments
from keras_metamae.nonfinite import NonFiniteGuard
from keras_metamae.nonfinite import agree_on_finite

METHODS = ("metamae", "mae")

# Version of the set of weights a MetaMAE holds, recorded with every checkpoint (see
# `checkpoints.CheckpointManager`) so that a workdir written by an incompatible version is
# refused with a clear message instead of failing to load. History:
# 1: attention qkv bias and a bias on the tied vocabulary head.
# 2: neither (the reference's timm blocks with qkv_bias=False; logits = h @ E^T).
WEIGHTS_FORMAT = 2


@keras.saving.register_keras_serializable(package="keras_metamae")
class MetaMAE(keras.Model):
    """Meta-learned masked auto-encoder (Jang et al., NeurIPS 2023) and its MAE baseline.

    One training step (`method="metamae"`), per example of the batch:
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

    `method="mae"`: `loss` = reconstruction error of the masked tokens from `g_phi(Z)`; no
    adaptation, no contrast, no projector.

    `decoder_depth=0` is the DABS-2.0 MAE with a linear decoder: the encoder sees all T tokens,
    the masked ones replaced by a learned mask embedding (BERT style), and g_phi is a per-token
    linear head on the encoder's outputs (tied vocabulary head for discrete tokens). With
    `method="metamae"`, Z then covers all T positions (the adaptation and the pooled
    representations use all of them).

    Reconstruction error per token: mean squared error over the token's values (continuous
    tokens `[B, T, token_dim]` float32) or cross-entropy against the vocabulary logits (discrete
    tokens `[B, T]` int64). Losses and the inner gradient are computed in float32 under a
    mixed-precision policy (float64 under a float64 policy).

    Batches: a dict with `"tokens"` and optionally `"mask_noise"` and `"nearby_noise"`
    (uniform `[B, T]` noise fixing the masks); without them noise is drawn from the model's
    `keras.random.SeedGenerator(seed)` (different on each replica). Other keys (`"label"`) are
    ignored. `call(tokens)` returns the encoder features `[B, embed_dim]`.

    Mixed-token sequences (`segments`, e.g. image patches + caption words, DABS mscoco): the
    tokens are the packed float `[B, T, token_dim]` tensor of `preprocessing/spec.py`
    (`token_dim` = the packed width, `vocab_size` = 0, `token_grid` = `[T]`). Masking is over
    the whole sequence; the encoder embeds each segment with its own embedding plus a learned
    modality embedding and per-segment sin-cos positions; the decoder has one head per segment
    (continuous values, or tied-embedding vocabulary logits); the reconstruction loss is the
    sum over segments of the mean error over that segment's target tokens (MSE for image
    tokens + cross-entropy for text tokens, see `losses.segmented_reconstruction_loss`);
    Nearby-S neighbours are taken within each segment's own grid. The inner step, the
    contrastive loss and the rest of the step are unchanged.

    Logged metrics: `loss`, `reconstruction_loss` (L_grad, or the MAE loss), and for metamae
    `contrastive_loss`, `contrastive_accuracy`, `inner_loss_before` and `inner_loss_after` (the
    inner loss per example, i.e. the mean over the batch of each example's error on S~, from
    Z and from Z*).

    Args:
        num_tokens: int, tokens per example T.
        token_grid: list of 1 or 2 ints, token layout (position embeddings, Nearby-S).
        token_dim: int, values per continuous token (0 for discrete tokens).
        vocab_size: int, vocabulary of discrete tokens (0 for continuous tokens).
        embed_dim: int, encoder width.
        encoder_depth: int, encoder blocks.
        encoder_heads: int, encoder attention heads.
        encoder_mlp_dim: int, encoder MLP width.
        dropout: float, encoder dropout P_drop.
        decoder_dim: int, decoder width.
        decoder_depth: int, decoder blocks (0: linear decoder, see above).
        decoder_heads: int, decoder attention heads.
        decoder_mlp_dim: int, decoder MLP width.
        projector_hidden_dim: int, projector hidden width.
        projector_dim: int, projector output width.
        method: `"metamae"` or `"mae"`.
        mask_ratio: float, fraction of masked tokens.
        inner_lr: float, alpha, step size of the latent adaptation.
        contrast_weight: float, lambda, weight of the task-contrastive loss.
        nearby_ratio: float, r, probability of adding each Nearby-S token to the support set.
        inner_steps: int, latent adaptation steps.
        first_order: bool, stop the gradient through the inner gradient.
        temperature: float, tau of the NT-Xent loss.
        seed: int or None, seed of the masking noise generator.
        segments: None (single-modality tokens), or the spec's list of segment dicts (see
            above and `model.normalize_segments`).
        **kwargs: `keras.Model` arguments (`name`, `dtype`).
    """

    weights_format = WEIGHTS_FORMAT

    def __init__(
        self,
        num_tokens,
        token_grid,
        token_dim=0,
        vocab_size=0,
        embed_dim=256,
        encoder_depth=12,
        encoder_heads=8,
        encoder_mlp_dim=512,
        dropout=0.0,
        decoder_dim=128,
        decoder_depth=4,
        decoder_heads=4,
        decoder_mlp_dim=256,
        projector_hidden_dim=1024,
        projector_dim=128,
        method="metamae",
        mask_ratio=0.85,
        inner_lr=0.5,
        contrast_weight=0.1,
        nearby_ratio=0.1,
        inner_steps=1,
        first_order=False,
        temperature=0.5,
        seed=None,
        segments=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        segments = normalize_segments(segments)
        if segments:
            total = sum(seg["num_tokens"] for seg in segments)
            if total != int(num_tokens) or list(token_grid) != [total] or int(vocab_size) != 0 \
                    or int(token_dim) != packed_width(segments):
                raise ValueError(
                    f"MetaMAE: with segments, num_tokens ({num_tokens}) must be their total "
                    f"({total}), token_grid ({list(token_grid)}) [{total}], vocab_size "
                    f"({vocab_size}) 0 and token_dim ({token_dim}) the packed width "
                    f"{packed_width(segments)}"
                )
        if method not in METHODS:
            raise ValueError(f"MetaMAE: method={method!r}, expected one of {METHODS}")
        if (int(token_dim) > 0) == (int(vocab_size) > 0):
            raise ValueError(
                f"MetaMAE: exactly one of token_dim ({token_dim}) and vocab_size "
                f"({vocab_size}) must be > 0"
            )
        grid_size = 1
        for g in token_grid:
            grid_size *= int(g)
        if len(token_grid) not in (1, 2) or grid_size != int(num_tokens):
            raise ValueError(
                f"MetaMAE: token_grid={list(token_grid)} must be 1-D or 2-D with product "
                f"num_tokens={num_tokens}"
            )
        if int(inner_steps) < 1 and method == "metamae":
            raise ValueError(f"MetaMAE: inner_steps={inner_steps} must be >= 1")
        self.num_tokens = int(num_tokens)
        self.token_grid = [int(g) for g in token_grid]
        self.token_dim = int(token_dim)
        self.vocab_size = int(vocab_size)
        self.embed_dim = int(embed_dim)
        self.encoder_depth = int(encoder_depth)
        self.encoder_heads = int(encoder_heads)
        self.encoder_mlp_dim = int(encoder_mlp_dim)
        self.dropout = float(dropout)
        self.decoder_dim = int(decoder_dim)
        self.decoder_depth = int(decoder_depth)
        self.decoder_heads = int(decoder_heads)
        self.decoder_mlp_dim = int(decoder_mlp_dim)
        self.projector_hidden_dim = int(projector_hidden_dim)
        self.projector_dim = int(projector_dim)
        self.method = method
        self.mask_ratio = float(mask_ratio)
        self.inner_lr = float(inner_lr)
        self.contrast_weight = float(contrast_weight)
        self.nearby_ratio = float(nearby_ratio)
        self.inner_steps = int(inner_steps)
        self.first_order = bool(first_order)
        self.temperature = float(temperature)
        self.seed = seed
        self.segments = segments

        policy = self.dtype_policy
        # f_theta
        self.encoder = Encoder(
            num_tokens=self.num_tokens,
            token_grid=self.token_grid,
            token_dim=self.token_dim,
            vocab_size=self.vocab_size,
            embed_dim=self.embed_dim,
            depth=self.encoder_depth,
            num_heads=self.encoder_heads,
            mlp_dim=self.encoder_mlp_dim,
            dropout=self.dropout,
            use_mask_token=self.decoder_depth == 0,
            segments=self.segments,
            dtype=policy,
            name="encoder",
        )
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
            dtype=policy,
            name="decoder",
        )
        # h_psi; the MAE baseline has no contrastive term, so no projector to leave untrained.
        self.projector = None
        if self.method == "metamae":
            self.projector = Projector(
                self.projector_hidden_dim, self.projector_dim, dtype=policy, name="projector"
            )
        self.seed_generator = keras.random.SeedGenerator(seed, name="masking_seed_generator")

        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.reconstruction_loss_tracker = keras.metrics.Mean(name="reconstruction_loss")
        self.contrastive_loss_tracker = keras.metrics.Mean(name="contrastive_loss")
        self.contrastive_accuracy_tracker = keras.metrics.Mean(name="contrastive_accuracy")
        self.inner_loss_before_tracker = keras.metrics.Mean(name="inner_loss_before")
        self.inner_loss_after_tracker = keras.metrics.Mean(name="inner_loss_after")

    # === properties ===
    @property
    def is_discrete(self):
        return self.vocab_size > 0

    @property
    def mask_grid(self):
        """The grid(s) of Nearby-S: `token_grid`, or the list of the segments' grids."""
        if self.segments:
            return [seg["token_grid"] for seg in self.segments]
        return self.token_grid

    @property
    def loss_dtype(self):
        """float32 under mixed precision (the variable dtype), float64 under float64."""
        return self.dtype_policy.variable_dtype

    @property
    def metrics(self):
        trackers = [self.loss_tracker, self.reconstruction_loss_tracker]
        if self.method == "metamae":
            trackers += [
                self.contrastive_loss_tracker,
                self.contrastive_accuracy_tracker,
                self.inner_loss_before_tracker,
                self.inner_loss_after_tracker,
            ]
        return trackers

    # === building ===
    def build(self, tokens_shape=None):
        """Creates every weight (encoder, decoder, projector) from the config alone, so that a
        call on tokens, `fit`'s symbolic build and `.keras` loading all build the whole model."""
        if not self.encoder.built:
            if self.is_discrete:
                self.encoder.build((None, self.num_tokens))
            else:
                self.encoder.build((None, self.num_tokens, self.token_dim))
        if not self.decoder.built:
            self.decoder.build((None, None, self.embed_dim))
        if self.projector is not None and not self.projector.built:
            self.projector.build((None, self.embed_dim))
        self.built = True

    def build_for_training(self, tokens=None):
        """Makes sure every weight used by `train_step` exists (see `build`)."""
        if not self.built:
            self.build()

    # === forward ===
    def call(self, tokens, training=None):
        """Encoder features `[B, embed_dim]` (mean of the non-CLS output tokens)."""
        if isinstance(tokens, dict):
            tokens = tokens["tokens"]
        return self.encoder.features(tokens, training=training)

    def _tied_embeddings(self):
        if self.segments:
            return [
                None if e is None else tf.convert_to_tensor(e)
                for e in self.encoder.tied_embeddings()
            ]
        if not self.is_discrete:
            return None
        return tf.convert_to_tensor(self.encoder.token_embedding.embeddings)

    def _encode(self, tokens, keep_indices, mask, training):
        """Z and the `keep_indices` argument the decoder needs with it."""
        if self.decoder_depth == 0:
            return self.encoder(tokens, token_mask=mask, training=training), None
        return self.encoder(tokens, keep_indices=keep_indices, training=training), keep_indices

    def _decode(self, latent, keep_indices, training):
        out = self.decoder(
            latent, keep_indices, embeddings=self._tied_embeddings(), training=training
        )
        return tf.nest.map_structure(lambda t: tf.cast(t, self.loss_dtype), out)

    def _segment_targets(self, tokens):
        return split_segments(tokens, self.segments), [seg["kind"] for seg in self.segments]

    def _per_example_error(self, tokens, predictions, target_mask):
        if self.segments:
            targets, kinds = self._segment_targets(tokens)
            return losses_lib.segmented_per_example_reconstruction_loss(
                targets, predictions, target_mask, kinds
            )
        return losses_lib.per_example_reconstruction_loss(
            tokens, predictions, target_mask, discrete=self.is_discrete
        )

    def _reconstruction_loss(self, tokens, predictions, target_mask):
        """Mean error over the batch's target tokens (per segment, summed, for segments)."""
        if self.segments:
            targets, kinds = self._segment_targets(tokens)
            return losses_lib.segmented_reconstruction_loss(
                targets, predictions, target_mask, kinds
            )
        return losses_lib.reconstruction_loss(
            tokens, predictions, target_mask, discrete=self.is_discrete
        )

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
                predictions = self._decode(z_star, keep_indices, training)
                # Summed over the batch: each example's latent gets the gradient of its own
                # mean error, whatever the batch size or the number of replicas.
                inner_loss = tf.reduce_sum(self._per_example_error(tokens, predictions, support))
            if inner_loss_before is None:
                inner_loss_before = inner_loss
            inner_grad = inner_tape.gradient(inner_loss, z_star)
            if first_order:
                inner_grad = tf.stop_gradient(inner_grad)
            z_star = z_star - self.inner_lr * inner_grad
        return z_star, inner_loss_before

    def compute_losses(self, tokens, mask_noise, nearby_noise=None, training=False):
        """All MetaMAE (or MAE) losses of a batch for given masking noise.

        Differentiable w.r.t. every weight (call it under a `tf.GradientTape`); the inner
        gradient is taken with a nested tape, so the result is second order unless
        `first_order`.

        Args:
            tokens: `[B, T, token_dim]` float or `[B, T]` int tokens.
            mask_noise: `[B, T]` uniform noise for the random masking.
            nearby_noise: `[B, T]` uniform noise for Nearby-S (metamae only).
            training: bool, dropout and BatchNorm in training mode.

        Returns:
            dict of scalars: `loss`, `reconstruction_loss` and, for metamae,
            `contrastive_loss`, `contrastive_accuracy`, `inner_loss_before`,
            `inner_loss_after` (the inner losses as per-example means, for logging).
        """
        keep_indices, mask = masking.random_masking(mask_noise, self.mask_ratio)
        latent, decoder_indices = self._encode(tokens, keep_indices, mask, training)
        z = tf.cast(latent, self.loss_dtype)

        if self.method == "mae":
            predictions = self._decode(z, decoder_indices, training)
            reconstruction = self._reconstruction_loss(tokens, predictions, mask)
            return {"loss": reconstruction, "reconstruction_loss": reconstruction}

        support = masking.support_mask(mask, self.mask_grid, nearby_noise, self.nearby_ratio)
        batch_size = tf.cast(tf.shape(z)[0], self.loss_dtype)
        z_star, inner_loss_before = self.adapt(
            z, tokens, support, decoder_indices, training=training
        )

        predictions = self._decode(z_star, decoder_indices, training)
        reconstruction = self._reconstruction_loss(tokens, predictions, mask)
        # The same predictions give the inner loss after adaptation (for logging only).
        inner_loss_after = tf.reduce_sum(
            self._per_example_error(
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

    # === noise ===
    def _draw_noise(self, shape):
        """Uniform `[B, T]` noise from the model's seed generator, different on each replica."""
        seed = tf.cast(self.seed_generator.next(), tf.int64)
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            replica = tf.cast(ctx.replica_id_in_sync_group, tf.int64)
            seed = seed + tf.stack([replica * 1_000_003, tf.constant(0, tf.int64)])
        return tf.random.stateless_uniform(shape, seed=seed, dtype=tf.float32)

    def _unpack(self, data):
        if isinstance(data, (tuple, list)):
            data = data[0]
        if not isinstance(data, dict):
            data = {"tokens": data}
        tokens = data["tokens"]
        shape = tf.shape(tokens)[:2]
        mask_noise = data.get("mask_noise")
        if mask_noise is None:
            mask_noise = self._draw_noise(shape)
        nearby_noise = data.get("nearby_noise")
        if nearby_noise is None and self.method == "metamae":
            nearby_noise = self._draw_noise(shape)
        # Static T: the number of kept tokens is a Python int.
        mask_noise = tf.ensure_shape(tf.cast(mask_noise, tf.float32), [None, self.num_tokens])
        if nearby_noise is not None:
            nearby_noise = tf.cast(nearby_noise, tf.float32)
        return tokens, mask_noise, nearby_noise

    # === steps ===
    def _update_trackers(self, losses):
        for tracker in self.metrics:
            tracker.update_state(losses[tracker.name])
        logs = {tracker.name: tracker.result() for tracker in self.metrics}
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras' fit fails to reduce scalar logs across workers (keras#20585): rank 1.
            logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs

    def train_step(self, data):
        # Without a distribution strategy Keras builds nothing before tracing this step; build
        # the whole model here so that it counts as built (saving needs it).
        self.build_for_training()
        tokens, mask_noise, nearby_noise = self._unpack(data)
        # Keras sums the gradients of the replicas: scale each replica's loss by 1/replicas so
        # the update is that of the global-batch mean.
        num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            losses = self.compute_losses(tokens, mask_noise, nearby_noise, training=True)
            scaled = self.optimizer.scale_loss(losses["loss"] / num_replicas)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)
        if isinstance(self.optimizer, NonFiniteGuard):
            # All replicas skip a step together when any of them saw a NaN/Inf.
            gradients = agree_on_finite(losses["loss"], gradients)
        self.optimizer.apply(gradients, variables)
        return self._update_trackers(losses)

    def test_step(self, data):
        self.build_for_training()
        tokens, mask_noise, nearby_noise = self._unpack(data)
        losses = self.compute_losses(tokens, mask_noise, nearby_noise, training=False)
        return self._update_trackers(losses)

    def reconstruct(self, tokens, mask_noise=None):
        """Predictions of every token from a masked view (inference mode), for visualization.

        MetaMAE predicts from the adapted latent Z* (support set without Nearby-S tokens when
        no noise is given: only the visible tokens), MAE from Z.

        Args:
            tokens: `[B, T, token_dim]` or `[B, T]` tokens.
            mask_noise: optional `[B, T]` uniform noise; drawn from the seed generator if None.

        Returns:
            dict with `predictions` (`[B, T, token_dim]` values, or `[B, T, vocab_size]` logits
            for discrete tokens; for segments, a list of those, one per segment) and `mask` (`[B, T]` float32, 1.0 where masked).
        """
        tokens = tf.convert_to_tensor(tokens)
        if mask_noise is None:
            mask_noise = self._draw_noise(tf.shape(tokens)[:2])
        mask_noise = tf.cast(mask_noise, tf.float32)
        keep_indices, mask = masking.random_masking(mask_noise, self.mask_ratio)
        latent, decoder_indices = self._encode(tokens, keep_indices, mask, False)
        z = tf.cast(latent, self.loss_dtype)
        if self.method == "metamae":
            z, _ = self.adapt(z, tokens, 1.0 - mask, decoder_indices, training=False)
        predictions = self._decode(z, decoder_indices, False)
        return {"predictions": predictions, "mask": mask}

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_tokens": self.num_tokens,
                "token_grid": self.token_grid,
                "token_dim": self.token_dim,
                "vocab_size": self.vocab_size,
                "embed_dim": self.embed_dim,
                "encoder_depth": self.encoder_depth,
                "encoder_heads": self.encoder_heads,
                "encoder_mlp_dim": self.encoder_mlp_dim,
                "dropout": self.dropout,
                "decoder_dim": self.decoder_dim,
                "decoder_depth": self.decoder_depth,
                "decoder_heads": self.decoder_heads,
                "decoder_mlp_dim": self.decoder_mlp_dim,
                "projector_hidden_dim": self.projector_hidden_dim,
                "projector_dim": self.projector_dim,
                "method": self.method,
                "mask_ratio": self.mask_ratio,
                "inner_lr": self.inner_lr,
                "contrast_weight": self.contrast_weight,
                "nearby_ratio": self.nearby_ratio,
                "inner_steps": self.inner_steps,
                "first_order": self.first_order,
                "temperature": self.temperature,
                "seed": self.seed,
                "segments": self.segments,
            }
        )
        return config
