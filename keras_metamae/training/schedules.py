"""Learning-rate schedules of the trainer: `constant` (the paper's recipe) and `warmup_cosine`.

Both are `LearningRateSchedule` objects, never a float: given a float, a Keras optimizer keeps
the rate in a variable that is saved with the checkpoint and restored over the configured value,
so a run resumed with another `--learning_rate` or `--lr_schedule` would silently keep the old
rate (or fail to load, the set of optimizer variables being different). With a schedule the rate
is always the resolved config's, and checkpoints of both schedules hold the same variables.
"""

from __future__ import annotations

import keras

SCHEDULES = ("constant", "warmup_cosine")


@keras.saving.register_keras_serializable(package="keras_metamae")
class ConstantLearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """The same rate at every step (Keras has no constant schedule object).

    Args:
        learning_rate: float, the rate.
    """

    def __init__(self, learning_rate: float):
        self.learning_rate = float(learning_rate)

    def __call__(self, step):
        return keras.ops.convert_to_tensor(self.learning_rate, "float32")

    def get_config(self):
        return {"learning_rate": self.learning_rate}


def learning_rate_schedule(name: str, peak: float, total_steps: int, warmup_steps: int = 0):
    """The schedule called `name`.

    - `constant`: `peak` at every step (AdamW at a constant 1e-4 in the paper and the reference).
    - `warmup_cosine`: Keras' `CosineDecay`: linear warm-up from 0 at step 0 to `peak` at
      `warmup_steps` (clipped to `total_steps - 1`), then cosine decay to 0 at `total_steps`.

    Args:
        name: one of `SCHEDULES`.
        peak: float, the (peak) learning rate.
        total_steps: int, training steps (end of the cosine decay).
        warmup_steps: int, warm-up length (`warmup_cosine` only).
    """
    if name == "constant":
        return ConstantLearningRate(peak)
    if name == "warmup_cosine":
        warmup = max(0, min(int(warmup_steps), int(total_steps) - 1))
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0,
            decay_steps=max(int(total_steps) - warmup, 1),
            warmup_target=float(peak),
            warmup_steps=warmup,
        )
    raise ValueError(f"learning-rate schedule {name!r}: expected one of {SCHEDULES}")
