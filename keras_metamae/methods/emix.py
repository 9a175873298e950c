"""`EMix`: the e-Mix baseline of DABS (Tamkin et al. 2021) on the shared encoder.

`--model emix`: i-Mix (Lee et al. 2021) without domain augmentations: each example's token
embeddings are mixed with those of another example of the batch, and the mixed view has to
find, among the clean views of the batch, both of the examples it was made from, in
proportion to their mixing coefficients.
"""

import keras
import tensorflow as tf

from keras_metamae.methods.base import PretrainingMethod
from keras_metamae.models import losses as losses_lib
from keras_metamae.models.layers import LayerNorm


@keras.saving.register_keras_serializable(package="keras_metamae")
class EMix(PretrainingMethod):
    """e-Mix: i-Mix on embeddings; `loss` = the mixed contrastive cross-entropy.

    One training step on a batch of B examples:
    1. `E = embed(tokens)`, `[B, T, embed_dim]` token embeddings before positions.
    2. Per example a mixing coefficient `lambda_i ~ Beta(1, 1)` (i.e. Uniform(0, 1)), raised to
       `max(lambda_i, 1 - lambda_i)` so that each mix is dominated by its own example, and a
       random permutation pi of the batch.
    3. `E_mix_i = lambda_i * E_i + (1 - lambda_i) * stop_gradient(E_pi(i))`: the partner's
       embeddings take no gradient.
    4. Both `E_mix` and `E` are encoded (positions, CLS, blocks, final norm), each pooled as the
       mean of its non-CLS output tokens (the evaluation features), and projected by one head
       shared by both views, `LayerNorm -> Dense(head_dim)`; the outputs are L2-normalized
       (`u` for the mixed view, `v` for the clean one).
    5. `logits = u @ v^T / TEMPERATURE` (`[B, B]`: each mixed view against every clean view)
       and `loss = mean_i(lambda_i * CE(logits_i, i) + (1 - lambda_i) * CE(logits_i, pi(i)))`.

    DABS's docstring states the loss as the unweighted sum of the two cross-entropies; its code
    weights them by `lambda_i` and `1 - lambda_i`, which is what is done here, per example.
    (DABS's code broadcasts a `[B, 1, 1]` coefficient against the `[B]` cross-entropies, so its
    mean pairs every coefficient with every example's cross-entropy; the per-example weighting
    here is the one its docstring and i-Mix describe.) Pooling leaves out the CLS output, as
    `Encoder.features` does (DABS's mean pooling includes it). Under a distribution strategy
    each replica mixes and contrasts within its own batch, as DABS does under DDP.

    Randomness comes from the batch's `"mix_noise"` (uniform `[B, T]`, T >= 2): its column 0
    is the uniform draw of `lambda`, the `argsort` of its column 1 the permutation pi.

    The head and the loss are computed in float32 under a mixed-precision policy (float64
    under a float64 policy).

    Logged metrics: `loss`, `contrastive_accuracy` (share of mixed views whose most similar
    clean view is their own example's).

    Args (besides `PretrainingMethod`'s):
        head_dim: int, output width of the projection head (DABS's `out_dim`, 128).
    """

    method_name = "emix"
    metric_names = ("loss", "contrastive_accuracy")
    noise_keys = ("mix_noise",)
    # Softmax temperature of the logits (DABS's `TEMPERATURE`).
    TEMPERATURE = 0.2

    def __init__(self, num_tokens, token_grid, head_dim=128, **kwargs):
        self.head_dim = int(head_dim)
        super().__init__(num_tokens, token_grid, **kwargs)
        if self.num_tokens < 2:
            raise ValueError(
                f"EMix: num_tokens={num_tokens} must be >= 2 (the mixing noise uses two "
                "columns of the [B, T] noise)"
            )
        self.build_networks()

    def build_objective_layers(self):
        # The projection head on the pooled features, shared by the mixed and the clean view.
        self.head_norm = LayerNorm(dtype=self.dtype_policy, name="head_norm")
        self.head = keras.layers.Dense(self.head_dim, dtype=self.dtype_policy, name="head")

    def build_objective(self):
        if not self.head_norm.built:
            self.head_norm.build((None, self.embed_dim))
        if not self.head.built:
            self.head.build((None, self.embed_dim))

    # === the two views ===
    def mixing(self, mix_noise):
        """`(lambda, pi)` of a batch: `[B]` coefficients in [0.5, 1] (loss dtype) and the
        `[B]` int32 permutation, from the `[B, T]` uniform noise."""
        coefficient = tf.cast(mix_noise[:, 0], self.loss_dtype)
        coefficient = tf.maximum(coefficient, 1.0 - coefficient)
        permutation = tf.cast(tf.argsort(mix_noise[:, 1], axis=-1), tf.int32)
        return coefficient, permutation

    def partner_embeddings(self, embeddings, permutation):
        """`stop_gradient(E[pi])`: the embeddings each example is mixed with."""
        return tf.stop_gradient(tf.gather(embeddings, permutation))

    def mix_embeddings(self, embeddings, coefficient, permutation):
        """`lambda * E + (1 - lambda) * stop_gradient(E[pi])`, `[B, T, embed_dim]`."""
        lam = tf.cast(coefficient, embeddings.dtype)[:, None, None]
        partner = self.partner_embeddings(embeddings, permutation)
        return lam * embeddings + (1.0 - lam) * partner

    def project(self, embeddings, training):
        """L2-normalized head output `[B, head_dim]` (loss dtype) of token embeddings: encoded,
        mean of the non-CLS outputs, head."""
        latent = self.encoder.encode_embeddings(embeddings, training=training)
        pooled = tf.reduce_mean(latent[:, 1:, :], axis=1)
        out = tf.cast(self.head(self.head_norm(pooled)), self.loss_dtype)
        return tf.math.l2_normalize(out, axis=-1)

    # === objective ===
    def compute_losses(self, tokens, mix_noise, training=False):
        """The e-Mix loss of a batch for given mixing noise.

        Args:
            tokens: `[B, T, token_dim]` float or `[B, T]` int tokens.
            mix_noise: `[B, T]` uniform noise (column 0: lambda, column 1: the permutation).
            training: bool, dropout in training mode.

        Returns:
            dict of scalars: `loss`, `contrastive_accuracy`.
        """
        embeddings = self.encoder.embed_tokens(tokens)
        coefficient, permutation = self.mixing(mix_noise)
        mixed = self.mix_embeddings(embeddings, coefficient, permutation)
        u = self.project(mixed, training)
        v = self.project(embeddings, training)
        # A Python float: converted in u.dtype (tf.cast would round it to float32 first).
        logits = tf.matmul(u, v, transpose_b=True) / self.TEMPERATURE
        rows = tf.range(tf.shape(logits)[0], dtype=tf.int32)
        own = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=rows, logits=logits)
        partner = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=permutation, logits=logits
        )
        loss = tf.reduce_mean(coefficient * own + (1.0 - coefficient) * partner)
        accuracy = losses_lib.contrastive_accuracy(logits, rows)
        return {"loss": loss, "contrastive_accuracy": accuracy}

    def get_config(self):
        config = super().get_config()
        config.update({"head_dim": self.head_dim})
        return config
