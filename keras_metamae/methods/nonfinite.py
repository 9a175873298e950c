"""Skipping training steps whose loss or gradients are not finite.

One bad batch (an overflow in bfloat16, a corrupt example) must not write NaN into the
weights of a run that has trained for days. `NonFiniteGuard` wraps the real optimizer and
applies a step only when every gradient on every replica is finite; otherwise the step is
skipped (weights, optimizer slots and the step counter are left untouched) and counted.
`training.callbacks.StopOnNonFinite` ends training after `max_bad_steps` consecutive skipped
steps.

It reuses Keras' `LossScaleOptimizer`, which already implements "apply only if finite"
correctly under a distribution strategy (the branch runs in cross-replica context); with
`loss_scaling=False` (float32, bfloat16) the loss scale stays exactly 1.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_metamae")
class NonFiniteGuard(keras.optimizers.LossScaleOptimizer):
    """Applies `inner_optimizer` only on finite steps; counts the skipped ones.

    Args:
        inner_optimizer: the optimizer that does the update.
        loss_scaling: dynamic loss scaling as in `LossScaleOptimizer` (for float16).
    """

    def __init__(self, inner_optimizer, loss_scaling: bool = False, **kwargs):
        if not loss_scaling:
            kwargs["initial_scale"] = 1.0
        super().__init__(inner_optimizer, **kwargs)
        self.loss_scaling = loss_scaling

    def build(self, var_list):
        super().build(var_list)
        self.skipped_steps = self.add_variable(
            (), initializer="zeros", dtype="int64", name="skipped_steps",
            aggregation="only_first_replica")
        self.consecutive_skipped_steps = self.add_variable(
            (), initializer="zeros", dtype="int64", name="consecutive_skipped_steps",
            aggregation="only_first_replica")

    def _stateful_handle_finite_grads(self, grads, trainable_variables):
        self.consecutive_skipped_steps.assign(0)
        if self.loss_scaling:
            super()._stateful_handle_finite_grads(grads, trainable_variables)
        else:
            self.inner_optimizer.apply(grads, trainable_variables=trainable_variables)

    def _stateful_handle_non_finite_grads(self):
        self.skipped_steps.assign_add(1)
        self.consecutive_skipped_steps.assign_add(1)
        if self.loss_scaling:
            super()._stateful_handle_non_finite_grads()

    def get_config(self):
        config = super().get_config()
        config["loss_scaling"] = self.loss_scaling
        return config


def agree_on_finite(loss, gradients):
    """Gradients to hand to `NonFiniteGuard`: unchanged if the loss and every gradient on every
    replica are finite, otherwise NaN on all replicas, so that all of them skip together.

    (Keras' loss-scale optimizer decides from the first replica's gradients alone.)
    """
    finite = tf.reduce_all(tf.math.is_finite(loss))
    for g in gradients:
        if g is not None:
            finite = tf.logical_and(finite, tf.reduce_all(tf.math.is_finite(g)))
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        bad = context.all_reduce("sum", 1.0 - tf.cast(finite, tf.float32))
        finite = tf.equal(bad, 0.0)
    return [
        g if g is None else tf.where(finite, g, tf.constant(float("nan"), g.dtype))
        for g in gradients
    ]
