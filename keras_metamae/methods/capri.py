"""`Capri`: the DABS contrastive masked-prediction baseline on the shared encoder.

`--model capri`: DABS's contrastive prediction with the sequence's own tokens as negatives.
A small share of the token embeddings is zeroed, the encoder sees all T positions, and each
output token, through a linear predictor, must pick out its own position's input embedding
among all the embeddings of the same sequence.
"""

import keras
import tensorflow as tf

from keras_metamae.methods.base import PretrainingMethod
from keras_metamae.models import losses as losses_lib
from keras_metamae.models.masking import top_k_mask, zero_masked


@keras.saving.register_keras_serializable(package="keras_metamae")
class Capri(PretrainingMethod):
    """Contrastive prediction of masked embeddings: `loss` = in-sequence cross-entropy.

    One step, per example of the batch (DABS's `ContpredSystem` with `negatives='sequence'`,
    no normalization, one-sided loss, its defaults):
    1. Embedding: `e = embed_tokens(tokens)`, `[B, T, embed_dim]` (token embeddings without
       positions; plus modality embeddings for mixed-token `segments`).
    2. Masking: the `ceil(corruption_rate * T)` tokens with the largest `mask_noise` are
       masked (see `masking.top_k_mask`): their rows of `e` are set to zero.
    3. Encoding: `Z = f_theta(masked e)`, `[B, 1 + T, embed_dim]` (positions, CLS, blocks,
       final norm).
    4. Prediction: `p = Dense(embed_dim)(z)` (the `predictor`) for each non-CLS output token.
    5. `logits[b, i, j] = p[b, i] . e[b, j] / TEMPERATURE`: each position against every input
       embedding of its own sequence (the targets `e` are the unmasked embeddings, and the
       gradient flows into them too).
    6. `loss`: cross-entropy with target `j = i`, over every position (masked or not), mean
       over the B * T rows.

    Works on continuous `[B, T, token_dim]` and discrete `[B, T]` tokens alike. DABS reports
    that this objective can diverge on some datasets; the training step's non-finite guard
    deals with that, the loss itself is a stable log-softmax. Losses are computed in float32
    under a mixed-precision policy (float64 under a float64 policy). Batches may carry
    `"mask_noise"` (uniform `[B, T]` noise fixing the masks).

    Logged metrics: `loss`, `prediction_accuracy` (the share of rows whose largest logit is
    their own position).

    Args (besides `PretrainingMethod`'s):
        corruption_rate: float, share of tokens masked per example (rounded up).
    """

    method_name = "capri"
    metric_names = ("loss", "prediction_accuracy")
    noise_keys = ("mask_noise",)
    TEMPERATURE = 0.07

    def __init__(self, num_tokens, token_grid, corruption_rate=0.15, **kwargs):
        super().__init__(num_tokens, token_grid, **kwargs)
        self.corruption_rate = float(corruption_rate)
        self.build_networks()

    def build_objective_layers(self):
        self.predictor = keras.layers.Dense(
            self.embed_dim, dtype=self.dtype_policy, name="predictor"
        )

    def build_objective(self):
        if not self.predictor.built:
            self.predictor.build((None, None, self.embed_dim))

    # === objective ===
    def logits(self, tokens, mask, training=False):
        """`[B, T, T]` logits in the loss dtype: prediction of position i against the input
        embedding of position j of the same sequence, tokens where `mask` is 1.0 zeroed."""
        embeddings = self.encoder.embed_tokens(tokens)
        latent = self.encoder.encode_embeddings(zero_masked(embeddings, mask), training=training)
        predictions = tf.cast(self.predictor(latent[:, 1:]), self.loss_dtype)
        targets = tf.cast(embeddings, self.loss_dtype)
        # A Python float takes the tensor's dtype (tf.cast(0.07, ...) would round it to
        # float32 first).
        return tf.matmul(predictions, targets, transpose_b=True) / self.TEMPERATURE

    def compute_losses(self, tokens, mask_noise, training=False):
        """`loss`: cross-entropy of each position's own input embedding among its sequence's."""
        mask = top_k_mask(mask_noise, self.corruption_rate)
        logits = self.logits(tokens, mask, training)
        labels = tf.broadcast_to(tf.range(self.num_tokens), tf.shape(logits)[:2])
        # A log-softmax: stable for large logits.
        loss = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        )
        accuracy = losses_lib.contrastive_accuracy(logits, labels)
        return {"loss": loss, "prediction_accuracy": accuracy}

    def get_config(self):
        config = super().get_config()
        config.update({"corruption_rate": self.corruption_rate})
        return config
