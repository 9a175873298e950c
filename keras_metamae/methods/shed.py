"""`ShED`: the Shuffled Embedding Detection baseline of DABS (Tamkin et al. 2021) on the shared
encoder.

`--model shed`: an ELECTRA-like replaced-token detection without a generator: a share of each
example's token embeddings is shuffled among themselves, and a per-token binary head on the
encoder's outputs has to tell which tokens were moved.
"""

import keras
import tensorflow as tf

from keras_metamae.methods.base import PretrainingMethod
from keras_metamae.models.masking import num_masked


@keras.saving.register_keras_serializable(package="keras_metamae")
class ShED(PretrainingMethod):
    """Shuffled embedding detection: `loss` = cross-entropy of "was this token replaced".

    One training step, per example of the batch:
    1. `E = embed(tokens)`, `[T, embed_dim]` token embeddings before positions.
    2. `k = ceil(corruption_rate * T)` positions are chosen: the top-k of the example's
       uniform noise, in decreasing order of noise, `c_0, ..., c_{k-1}`.
    3. The chosen embeddings are rotated by one along that list (a single-cycle derangement
       when k >= 2): position `c_j` receives the embedding of `c_{j-1}` (`c_0` that of
       `c_{k-1}`); the other positions keep their own. With k = 1 the chosen token keeps its
       own embedding but is still labelled replaced, as in DABS.
    4. The result is encoded (positions, CLS, blocks, final norm) and a `Dense(2)` head on
       every non-CLS output token predicts whether the token was replaced (label 1 at the k
       chosen positions, 0 elsewhere).
    5. `loss` = mean over all B * T tokens of the two-way cross-entropy.

    The shuffle is a gather of E at a per-example permutation of the positions, so the loss
    is differentiable w.r.t. the token embeddings, moved or not. k is computed as DABS does
    (`ceil(T * corruption_rate)` in float64 arithmetic).

    Randomness comes from the batch's `"shuffle_noise"` (uniform `[B, T]`).

    The head's logits and the loss are computed in float32 under a mixed-precision policy
    (float64 under a float64 policy).

    Logged metrics: `loss`, `detection_accuracy` (share of the B * T tokens whose predicted
    class is their label).

    Args (besides `PretrainingMethod`'s):
        corruption_rate: float in (0, 1], share of each example's tokens that are shuffled
            (DABS's `corruption_rate`, 0.15).
    """

    method_name = "shed"
    metric_names = ("loss", "detection_accuracy")
    noise_keys = ("shuffle_noise",)

    def __init__(self, num_tokens, token_grid, corruption_rate=0.15, **kwargs):
        self.corruption_rate = float(corruption_rate)
        if not 0.0 < self.corruption_rate <= 1.0:
            raise ValueError(f"ShED: corruption_rate={corruption_rate} must be in (0, 1]")
        super().__init__(num_tokens, token_grid, **kwargs)
        self.build_networks()

    def build_objective_layers(self):
        # Per-token predictor: replaced or not.
        self.head = keras.layers.Dense(2, dtype=self.dtype_policy, name="head")

    def build_objective(self):
        if not self.head.built:
            self.head.build((None, None, self.embed_dim))

    @property
    def num_shuffled(self):
        """k, the number of shuffled tokens per example (at most T)."""
        return num_masked(self.num_tokens, self.corruption_rate)

    # === the corrupted view ===
    def shuffle_indices(self, shuffle_noise):
        """`(source, replaced)`: `[B, T]` int32, the position whose embedding each position
        receives (a permutation of `0..T-1` per example), and `[B, T]` int32, 1 at the k
        chosen positions."""
        num_tokens = self.num_tokens
        chosen = tf.math.top_k(shuffle_noise, k=self.num_shuffled, sorted=True).indices
        rotated = tf.roll(chosen, shift=1, axis=1)  # c_{j-1} for c_j
        one_hot = tf.one_hot(chosen, num_tokens, dtype=tf.int32)  # [B, k, T]
        positions = tf.range(num_tokens, dtype=tf.int32)[None, :]
        # Each position appears at most once among the chosen: the sum picks its own offset.
        offset = tf.reduce_sum(one_hot * (rotated - chosen)[:, :, None], axis=1)
        replaced = tf.reduce_sum(one_hot, axis=1)
        return positions + offset, replaced

    def shuffle_embeddings(self, embeddings, source):
        """`E` with each position's embedding taken from `source` (`[B, T, embed_dim]`)."""
        return tf.gather(embeddings, source, batch_dims=1)

    def detection_logits(self, embeddings, training):
        """`[B, T, 2]` logits (loss dtype) of "replaced" for each token of the encoded view."""
        latent = self.encoder.encode_embeddings(embeddings, training=training)
        return tf.cast(self.head(latent[:, 1:, :]), self.loss_dtype)

    # === objective ===
    def compute_losses(self, tokens, shuffle_noise, training=False):
        """The ShED loss of a batch for given shuffling noise.

        Args:
            tokens: `[B, T, token_dim]` float or `[B, T]` int tokens.
            shuffle_noise: `[B, T]` uniform noise choosing the shuffled positions.
            training: bool, dropout in training mode.

        Returns:
            dict of scalars: `loss`, `detection_accuracy`.
        """
        embeddings = self.encoder.embed_tokens(tokens)
        source, replaced = self.shuffle_indices(shuffle_noise)
        logits = self.detection_logits(self.shuffle_embeddings(embeddings, source), training)
        loss = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=replaced, logits=logits)
        )
        predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
        accuracy = tf.reduce_mean(tf.cast(tf.equal(predicted, replaced), tf.float32))
        return {"loss": loss, "detection_accuracy": accuracy}

    def get_config(self):
        config = super().get_config()
        config.update({"corruption_rate": self.corruption_rate})
        return config
