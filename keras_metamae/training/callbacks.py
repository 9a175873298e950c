"""Keras callbacks of the training entry point, and what they write to TensorBoard.

Keras "epochs" in `training/run.py` are chunks of `log_every` steps, so epoch-end hooks run at a
fixed step cadence; every summary is written at the true global step
(`optimizer.iterations`), which survives restarts.

TensorBoard layout (`<workdir>/tensorboard/`):
- `.` (the run itself): the resolved TrainConfig and the dataset spec as text
  (`config/train_config`, `config/dataset_spec`) and the HParams session (hparams = the
  config, metrics = final losses, online and linear evaluation), at the step the run started;
- `train/`: every training log, learning rate, steps/s, examples/s, skipped steps, and the
  labelled original | masked | reconstruction panels of image-like datasets;
- `validation/`: the validation losses; `online_eval/`, `eval/`: written by
  `evaluation/online.py` and `evaluation/run.py`.
"""

from __future__ import annotations

import math
import signal
import threading
import time

import keras
import numpy as np
import tensorflow as tf

from commandline import filesystem, progress
from keras_metamae import methods
from keras_metamae.methods.nonfinite import NonFiniteGuard
from keras_metamae.rundir import CheckpointManager
from keras_metamae.training.panels import reconstruction_description, reconstruction_grid


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


class TrainingProgress(keras.callbacks.Callback):
    """The run's one progress line (commandline/progress.py): steps done of the run's total,
    steps/s and examples/s, ETA, the chunk's mean loss, the last validation loss and online
    evaluation figures, and what the run does between steps (tracing the first step,
    validation, an online evaluation). It replaces Keras' bars, which restart every
    `log_every`-step chunk (`Epoch k/N`) and never show the whole run's ETA.

    Put it first among the callbacks, so its notes are up before the others' chunk-end work.
    A heartbeat thread keeps the line going while no step ends; `close()` after `fit` (also
    when it raises) ends the line.
    """

    def __init__(self, total_steps: int, batch_size: int, online=None, **line_options):
        super().__init__()
        self.line = progress.ProgressLine("train", total=total_steps, unit="steps",
                                          per_unit=("examples", batch_size), **line_options)
        self.online = online  # an evaluation.online.OnlineEvaluation: its `history` and `every`
        self._step = 0
        self._validation: dict[str, float] = {}
        self._train_ended = False
        self._last_logs = None

    def on_train_begin(self, logs=None):
        self._step = global_step(self.model)
        self.line.start(self._step, heartbeat=True)
        first = "tracing the first step"
        if self.online is not None and self._step == 0:
            first = "online evaluation of the initial encoder, then " + first
        self.line.set_note(first)

    def on_train_batch_end(self, batch, logs=None):
        # Counted here: reading the step variable every batch would wait for the device.
        self._step += 1
        self._last_logs = logs
        if self.line.note:
            self.line.set_note("")
        self.line.update(self._step, details=lambda: self._details(logs))

    def on_test_begin(self, logs=None):
        self.line.set_note("validation")

    def on_epoch_end(self, epoch, logs=None):
        self._step = global_step(self.model)
        self._validation = {k: _scalar(v) for k, v in (logs or {}).items()
                            if k.startswith("val_")}
        self.line.set_note(self._online_note(final=False) or "")

    def on_train_end(self, logs=None):
        self._train_ended = True
        self._step = global_step(self.model)
        note = self._online_note(final=True)
        if note:  # the online evaluation of the final encoder runs after this callback
            self.line.set_note(note)
        else:
            self._finish()

    def close(self) -> None:
        if self._train_ended:
            self._finish()
        else:
            self.line.close()

    def _finish(self) -> None:
        if not self.line.finished:
            self.line.finish(self._step, details=self._details(self._last_logs))

    def _online_note(self, final: bool) -> str | None:
        """"online evaluation at step N" when OnlineEvaluation is about to run (its schedule:
        the first chunk end at or after each multiple of `every`, and the final step)."""
        if self.online is None or not self.online.history:
            return None
        last = self.online.history[-1]["step"]
        due = (last != self._step) if final else (self._step // self.online.every
                                                   > last // self.online.every)
        return f"online evaluation at step {self._step}" if due else None

    def _details(self, logs) -> str:
        parts = []
        if logs and "loss" in logs:
            parts.append(f"loss {_scalar(logs['loss']):.4f}")
        if "val_loss" in self._validation:
            parts.append(f"val_loss {self._validation['val_loss']:.4f}")
        if self.online is not None and self.online.history:
            last = self.online.history[-1]
            figures = [f"{key} {value:.4f}" for key, value in last.items()
                       if key not in ("step", "seconds")]
            if figures:
                parts.append(f"{', '.join(figures)} (step {last['step']})")
        return ", ".join(parts)


class TensorBoardSummaries(keras.callbacks.Callback):
    """Scalars at the global step: every training/validation log, learning rate, steps/s,
    examples/s. With `config` and `spec`, also the run's description at the step it starts
    (`write_run_description`)."""

    def __init__(self, logdir: str, batch_size: int, config=None, spec=None):
        super().__init__()
        self.logdir = logdir
        self.train_writer = tf.summary.create_file_writer(f"{logdir}/train")
        self.val_writer = tf.summary.create_file_writer(f"{logdir}/validation")
        self.batch_size = batch_size
        self.config = config
        self.spec = spec
        self.history: list[dict] = []
        self._t0 = None
        self._step0 = None

    def on_train_begin(self, logs=None):
        if self.config is not None and self.spec is not None:
            write_run_description(self.logdir, self.config, self.spec, global_step(self.model))

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


# === the run's description: config text and HParams ===
# TrainConfig fields that are places, not hyper-parameters.
_NOT_HPARAMS = ("data_dir", "workdir")
# String fields with a fixed set of values (an HParams filter offers them all).
_HPARAM_CHOICES = {
    "model": sorted(methods.METHOD_NAMES),
    "lr_schedule": ["constant", "warmup_cosine"],
    "strategy": ["auto", "default", "mirrored", "multiworker", "onedevice"],
    "mixed_precision": ["bfloat16", "float16", "float32"],
    "jit_compile": ["auto", "off", "on"],
}
# Longest list shown in full in the spec's text (label names, per-channel statistics).
_MAX_LIST_ITEMS = 16


def _markdown_value(value) -> str:
    if isinstance(value, (list, tuple)) and len(value) > _MAX_LIST_ITEMS:
        shown = ", ".join(str(v) for v in value[:_MAX_LIST_ITEMS])
        value = f"[{shown}, ... ({len(value)} in all)]"
    elif isinstance(value, dict) and not value:
        value = "{}"
    # A `|` would end the table cell.
    return f"`{value}`".replace("|", "\\|") if value != "" else ""


def markdown_table(rows, header=("field", "value")) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {name} | {_markdown_value(value)} |" for name, value in rows]
    return "\n".join(lines)


def config_markdown(config) -> str:
    """The resolved TrainConfig (preset + flags) as a markdown table."""
    import dataclasses

    return (f"Resolved training config (preset `{config.preset}` + flags; "
            f"`<workdir>/config.json`).\n\n"
            + markdown_table((f.name, getattr(config, f.name))
                             for f in dataclasses.fields(config)))


def spec_markdown(spec) -> str:
    """The dataset's token contract, its splits and the command that made it, as markdown."""
    fields = ("name", "modality", "input_shape", "input_dtype", "tokenizer", "patch_shape",
              "num_tokens", "token_grid", "token_dim", "vocab_size", "task", "metric",
              "num_classes", "label_names", "pretrain_dataset", "pipeline_version",
              "content_hash")
    rows = [(name, getattr(spec, name)) for name in fields]
    for key in ("mean", "std", "source"):
        if key in (spec.normalization or {}):
            rows.append((f"normalization.{key}", spec.normalization[key]))
    if spec.protocol:
        rows += [(f"protocol.{role}", value) for role, value in sorted(spec.protocol.items())]
    splits = markdown_table(((name, info.num_examples) for name, info in spec.splits.items()),
                            header=("split", "examples"))
    return (f"Dataset spec (`spec.json`) the run trains on.\n\n{markdown_table(rows)}\n\n"
            f"{splits}\n\nMade by:\n\n```\n{spec.command}\n```")


def hparam_values(config) -> dict:
    """The config's hyper-parameters for the HParams dashboard (every field but the paths)."""
    import dataclasses

    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if f.name not in _NOT_HPARAMS}


def hparam_metrics(spec) -> list[tuple[str, str, str]]:
    """(tag, run subfolder, display name) of the metrics the HParams table shows per run: the
    final losses, the online evaluation (evaluation/online.py) and `evaluate`'s probe."""
    return [
        ("loss", "train", "train loss"),
        ("reconstruction_loss", "train", "train reconstruction loss"),
        ("contrastive_loss", "train", "train contrastive loss"),
        ("reconstruction_loss", "validation", "validation reconstruction loss"),
        ("online_eval/knn_accuracy", "online_eval", "online kNN accuracy"),
        (f"online_eval/probe_{spec.metric}", "online_eval", f"online probe {spec.metric}"),
        (f"linear/{spec.name}/{spec.metric}", "eval", f"linear probe {spec.metric}"),
        (f"knn/{spec.name}/accuracy", "eval", "evaluate kNN accuracy"),
    ]


def _experiment_summary(values: dict, metrics) -> bytes:
    """The HParams experiment: every hparam typed (numbers as float64, without a domain, as
    TensorBoard infers them itself), so runs with different values share one definition."""
    from tensorboard.plugins.hparams import api as hp
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    hparams = []
    for name, value in values.items():
        domain = None
        if isinstance(value, bool):
            domain = hp.Discrete([False, True])
        elif name in _HPARAM_CHOICES:
            domain = hp.Discrete(_HPARAM_CHOICES[name])
        hparams.append(hp.HParam(name, domain))
    summary = hp.hparams_config_pb(
        hparams, [hp.Metric(tag, group=group, display_name=display)
                  for tag, group, display in metrics])
    value = summary.value[0]
    experiment = metadata.parse_experiment_plugin_data(value.metadata.plugin_data.content)
    for info in experiment.hparam_infos:
        if info.type == api_pb2.DATA_TYPE_UNSET:
            info.type = (api_pb2.DATA_TYPE_STRING if isinstance(values[info.name], str)
                         else api_pb2.DATA_TYPE_FLOAT64)
    value.metadata.CopyFrom(metadata.create_summary_metadata(
        plugin_data_pb2.HParamsPluginData(experiment=experiment)))
    return summary.SerializeToString()


def write_run_description(logdir: str, config, spec, step: int) -> None:
    """Text summaries of the config and the spec, and the HParams session, at `step` (0 for a
    new run; a resumed run describes itself again at the step it resumed from).

    The session is `logdir` itself and its metrics live in the `train/`, `validation/`, ...
    runs below it. TensorBoard finds those only when its `--logdir` is above `logdir` (the
    workdir or a folder of workdirs): it names the metrics' runs `<session>/<group>`, which
    for a session at its own root is `./train`, a run it does not have."""
    from tensorboard.plugins.hparams import api as hp

    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default(step=step):
        tf.summary.text("config/train_config", config_markdown(config))
        tf.summary.text("config/dataset_spec", spec_markdown(spec))
        tf.summary.experimental.write_raw_pb(
            _experiment_summary(hparam_values(config), hparam_metrics(spec)), step=step)
        # The session group is the workdir: two runs with the same folder name elsewhere must
        # not be averaged as repeats of one trial.
        hp.hparams(hparam_values(config), trial_id=filesystem.absolute(config.workdir or logdir))
    writer.flush()
    writer.close()


class ReconstructionImages(keras.callbacks.Callback):
    """Writes the labelled original | masked | reconstruction panels of image-like datasets
    (`reconstruction_grid`) to TensorBoard every `every_epochs` chunks and at the end of
    training, at the global step."""

    def __init__(self, logdir: str, spec, tokens, every_epochs: int = 1, max_images: int = 4,
                 split: str = "validation", model_name: str = "metamae"):
        super().__init__()
        self.writer = tf.summary.create_file_writer(f"{logdir}/train")
        self.spec = spec
        self.tokens = np.asarray(tokens, np.float32)[:max_images]
        self.every = every_epochs
        self.description = reconstruction_description(spec, split, len(self.tokens), model_name)
        noise_rng = np.random.default_rng(0)
        # A fixed mask, so images at different steps are comparable.
        self.mask_noise = noise_rng.uniform(size=self.tokens.shape[:2]).astype("float32")
        self._written_at = None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0:
            self._write()

    def on_train_end(self, logs=None):
        # The final model's panels, also when the run does not end on the cadence.
        if self._written_at != global_step(self.model):
            self._write()

    def _write(self):
        out = self.model.reconstruct(self.tokens, mask_noise=self.mask_noise)
        grid = reconstruction_grid(
            self.spec, self.tokens, keras.ops.convert_to_numpy(out["mask"]),
            keras.ops.convert_to_numpy(out["predictions"]).astype("float32"))
        self._written_at = global_step(self.model)
        with self.writer.as_default(step=self._written_at):
            tf.summary.image("reconstruction", grid[None], max_outputs=1,
                             description=self.description)
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


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops training after `max_bad_steps` consecutive skipped (non-finite) steps."""

    def __init__(self, max_bad_steps: int):
        super().__init__()
        self.max_bad_steps = max_bad_steps
        self.stopped_at = None

    def on_train_batch_end(self, batch, logs=None):
        optimizer = self.model.optimizer
        if not isinstance(optimizer, NonFiniteGuard):
            return
        if int(optimizer.consecutive_skipped_steps.numpy()) >= self.max_bad_steps:
            self.stopped_at = int(optimizer.iterations.numpy())
            self.model.stop_training = True


class StopOnSignal(keras.callbacks.Callback):
    """SIGTERM (a preempted cloud machine) or the first Ctrl-C ends training after the current
    step; `PeriodicCheckpoint` then writes that step at the end of training, and the run says
    which signal stopped it (`received`, `stopped_at`). A second Ctrl-C or SIGTERM aborts at
    once. Installed during `fit` only, and only in the main thread (where Python delivers
    signals).

    `agree_across_workers` (multi-worker runs, after `model.enable_stop_agreement()`): the
    signal sets this worker's `model.stop_request`; the next step sums the requests of all
    workers, so every worker stops after that same step, whichever one was signalled."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    # What a worker that was not signalled itself says stopped it.
    PEER = "a signal to another worker"

    def __init__(self, agree_across_workers: bool = False):
        super().__init__()
        self.agree = agree_across_workers
        self.received = None  # "SIGINT" or "SIGTERM" (or PEER)
        self.stopped_at = None
        self._previous = {}

    def on_train_begin(self, logs=None):
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._stop)

    def _stop(self, signum, frame):
        if self.received is not None:  # the second one: no more waiting
            self._restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.raise_signal(signum)
            return
        self.received = signal.Signals(signum).name
        if self.agree:  # read by the next step's sum over the workers
            self.model.stop_request.assign(1.0)
        else:
            self.model.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        if self.agree and not self.model.stop_training and float(self.model.stop_agreed.numpy()):
            self.received = self.received or self.PEER
            self.model.stop_training = True
        if self.model.stop_training and self.received is not None and self.stopped_at is None:
            self.stopped_at = int(self.model.optimizer.iterations.numpy())

    def _restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def on_train_end(self, logs=None):
        self._restore()
