"""Keras callbacks of the training entry point.

Keras "epochs" in `train.py` are chunks of `log_every` steps, so epoch-end hooks run at a
fixed step cadence; every summary is written at the true global step
(`optimizer.iterations`), which survives restarts.
"""

from __future__ import annotations

import math
import time

import keras
import numpy as np
import tensorflow as tf

from keras_metamae.checkpoints import CheckpointManager


def global_step(model) -> int:
    return int(model.optimizer.iterations.numpy())


def skipped_steps(model) -> int:
    """Steps skipped for a non-finite loss/gradient (0 without a NonFiniteGuard optimizer)."""
    variable = getattr(model.optimizer, "skipped_steps", None)
    return 0 if variable is None else int(variable.numpy())


def current_learning_rate(model) -> float:
    lr = model.optimizer.learning_rate
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        return float(lr(model.optimizer.iterations))
    return float(keras.ops.convert_to_numpy(lr))


class StopAtStep(keras.callbacks.Callback):
    """Stops training once the global step reaches `steps` (also mid-chunk)."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps = steps

    def on_train_batch_end(self, batch, logs=None):
        if global_step(self.model) >= self.steps:
            self.model.stop_training = True


class TensorBoardSummaries(keras.callbacks.Callback):
    """Scalars at the global step: every training/validation log, learning rate, steps/s."""

    def __init__(self, logdir: str, batch_size: int):
        super().__init__()
        self.train_writer = tf.summary.create_file_writer(f"{logdir}/train")
        self.val_writer = tf.summary.create_file_writer(f"{logdir}/validation")
        self.batch_size = batch_size
        self.history: list[dict] = []
        self._t0 = None
        self._step0 = None

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()
        self._step0 = global_step(self.model)

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        step = global_step(self.model)
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        steps_per_s = (step - self._step0) / elapsed
        record = {"step": step, "learning_rate": current_learning_rate(self.model),
                  "steps_per_second": steps_per_s,
                  "examples_per_second": steps_per_s * self.batch_size,
                  "skipped_steps": skipped_steps(self.model)}
        with self.train_writer.as_default(step=step):
            for key, value in logs.items():
                if not key.startswith("val_"):
                    tf.summary.scalar(key, _scalar(value))
                    record[key] = _scalar(value)
            for key in ("learning_rate", "steps_per_second", "examples_per_second",
                        "skipped_steps"):
                tf.summary.scalar(key, record[key])
        with self.val_writer.as_default(step=step):
            for key, value in logs.items():
                if key.startswith("val_"):
                    tf.summary.scalar(key[4:], _scalar(value))
                    record[key] = _scalar(value)
        self.train_writer.flush()
        self.val_writer.flush()
        self.history.append(record)


def _scalar(value) -> float:
    return float(np.mean(keras.ops.convert_to_numpy(value)))


class ReconstructionImages(keras.callbacks.Callback):
    """Writes input | masked input | reconstruction image grids for image-like datasets.

    Targets and predictions are de-normalized with the dataset's own statistics and
    un-patchified with the pipeline's tokenizer, so what TensorBoard shows is the data.
    """

    def __init__(self, logdir: str, spec, tokens, every_epochs: int = 1, max_images: int = 4):
        super().__init__()
        from preprocessing import tokenize

        self.tokenize = tokenize
        self.writer = tf.summary.create_file_writer(f"{logdir}/train")
        self.spec = spec
        self.tokens = tokens[:max_images]
        self.every = every_epochs
        noise_rng = np.random.default_rng(0)
        # A fixed mask, so images at different steps are comparable.
        self.mask_noise = noise_rng.uniform(size=self.tokens.shape[:2]).astype("float32")

    def _to_image(self, tokens):
        raw = self.tokenize.tokens_to_raw(tf.convert_to_tensor(tokens, tf.float32), self.spec)
        raw = tf.convert_to_tensor(raw)
        if raw.shape[-1] not in (1, 3):  # multispectral: show the first three bands
            raw = raw[..., :3]
        low = tf.reduce_min(raw, axis=[1, 2, 3], keepdims=True)
        high = tf.reduce_max(raw, axis=[1, 2, 3], keepdims=True)
        return (raw - low) / tf.maximum(high - low, 1e-6)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        out = self.model.reconstruct(self.tokens, mask_noise=self.mask_noise)
        mask = keras.ops.convert_to_numpy(out["mask"])[..., None]
        predictions = keras.ops.convert_to_numpy(out["predictions"]).astype("float32")
        target = np.asarray(self.tokens, "float32")
        masked_input = np.where(mask > 0, 0.0, target)
        filled = np.where(mask > 0, predictions, target)
        rows = [self._to_image(x) for x in (target, masked_input, filled)]
        grid = tf.concat(rows, axis=2)  # side by side: input | masked | reconstruction
        with self.writer.as_default(step=global_step(self.model)):
            tf.summary.image("reconstruction", grid, max_outputs=len(self.tokens))
        self.writer.flush()


class PeriodicCheckpoint(keras.callbacks.Callback):
    """Saves at chunk ends when `every_steps` steps or `every_minutes` minutes have passed,
    and at the end of training."""

    def __init__(self, manager: CheckpointManager, every_steps: int, every_minutes: float,
                 extra: dict | None = None):
        super().__init__()
        self.manager = manager
        self.every_steps = every_steps
        self.every_seconds = every_minutes * 60.0 if every_minutes > 0 else math.inf
        self.extra = extra or {}
        self.last_step = None
        self.last_time = time.monotonic()

    def on_train_begin(self, logs=None):
        self.last_step = global_step(self.model)
        self.last_time = time.monotonic()

    def _save(self):
        step = global_step(self.model)
        if step == self.last_step and self.manager.steps() and self.manager.steps()[-1] == step:
            return
        self.manager.save(self.model, step, self.extra)
        self.last_step = step
        self.last_time = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        step = global_step(self.model)
        due_by_steps = step - self.last_step >= self.every_steps
        due_by_time = time.monotonic() - self.last_time >= self.every_seconds
        if due_by_steps or due_by_time:
            self._save()

    def on_train_end(self, logs=None):
        self._save()
