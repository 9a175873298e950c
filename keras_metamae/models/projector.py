"""The projector h_psi (paper Table 7) of the task-contrastive loss."""

import keras
from keras import ops

_PACKAGE = "keras_metamae"


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
