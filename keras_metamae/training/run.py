"""A pretraining run, in the steps a reader can follow: prepare (data, config, run directory),
build or restore the model, the input pipelines, the callbacks, fit, finish (export, summary).

Rerunning the same run resumes from the newest checkpoint of its run directory (weights,
optimizer state, step and therefore the learning-rate schedule, the random generators' state
and the data position): it logs the losses the uninterrupted run would have logged.
Under multi-worker training (`TF_CONFIG`) every worker runs these steps; only the chief writes
the run directory, the others write to a scratch folder that is removed at the end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

from commandline import cli
from keras_metamae import config as config_lib
from keras_metamae.rundir import RunDir
from keras_metamae.training.build import apply_host_settings, build_model, materialize
from keras_metamae.training.strategy import build_strategy, uses_multiworker
from preprocessing.atomic_files import write_text_atomically


class TrainingInterrupted(RuntimeError):
    """SIGTERM or Ctrl-C stopped training; the step it stopped at is checkpointed."""

    def __init__(self, message: str, step: int, signal_name: str):
        super().__init__(message)
        self.step = step
        self.signal_name = signal_name


class NonFiniteTraining(RuntimeError):
    """Training stopped after too many consecutive non-finite steps (`step`: where)."""

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step


def default_data_dir() -> str:
    """The root of processed datasets when --data_dir is not given (preprocess's default too)."""
    return os.environ.get("KERAS_METAMAE_DATA") or os.path.join("data", "processed")


def locate_or_prepare_dataset(dataset: str, data_dir: str, raw_data_dir: str | None = None) -> str:
    """The dataset's version directory; the embedded default is preprocessed on demand."""
    from keras_metamae import data

    try:
        return data.find_dataset_dir(data_dir, dataset)
    except data.DataError:
        if dataset != "digits":
            raise
    from pipeline import preprocess

    logging.info("digits is not preprocessed yet; running the pipeline into %s", data_dir)
    argv = ["--dataset", "digits", "--data_dir", data_dir]
    if raw_data_dir:
        argv += ["--raw_data_dir", raw_data_dir]
    preprocess.run(argv)
    return data.find_dataset_dir(data_dir, dataset)


def sample_tokens(spec, version_dir: str, split: str, count: int):
    from keras_metamae import data

    ds = data.make_dataset(spec, version_dir, split, count, shuffle=False, repeat=False,
                           drop_remainder=False)
    for batch in ds.take(1):
        return batch["tokens"].numpy()
    raise ValueError(f"{version_dir}: split {split!r} is empty")


def resolve_config(dataset: str, overrides: dict, spec, data_dir: str,
                   workdir: str | None) -> config_lib.TrainConfig:
    """The run's config: defaults <- the dataset's preset <- `overrides`, with absolute paths
    (config.json then means the same from any directory)."""
    config = config_lib.resolve(dataset, overrides, spec.pretrain_dataset)
    config.data_dir = data_dir
    config.workdir = (cli.storage_path(workdir, "--workdir") if workdir else
                      os.path.abspath(os.path.join("workdirs", f"{dataset}-{config.model}")))
    return config


def pretraining_splits(spec, version_dir: str, batch_size: int):
    """(train splits, validation split or None, train examples); ValueError when the data
    cannot feed one batch."""
    # The spec's protocol names the pretraining splits (EuroSAT: `pretrain`, never the held-out
    # transfer part).
    train_split = spec.protocol_splits("pretrain")
    missing = [s for s in train_split if s not in spec.splits]
    if missing:
        raise ValueError(f"no split {missing[0]!r} to pretrain on ({version_dir}/spec.json): "
                         f"the spec has {sorted(spec.splits)}; preprocess the dataset again")
    # Validation on the probe's validation split, else its test split, when it holds at least
    # one batch; none otherwise.
    val_split = next((s for s in (*spec.protocol_splits("probe_val"), *spec.protocol_splits("probe_test"))
                      if spec.splits.get(s) and spec.splits[s].num_examples >= batch_size), None)
    examples = sum(spec.splits[s].num_examples for s in train_split)
    if examples < batch_size:
        raise ValueError(
            f"split {'+'.join(train_split)!r} of {spec.name} has {examples} examples, fewer than "
            f"one batch (--batch_size {batch_size}): lower --batch_size, or preprocess more data "
            f"into {version_dir}")
    return train_split, val_split, examples


def tokens_only(ds, as_tensor: bool = False):
    """Pretraining sees tokens only; string ids cannot be distributed/reduced by Keras under a
    strategy (its symbolic build averages the first batch across replicas). Across workers
    that average cannot take a dict at all, so there the batch is the tokens tensor itself
    (`PretrainingMethod.train_step` accepts both)."""
    if as_tensor:
        return ds.map(lambda batch: batch["tokens"])
    return ds.map(lambda batch: {"tokens": batch["tokens"]})


@dataclasses.dataclass
class PreparedRun:
    """What the steps of a run share, resolved and checked before anything is trained."""

    dataset: str
    config: config_lib.TrainConfig
    spec: Any
    version_dir: str
    run_dir: RunDir  # the workdir (the chief's)
    out: RunDir  # where this process writes: the workdir, or a worker's scratch folder
    train_split: list
    val_split: str | None
    examples: int
    strategy: Any
    multi_worker: bool
    chief: bool


def prepare_run(dataset: str, overrides: dict, data_dir: str | None, workdir: str | None,
                raw_data_dir: str | None, verbose, worker_timeout_s: float) -> PreparedRun:
    """Strategy (multi-worker first of all), data, config and run directory: everything that
    can refuse the run does so here, before the first file is written."""
    import keras

    from keras_metamae import data
    from keras_metamae.training import multiworker
    from preprocessing import registry
    from preprocessing.spec import load_spec

    # The multi-worker strategy first of all: nothing may touch TensorFlow's devices before it.
    multi_worker = uses_multiworker(overrides.get("strategy") or "auto")
    strategy = build_strategy("multiworker", worker_timeout_s) if multi_worker else None
    chief, task = True, None
    if multi_worker:
        cluster, task_type, task_index = multiworker.cluster_from_tf_config()
        chief, task = multiworker.is_chief(task_type, task_index, cluster), (task_type, task_index)
    data_dir = cli.storage_path(data_dir or default_data_dir(), "--data_dir")
    raw_data_dir = cli.local_path(raw_data_dir, "--raw_data_dir")
    if multi_worker:  # workers must not race to preprocess into the same folder
        version_dir = data.find_dataset_dir(data_dir, dataset)
    else:
        if dataset == "digits":
            # The one dataset preprocessed on demand: bad flags are refused before that writes
            # anything (its preset does not depend on its spec).
            resolve_config(dataset, overrides, registry.get_reader("digits").spec_template(),
                           data_dir, workdir)
        version_dir = locate_or_prepare_dataset(dataset, data_dir, raw_data_dir)
    spec = load_spec(version_dir)
    config = resolve_config(dataset, overrides, spec, data_dir, workdir)
    apply_host_settings(config)
    # Say which defaults ran: a dataset without a Table 8 row must never look like a paper run.
    logging.info("preset: %s", config_lib.describe_preset(config.preset))
    if verbose:
        print(f"Preset: {config_lib.describe_preset(config.preset)}")
    train_split, val_split, examples = pretraining_splits(spec, version_dir, config.batch_size)
    run_dir = RunDir(config.workdir)
    run_dir.check_config(config)
    if chief:
        cli.check_writable(config.workdir, "--workdir")
    # Before anything is written: a workdir of an older weights format stays as it was.
    from keras_metamae.methods.base import WEIGHTS_FORMAT

    run_dir.checkpoints(create=chief).check_weights_format(WEIGHTS_FORMAT)
    out = run_dir
    if chief:
        run_dir.record_spec(spec, version_dir)
    else:  # the chief checks and records the spec; this worker reads what it recorded
        out = RunDir(multiworker.make_scratch_dir(config.workdir, *task))
    config.save(out.path)

    keras.utils.set_random_seed(config.seed)
    config.apply_matmul_precision()
    if config.mixed_precision != "float32":
        keras.mixed_precision.set_global_policy(f"mixed_{config.mixed_precision}")
    if strategy is None:
        strategy = build_strategy(config.strategy)
    return PreparedRun(dataset=dataset, config=config, spec=spec, version_dir=version_dir,
                       run_dir=run_dir, out=out, train_split=train_split,
                       val_split=val_split, examples=examples, strategy=strategy,
                       multi_worker=multi_worker, chief=chief)


def build_or_restore(run: PreparedRun):
    """(model, this process's checkpoint manager, the step it resumes from)."""
    from keras_metamae.training import multiworker

    config = run.config
    model = build_model(config, run.spec, run.strategy, config.steps)
    with run.strategy.scope():
        materialize(model, run.spec)
    manager = run.out.checkpoints(keep=config.keep_checkpoints, create=True)
    # Every worker resumes from the chief's checkpoints.
    restore_from = run.run_dir.checkpoints(create=run.chief)
    start_step = restore_from.restore(model)
    if run.multi_worker:
        start_step = multiworker.agreed_step(run.strategy, start_step)
        with run.strategy.scope():  # SIGTERM to any worker stops all at one step
            model.enable_stop_agreement()
    if start_step:
        logging.info("resumed from step %d (%s)", start_step, restore_from.directory)
        print(f"Resumed from step {start_step} of {config.steps} ({restore_from.directory})")
    return model, manager, start_step


def input_pipelines(run: PreparedRun, start_step: int):
    """(training dataset, validation dataset or None). The training stream is positioned
    after the `start_step` batches already trained on (`make_dataset`'s `skip_batches`: same
    epochs, same order). Validation reads the same `validation_steps` batches at every
    evaluation, so its curve compares the weights, not the batches."""
    from keras_metamae import data

    config, spec = run.config, run.spec

    def train_input(input_context=None):
        ds = data.make_dataset(spec, run.version_dir, run.train_split, config.batch_size,
                               shuffle=True, repeat=True, seed=config.seed,
                               skip_batches=start_step, input_context=input_context)
        return tokens_only(ds, as_tensor=run.multi_worker)

    def val_input(input_context=None):
        ds = data.make_dataset(spec, run.version_dir, run.val_split, config.batch_size,
                               shuffle=False, repeat=True, seed=config.seed,
                               input_context=input_context)
        ds = ds.take(config.validation_steps).repeat()
        return tokens_only(ds, as_tensor=run.multi_worker)

    if run.multi_worker:
        # Each worker reads its share of the shards and batches its share of the global
        # batch (Keras cannot split one dict dataset across workers itself).
        distribute = run.strategy.distribute_datasets_from_function
        return (distribute(train_input),
                distribute(val_input) if run.val_split else None)
    return train_input(), (val_input() if run.val_split else None)


@dataclasses.dataclass
class RunCallbacks:
    """The callbacks of `fit`, in order, and the ones the later steps read from."""

    all: list
    summaries: Any
    stop_on_nonfinite: Any
    online: Any  # an OnlineEvaluation, or None
    online_off: str | None  # why there is none
    progress_line: Any  # the TrainingProgress line, or None
    stop_on_signal: Any = None  # StopOnSignal


def make_callbacks(run: PreparedRun, manager, verbose, progress: str) -> RunCallbacks:
    from keras_metamae import methods
    from keras_metamae.evaluation import online as online_eval
    from keras_metamae.training import callbacks as cb

    config, spec = run.config, run.spec
    if progress not in ("line", "keras"):
        raise ValueError(f"--progress: got {progress!r}, expected line or keras")
    tensorboard_dir = run.out.tensorboard_dir
    summaries = cb.TensorBoardSummaries(tensorboard_dir, config.batch_size, config, spec)
    stop_on_nonfinite = cb.StopOnNonFinite(config.max_bad_steps)
    callbacks = [
        cb.StopAtStep(config.steps),
        stop_on_nonfinite,
        summaries,
        cb.PeriodicCheckpoint(manager, config.checkpoint_every, config.checkpoint_minutes,
                              extra={"dataset": run.dataset, "model": config.model}),
    ]
    # Panels for the methods that reconstruct tokens (e-Mix, ShED and Capri do not).
    reconstructs = hasattr(methods.get(config.model), "reconstruct")
    if spec.is_image_like and not spec.is_discrete and run.chief and reconstructs:
        image_split = run.val_split or run.train_split[0]
        callbacks.append(cb.ReconstructionImages(
            tensorboard_dir, spec, sample_tokens(spec, run.version_dir, image_split, 4),
            every_epochs=max(1, config.checkpoint_every // config.log_every),
            split=image_split, model_name=config.model))
    # After the summaries: its time then stays out of their steps/s.
    online, online_off = online_eval.from_config(config, spec, run.version_dir, tensorboard_dir)
    if online is not None:
        callbacks.append(online)
    else:
        logging.info("online evaluation off: %s", online_off)
    progress_line = None
    if verbose and progress == "line":
        # First: its clock and heartbeat also cover the step-0 online evaluation.
        progress_line = cb.TrainingProgress(config.steps, config.batch_size, online)
        callbacks.insert(0, progress_line)
    # Workers agree on the step to stop at (the model sums their requests at each step).
    stop_on_signal = cb.StopOnSignal(agree_across_workers=run.multi_worker)
    callbacks.append(stop_on_signal)
    return RunCallbacks(callbacks, summaries, stop_on_nonfinite, online, online_off,
                        progress_line, stop_on_signal)


def fit(run: PreparedRun, model, train_ds, val_ds, callbacks: RunCallbacks, start_step: int,
        verbose, progress: str):
    """Trains from `start_step` to `config.steps`; (Keras history or None, seconds)."""
    from keras_metamae import data

    config, spec = run.config, run.spec
    chunk = config.log_every
    started = time.perf_counter()
    history = None
    if start_step < config.steps:
        try:
            # A shard that breaks mid-read surfaces as a tf.errors exception without a file
            # name; these re-raise it as a DataError naming the broken shard.
            with data.explain_data_errors(spec, run.version_dir, run.train_split), \
                    data.explain_data_errors(spec, run.version_dir,
                                             run.val_split or run.train_split):
                # Keras "epochs" are chunks of `log_every` steps (callbacks.py).
                history = model.fit(
                    train_ds,
                    steps_per_epoch=chunk,
                    epochs=-(-config.steps // chunk),
                    initial_epoch=start_step // chunk,
                    validation_data=val_ds,
                    validation_steps=config.validation_steps if val_ds is not None else None,
                    callbacks=callbacks.all,
                    verbose=verbose if progress == "keras" else 0,
                    shuffle=False,  # the tf.data pipeline shuffles (seeded, resumable)
                )
        finally:  # also when fit raises: stops the line's heartbeat and ends its line
            if callbacks.progress_line is not None:
                callbacks.progress_line.close()
    return history, time.perf_counter() - started


def finish(run: PreparedRun, model, manager, callbacks: RunCallbacks, history, seconds: float,
           start_step: int) -> dict:
    """Refuses a run stopped by non-finite steps, exports the encoder (chief), writes and
    returns the run summary."""
    from keras_metamae.training import callbacks as cb
    from keras_metamae.training import multiworker

    config = run.config
    final_step = int(model.optimizer.iterations.numpy())
    skipped = cb.skipped_steps(model)
    if callbacks.stop_on_nonfinite.stopped_at is not None:
        last_good = manager.steps()[-1] if manager.steps() else 0
        raise NonFiniteTraining(
            f"training stopped at step {final_step} after {config.max_bad_steps} consecutive "
            f"steps with a non-finite loss or gradient, {skipped} skipped in all, none applied "
            f"to the weights; the last good checkpoint is step {last_good} "
            f"({manager.directory}): lower --learning_rate, set --clip_norm, or use "
            f"--mixed_precision float32, then rerun to resume", step=final_step)
    interrupted = callbacks.stop_on_signal
    if interrupted is not None and interrupted.received is not None:
        # PeriodicCheckpoint wrote this step when fit ended (the chief's is the run's); nothing
        # is exported. Workers end together: one gone early reads as a crashed peer.
        if run.multi_worker:
            multiworker.agreed_step(run.strategy, final_step)
            multiworker.remove_scratch_dir()
        raise TrainingInterrupted(
            f"{interrupted.received} stopped training at step {final_step} of {config.steps}; "
            f"checkpoint written ({manager.directory})", step=final_step,
            signal_name=interrupted.received)

    export_dir = None
    if config.export and run.chief:
        from keras_metamae.serving.export import export_encoder

        export_dir = (run.run_dir.export_of_step(final_step)
                      or export_encoder(model, run.spec, config.workdir, step=final_step))
    if run.multi_worker:
        # The workers end together: one that exits while the chief still exports would be
        # reported to it as a crashed peer.
        multiworker.agreed_step(run.strategy, final_step)

    records = callbacks.summaries.history
    online = callbacks.online
    summary = {
        "dataset": run.dataset,
        "pretrain_only": run.spec.is_pretrain_only,  # no labels: evaluated on another dataset
        "model": config.model,
        "workdir": config.workdir,
        "start_step": start_step,
        "final_step": final_step,
        "train_seconds": seconds,
        "first": records[0] if records else None,
        "last": records[-1] if records else None,
        "export_dir": export_dir,
        "skipped_steps": skipped,
        "online_eval": (online.summary(seconds) if online is not None
                        else {"off": callbacks.online_off}),
        "tensorboard": run.run_dir.tensorboard_dir,  # the chief's
        "completed": history is not None or start_step >= config.steps,
    }
    write_text_atomically(run.out.train_summary_path, json.dumps(summary, indent=2))
    multiworker.remove_scratch_dir()
    return summary


def run_training(dataset: str = "digits", overrides: dict | None = None,
                 data_dir: str | None = None, workdir: str | None = None,
                 raw_data_dir: str | None = None, verbose: int | str = "auto",
                 worker_timeout_s: float = 300.0, progress: str = "line") -> dict:
    """Trains (or resumes) and returns the run summary. The train command calls this.

    `verbose` 0 prints nothing; otherwise `progress` says how training shows its progress:
    "line" (one overall line on stderr: steps, steps/s, ETA, losses; commandline/progress.py)
    or "keras" (Keras' own per-chunk bars, `fit(verbose=verbose)`)."""
    run = prepare_run(dataset, dict(overrides or {}), data_dir, workdir, raw_data_dir, verbose,
                      worker_timeout_s)
    model, manager, start_step = build_or_restore(run)
    train_ds, val_ds = input_pipelines(run, start_step)
    callbacks = make_callbacks(run, manager, verbose, progress)
    history, seconds = fit(run, model, train_ds, val_ds, callbacks, start_step, verbose, progress)
    return finish(run, model, manager, callbacks, history, seconds, start_step)


def describe_run(dataset: str, overrides: dict, data_dir: str, workdir: str | None) -> str:
    """What `run_training` would do with these arguments (--dry_run / --print_config): the
    preset, the resolved config, the data and the workdir's state. Writes nothing; raises what
    the run would raise before training."""
    from keras_metamae import data
    from preprocessing import registry
    from preprocessing.spec import load_spec

    try:
        version_dir = data.find_dataset_dir(data_dir, dataset)
        spec = load_spec(version_dir)
        data_line = version_dir
    except data.DataError:
        if dataset != "digits":
            raise
        # The embedded default is preprocessed on demand: its spec comes from the reader.
        spec = registry.get_reader("digits").spec_template()
        version_dir = None
        data_line = (f"not preprocessed yet: the run first executes `python -m pipeline.preprocess "
                     f"--dataset digits --data_dir {data_dir}`")
    config = resolve_config(dataset, overrides, spec, data_dir, workdir)
    if version_dir:
        pretraining_splits(spec, version_dir, config.batch_size)
    run_dir = RunDir(config.workdir)
    run_dir.check_config(config)
    steps_done = run_dir.checkpoint_steps()
    if not steps_done:
        state = "new: starts at step 0"
    elif steps_done[-1] < config.steps:
        state = f"resumes from step {steps_done[-1]} of {config.steps}"
    else:
        state = f"finished (step {steps_done[-1]}): a rerun trains nothing more"
    return "\n".join([
        f"preset       {config_lib.describe_preset(config.preset)}",
        f"data         {data_line}",
        f"workdir      {config.workdir} ({state})",
        "config.json  (what the run records)",
        config.to_json().rstrip(),
        "nothing was written (--dry_run)",
    ])
