"""Learning-rate schedule: linear warm-up to the peak, then cosine decay to zero."""

from __future__ import annotations

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_metamae")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up for `warmup_steps`, then cosine decay over the remaining steps.

    Args:
        peak: learning rate at the end of warm-up.
        total_steps: step at which the rate reaches zero.
        warmup_steps: length of the linear warm-up.
    """

    def __init__(self, peak: float, total_steps: int, warmup_steps: int):
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(min(warmup_steps, max(total_steps - 1, 0)))

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = float(max(self.warmup_steps, 1))
        decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
        warm = self.peak * (step + 1.0) / warmup
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = 0.5 * self.peak * (1.0 + ops.cos(math.pi * progress))
        return ops.where(step < self.warmup_steps, warm, cosine)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps}
