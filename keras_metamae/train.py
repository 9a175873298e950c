"""`python -m keras_metamae.train` — MetaMAE pretraining, the one training entry point.

    python -m keras_metamae.train                                  # embedded default, CPU
    python -m keras_metamae.train --dataset eurosat --workdir workdirs/eurosat
    python -m keras_metamae.train --dataset eurosat --model mae    # the MAE baseline

    python -m keras_metamae.train --dataset eurosat --print_config # the resolved preset; exits

Rerunning the same command resumes from the newest checkpoint in `--workdir` (weights,
optimizer state, step and therefore the learning-rate schedule). Outputs:
`<workdir>/config.json` (paths stored absolute, so the workdir can be evaluated and exported
from anywhere, and moved), `tensorboard/`, `checkpoints/`, `export/encoder/<version>/`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from absl import flags

from keras_metamae import cli
from keras_metamae import config as config_lib

FLAGS = flags.FLAGS

_SKIP = {"dataset", "data_dir", "workdir"}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Command-line flags; defined only when run as a program, so importing is side-effect free."""
    flags.DEFINE_string("dataset", "digits", "Dataset name (a folder under --data_dir).",
                        flag_values=flag_values)
    flags.DEFINE_string("data_dir", None, "Root of processed datasets (what pipeline.preprocess "
                        "--data_dir wrote); default $KERAS_METAMAE_DATA or data/processed.",
                        flag_values=flag_values)
    flags.DEFINE_string("workdir", None, "Run directory; default workdirs/<dataset>-<model>.",
                        flag_values=flag_values)
    flags.DEFINE_string("raw_data_dir", None, "Raw data for the default dataset's on-demand "
                        "preprocessing (only used when it is not preprocessed yet).",
                        flag_values=flag_values)
    # Every TrainConfig field is a flag; a flag that is not given takes the dataset's preset.
    for field in config_lib.TrainConfig.__dataclass_fields__.values():
        if field.name in _SKIP:
            continue
        help_text = f"Overrides the preset (default {field.default!r} when the preset is silent)."
        define = {"bool": flags.DEFINE_bool, "int": flags.DEFINE_integer,
                  "float": flags.DEFINE_float}.get(str(field.type), flags.DEFINE_string)
        define(field.name, None, help_text, flag_values=flag_values)
    # Multi-worker training (not TrainConfig fields: the same run may resume on another cluster).
    flags.DEFINE_string("worker_hosts", None, "Every worker's host:port, comma-separated, the "
                        "same on all workers; builds TF_CONFIG (see keras_metamae/multiworker.py).",
                        flag_values=flag_values)
    flags.DEFINE_integer("worker_index", None, "This worker's position in --worker_hosts (0 is "
                         "the chief, the only one that writes the workdir).",
                         flag_values=flag_values)
    flags.DEFINE_integer("num_workers", None, "Number of workers (checked against --worker_hosts).",
                         flag_values=flag_values)
    flags.DEFINE_float("worker_timeout_s", 300.0, "Multi-worker: how long to wait for every "
                       "worker to connect at start, and at most for any one collective step.",
                       flag_values=flag_values)
    flags.DEFINE_enum("progress", "line", ["line", "keras"],
                      "line: one overall progress line on stderr (steps done/total, steps/s, "
                      "ETA, losses), redrawn on a terminal, a plain line every 15 s in a log; "
                      "keras: Keras' own bars, one per --log_every chunk.",
                      flag_values=flag_values)


# Fields that change what a checkpoint contains: a workdir cannot be resumed with others.
_ARCHITECTURE_FIELDS = (
    "model", "embed_dim", "encoder_depth", "encoder_heads", "encoder_mlp_dim", "decoder_dim",
    "decoder_depth", "decoder_heads", "decoder_mlp_dim", "projector_hidden_dim",
    "projector_dim", "dataset",
)


class NonFiniteTraining(RuntimeError):
    """Training stopped after too many consecutive non-finite steps."""


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


def check_workdir_config(workdir: str, config: config_lib.TrainConfig) -> None:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    previous = config_lib.TrainConfig.load(path)
    for name in _ARCHITECTURE_FIELDS:
        old, new = getattr(previous, name), getattr(config, name)
        if old != new:
            raise ValueError(
                f"this workdir was trained with {name}={old!r} but now {name}={new!r} ({path}): "
                f"use the same flags to resume it, or a new --workdir")


# The token contract a checkpoint was trained on; a resumed run must see the same one.
_CONTRACT_FIELDS = ("num_tokens", "token_dim", "vocab_size", "token_grid", "input_shape",
                    "segments")


def check_workdir_spec(workdir: str, spec, version_dir: str) -> None:
    """Records the dataset's spec in the workdir; refuses to resume on a different contract."""
    path = os.path.join(workdir, "dataset_spec.json")
    if os.path.exists(path):
        from preprocessing.spec import load_spec

        previous = load_spec(path)  # defaults filled in for fields an older spec lacks
        for name in _CONTRACT_FIELDS:
            old, new = getattr(previous, name), getattr(spec, name)
            if old != new:
                raise ValueError(
                    f"the data has {name}={new} but this workdir was trained on {name}={old} "
                    f"({path} vs {version_dir}/spec.json): use a new --workdir, or the data "
                    f"it was trained on")
        return
    os.makedirs(workdir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(spec.to_json())
    os.replace(tmp, path)


def uses_multiworker(name: str) -> bool:
    return name == "multiworker" or (name == "auto" and bool(os.environ.get("TF_CONFIG")))


def build_strategy(name: str, worker_timeout_s: float = 300.0):
    import tensorflow as tf

    # Before anything lists devices: collectives are configured at program startup only.
    if uses_multiworker(name):
        from keras_metamae import multiworker

        return multiworker.start_strategy(worker_timeout_s)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        if len(gpus) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "mirrored":
        # All GPUs; without GPUs, every logical CPU device (how the tests split one CPU in two).
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "onedevice":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    return tf.distribute.get_strategy()


def resolve_jit(setting: str, strategy) -> bool | str:
    import tensorflow as tf

    if setting == "off":
        return False
    if setting == "on":
        if strategy.num_replicas_in_sync > 1:
            logging.warning("--jit_compile=on ignored under %d replicas: XLA is not forced "
                            "under a distribution strategy", strategy.num_replicas_in_sync)
            return False
        return True
    # auto: XLA where it pays and is safe — one GPU replica. On CPU, compiling the
    # second-order graph costs more than it saves on a short run.
    return bool(tf.config.list_logical_devices("GPU")) and strategy.num_replicas_in_sync == 1


def set_xla_attention(model, enabled: bool) -> None:
    """`--xla_attention`: a run-time choice, not part of the architecture (the same weights and
    math either way), so it is set on the built layers rather than in the model's config."""
    from keras_metamae.layers import MultiHeadSelfAttention

    for layer in model._flatten_layers():
        if isinstance(layer, MultiHeadSelfAttention):
            layer.xla_core = bool(enabled)


def apply_host_settings(config: config_lib.TrainConfig) -> bool:
    """`--keep_freed_memory`: this process's malloc keeps what it frees (for the rest of the
    process; keras_metamae/host_memory.py). True when it took effect."""
    if not config.keep_freed_memory:
        return False
    from keras_metamae import host_memory

    applied = host_memory.keep_freed_memory()
    logging.info("keep_freed_memory: %s", "glibc malloc keeps freed memory" if applied
                 else "not glibc: the C library's defaults stay")
    return applied


def build_model(config: config_lib.TrainConfig, spec, strategy, total_steps: int):
    import keras

    from keras_metamae.metamae import MetaMAE
    from keras_metamae.nonfinite import NonFiniteGuard
    from keras_metamae.schedules import learning_rate_schedule

    with strategy.scope():
        model = MetaMAE(**config.model_kwargs(spec))
        set_xla_attention(model, config.xla_attention)
        schedule = learning_rate_schedule(config.lr_schedule, config.learning_rate, total_steps,
                                          config.warmup_steps)
        adamw = keras.optimizers.AdamW(
            learning_rate=schedule,
            weight_decay=config.weight_decay,
            global_clipnorm=config.clip_norm or None,
        )
        # Skips (and counts) steps with a non-finite loss or gradient; float16 also needs
        # dynamic loss scaling, float32 and bfloat16 do not.
        optimizer = NonFiniteGuard(adamw, loss_scaling=config.mixed_precision == "float16")
        model.compile(optimizer=optimizer, jit_compile=resolve_jit(config.jit_compile, strategy))
    return model


def build_model_for_spec(config, spec):
    """The model with its weights created (for restoring checkpoints outside training)."""
    import tensorflow as tf

    model = build_model(config, spec, tf.distribute.get_strategy(), max(config.steps, 1))
    materialize(model, spec)
    return model


def materialize(model, spec) -> None:
    """Creates every weight and optimizer slot, so checkpoints can be loaded into the model."""
    import numpy as np

    if spec.is_discrete:
        tokens = np.zeros((2, spec.num_tokens), "int64")
    else:
        tokens = np.zeros((2, spec.num_tokens, spec.token_dim), "float32")
    model(tokens, training=False)
    model.build_for_training(tokens)
    model.optimizer.build(model.trainable_variables)


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
    config.workdir = (cli.local_path(workdir, "--workdir") if workdir else
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


def run_training(dataset: str = "digits", overrides: dict | None = None,
                 data_dir: str | None = None, workdir: str | None = None,
                 raw_data_dir: str | None = None, verbose: int | str = "auto",
                 worker_timeout_s: float = 300.0, progress: str = "line") -> dict:
    """Trains (or resumes) and returns the run summary. The absl entry point calls this.

    `verbose` 0 prints nothing; otherwise `progress` says how training shows its progress:
    "line" (one overall line on stderr: steps, steps/s, ETA, losses; keras_metamae/progress.py)
    or "keras" (Keras' own per-chunk bars, `fit(verbose=verbose)`).

    Under multi-worker training (`TF_CONFIG`) every worker calls this; only the chief writes
    `workdir`, the others write to a scratch folder that is removed at the end."""
    import keras
    import tensorflow as tf

    from keras_metamae import callbacks as cb
    from keras_metamae import data, online_eval
    from keras_metamae.checkpoints import CheckpointManager
    from keras_metamae.metamae import MetaMAE
    from keras_metamae.nonfinite import StopOnNonFinite
    from preprocessing import registry
    from preprocessing.spec import load_spec

    from keras_metamae import multiworker

    overrides = dict(overrides or {})
    # The multi-worker strategy first of all: nothing may touch TensorFlow's devices before it.
    multi_worker = uses_multiworker(overrides.get("strategy") or "auto")
    strategy = build_strategy("multiworker", worker_timeout_s) if multi_worker else None
    chief, task = True, None
    if multi_worker:
        cluster, task_type, task_index = multiworker.cluster_from_tf_config()
        chief, task = multiworker.is_chief(task_type, task_index, cluster), (task_type, task_index)
    data_dir = cli.local_path(data_dir or default_data_dir(), "--data_dir")
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
    # Everything that can refuse the run does so before the first file is written.
    train_split, val_split, examples = pretraining_splits(spec, version_dir, config.batch_size)
    # Where this process writes: the workdir on the chief, a scratch folder on other workers.
    out_dir = config.workdir
    check_workdir_config(config.workdir, config)
    if chief:
        cli.check_writable(config.workdir, "--workdir")
    # Before anything is written: a workdir of an older weights format stays as it was.
    restore_from = CheckpointManager(os.path.join(config.workdir, "checkpoints"), create=chief)
    restore_from.check_weights_format(MetaMAE.weights_format)
    if chief:
        check_workdir_spec(config.workdir, spec, version_dir)
    else:  # the chief checks and records the spec; this worker reads what it recorded
        out_dir = multiworker.make_scratch_dir(config.workdir, *task)
    config.save(out_dir)

    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision != "float32":
        keras.mixed_precision.set_global_policy(f"mixed_{config.mixed_precision}")
    if strategy is None:
        strategy = build_strategy(config.strategy)

    batches_per_epoch = examples // config.batch_size

    model = build_model(config, spec, strategy, config.steps)
    with strategy.scope():
        materialize(model, spec)
    manager = CheckpointManager(os.path.join(out_dir, "checkpoints"),
                                keep=config.keep_checkpoints)
    # Every worker resumes from the chief's checkpoints.
    start_step = restore_from.restore(model)
    if multi_worker:
        start_step = multiworker.agreed_step(strategy, start_step)
    if start_step:
        logging.info("resumed from step %d (%s)", start_step, restore_from.directory)
        print(f"Resumed from step {start_step} of {config.steps} ({restore_from.directory})")

    # Data position on resume: the epoch is re-shuffled with a seed derived from its index,
    # and the batches already seen in that epoch are skipped.
    epoch_index, offset = divmod(start_step, batches_per_epoch)
    def train_input(input_context=None):
        ds = data.make_dataset(spec, version_dir, train_split, config.batch_size,
                               shuffle=True, repeat=True, seed=config.seed + epoch_index,
                               skip_batches=offset, input_context=input_context)
        return tokens_only(ds, as_tensor=multi_worker)

    def val_input(input_context=None):
        ds = data.make_dataset(spec, version_dir, val_split, config.batch_size,
                               shuffle=False, repeat=True, seed=config.seed,
                               input_context=input_context)
        return tokens_only(ds, as_tensor=multi_worker)

    if multi_worker:
        # Each worker reads its share of the shards and batches its share of the global
        # batch (Keras cannot split one dict dataset across workers itself).
        train_ds = strategy.distribute_datasets_from_function(train_input)
        val_ds = strategy.distribute_datasets_from_function(val_input) if val_split else None
    else:
        train_ds = train_input()
        val_ds = val_input() if val_split else None

    tensorboard_dir = os.path.join(out_dir, "tensorboard")
    summaries = cb.TensorBoardSummaries(tensorboard_dir, config.batch_size, config, spec)
    stop_on_nonfinite = StopOnNonFinite(config.max_bad_steps)
    callbacks = [
        cb.StopAtStep(config.steps),
        stop_on_nonfinite,
        summaries,
        cb.PeriodicCheckpoint(manager, config.checkpoint_every, config.checkpoint_minutes,
                              extra={"dataset": dataset, "model": config.model}),
    ]
    if spec.is_image_like and not spec.is_discrete and chief:
        image_split = val_split or train_split[0]
        callbacks.append(cb.ReconstructionImages(
            tensorboard_dir, spec, sample_tokens(spec, version_dir, image_split, 4),
            every_epochs=max(1, config.checkpoint_every // config.log_every),
            split=image_split, model_name=config.model))
    # After the summaries: its time then stays out of their steps/s.
    online, online_off = online_eval.from_config(config, spec, version_dir, tensorboard_dir)
    if online is not None:
        callbacks.append(online)
    else:
        logging.info("online evaluation off: %s", online_off)
    if progress not in ("line", "keras"):
        raise ValueError(f"--progress: got {progress!r}, expected line or keras")
    progress_line = None
    if verbose and progress == "line":
        # First: its clock and heartbeat also cover the step-0 online evaluation.
        progress_line = cb.TrainingProgress(config.steps, config.batch_size, online)
        callbacks.insert(0, progress_line)

    chunk = config.log_every
    initial_epoch = start_step // chunk
    epochs = -(-config.steps // chunk)
    started = time.perf_counter()
    history = None
    if start_step < config.steps:
        try:
            # A shard that breaks mid-read surfaces as a tf.errors exception without a file name;
            # these re-raise it as a DataError naming the broken shard.
            with data.explain_data_errors(spec, version_dir, train_split), \
                    data.explain_data_errors(spec, version_dir, val_split or train_split):
                history = model.fit(
                    train_ds,
                    steps_per_epoch=chunk,
                    epochs=epochs,
                    initial_epoch=initial_epoch,
                    validation_data=val_ds,
                    validation_steps=config.validation_steps if val_ds is not None else None,
                    callbacks=callbacks,
                    verbose=verbose if progress == "keras" else 0,
                    shuffle=False,  # the tf.data pipeline shuffles (seeded, resumable)
                )
        finally:  # also when fit raises: stops the line's heartbeat and ends its line
            if progress_line is not None:
                progress_line.close()
    seconds = time.perf_counter() - started
    final_step = int(model.optimizer.iterations.numpy())
    skipped = cb.skipped_steps(model)
    if stop_on_nonfinite.stopped_at is not None:
        last_good = manager.steps()[-1] if manager.steps() else 0
        raise NonFiniteTraining(
            f"training stopped at step {final_step} after {config.max_bad_steps} consecutive "
            f"steps with a non-finite loss or gradient, {skipped} skipped in all, none applied "
            f"to the weights; the last good checkpoint is step {last_good} "
            f"({manager.directory}): lower --learning_rate, set --clip_norm, or use "
            f"--mixed_precision float32, then rerun to resume")

    export_dir = None
    if config.export and chief:
        from keras_metamae import export

        export_dir = (export.export_of_step(config.workdir, final_step)
                      or export.export_encoder(model, spec, config.workdir, step=final_step))
    if multi_worker:
        # The workers end together: one that exits while the chief still exports would be
        # reported to it as a crashed peer.
        multiworker.agreed_step(strategy, final_step)

    records = summaries.history
    summary = {
        "dataset": dataset,
        "model": config.model,
        "workdir": config.workdir,
        "start_step": start_step,
        "final_step": final_step,
        "train_seconds": seconds,
        "first": records[0] if records else None,
        "last": records[-1] if records else None,
        "export_dir": export_dir,
        "skipped_steps": skipped,
        "online_eval": online.summary(seconds) if online is not None else {"off": online_off},
        "tensorboard": os.path.join(config.workdir, "tensorboard"),  # the chief's
        "completed": history is not None or start_step >= config.steps,
    }
    with open(os.path.join(out_dir, "train_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    multiworker.remove_scratch_dir()
    return summary


def tokens_only(ds, as_tensor: bool = False):
    """Pretraining sees tokens only; string ids cannot be distributed/reduced by Keras under a
    strategy (its symbolic build averages the first batch across replicas). Across workers
    that average cannot take a dict at all, so there the batch is the tokens tensor itself
    (`MetaMAE.train_step` accepts both)."""
    if as_tensor:
        return ds.map(lambda batch: batch["tokens"])
    return ds.map(lambda batch: {"tokens": batch["tokens"]})


def print_summary(summary: dict) -> None:
    first, last = summary.get("first") or {}, summary.get("last") or {}
    lines = [
        "",
        f"== keras-metamae: {summary['model']} on {summary['dataset']} ==",
        f"steps        {summary['start_step']} -> {summary['final_step']} "
        f"in {summary['train_seconds']:.1f} s",
    ]
    for key in ("loss", "reconstruction_loss", "contrastive_loss", "inner_loss_before",
                "inner_loss_after", "val_reconstruction_loss"):
        if key in last:
            start = f"{first[key]:.4f} -> " if key in first else ""
            lines.append(f"{key:<24} {start}{last[key]:.4f}")
    if "steps_per_second" in last:
        lines.append(f"{'steps/s (last chunk)':<24} {last['steps_per_second']:.2f}")
    from keras_metamae.online_eval import summary_lines

    lines += summary_lines(summary.get("online_eval") or {})
    lines += [
        f"workdir      {summary['workdir']}",
        f"encoder      {summary['export_dir']}",
        # The workdir, not its tensorboard/ folder: there HParams would find no metrics.
        f"tensorboard  tensorboard --logdir {summary['workdir']}",
        f"evaluate     python -m keras_metamae.evaluate --workdir {summary['workdir']}",
    ]
    print("\n".join(lines))


def describe_run(dataset: str, overrides: dict, data_dir: str, workdir: str | None) -> str:
    """What `run_training` would do with these arguments (--dry_run / --print_config): the
    preset, the resolved config, the data and the workdir's state. Writes nothing; raises what
    the run would raise before training."""
    from keras_metamae import data
    from keras_metamae.checkpoints import CheckpointManager
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
    check_workdir_config(config.workdir, config)
    steps_done = CheckpointManager(os.path.join(config.workdir, "checkpoints"), create=False).steps()
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


def _as_user_error(error: Exception, data_dir: str | None, workdir: str | None) -> cli.UserError:
    from keras_metamae.data import DataError

    if isinstance(error, DataError):
        return cli.UserError.wrap(error, f"--data_dir {data_dir or default_data_dir()}",
                                  "pass the --data_dir that holds the processed dataset")
    return cli.UserError.wrap(error, f"--workdir {workdir}" if workdir else "--workdir",
                              "see `python -m keras_metamae.train --help`")


def main(invocation: cli.Invocation):
    """The command (absl): `cli.run_program` parses the flags into FLAGS first."""
    cli.quiet_tensorflow_logs()
    overrides = {}
    for field in config_lib.TrainConfig.__dataclass_fields__:
        if field not in _SKIP and FLAGS[field].present:
            overrides[field] = FLAGS[field].value
    from keras_metamae import multiworker

    try:
        tf_config = multiworker.tf_config_from_flags(FLAGS.worker_hosts, FLAGS.worker_index,
                                                     FLAGS.num_workers)
    except ValueError as e:
        raise cli.UserError.wrap(e, "--worker_hosts", "give every worker the same --worker_hosts "
                                 "and its own --worker_index") from e
    if FLAGS.worker_timeout_s <= 0:
        raise cli.UserError(f"invalid value {FLAGS.worker_timeout_s}",
                            f"--worker_timeout_s {FLAGS.worker_timeout_s}",
                            "expected a positive number of seconds")
    data_dir = cli.local_path(FLAGS.data_dir, "--data_dir") or os.path.abspath(default_data_dir())
    workdir = cli.local_path(FLAGS.workdir, "--workdir")
    raw_data_dir = cli.local_path(FLAGS.raw_data_dir, "--raw_data_dir")
    if FLAGS.dry_run:
        try:
            print(describe_run(FLAGS.dataset, overrides, data_dir, workdir))
        except ValueError as e:
            raise _as_user_error(e, data_dir, workdir) from e
        return 0
    if tf_config:
        os.environ["TF_CONFIG"] = tf_config
    multi_worker = uses_multiworker(overrides.get("strategy") or "auto")
    try:
        summary = run_training(FLAGS.dataset, overrides, data_dir, workdir, raw_data_dir,
                               verbose="auto" if sys.stdout.isatty() else 2,
                               worker_timeout_s=FLAGS.worker_timeout_s, progress=FLAGS.progress)
    except (ValueError, FileNotFoundError, NonFiniteTraining) as e:
        sys.stdout.flush()
        print(_as_user_error(e, data_dir, workdir).report(), file=sys.stderr, flush=True)
        multiworker.remove_scratch_dir()
        # Multi-worker: TensorFlow's exit waits for the peers at a shutdown barrier.
        (os._exit if multi_worker else sys.exit)(2)
    except Exception as e:
        import tensorflow as tf

        if not (multi_worker and isinstance(e, tf.errors.OpError)):
            raise
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(f"error: multi-worker training stopped: another worker failed or cannot be "
              f"reached ({type(e).__name__}: {first_line[:300]}); rerun every worker with the "
              f"same command to resume from the chief's last checkpoint", file=sys.stderr,
              flush=True)
        sys.stdout.flush()
        multiworker.remove_scratch_dir()
        os._exit(1)
    print_summary(summary)
    if multi_worker:
        # Everything is written and closed. TensorFlow's exit would wait for the other workers
        # at a shutdown barrier and report those already gone as crashed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    cli.run_program(sys.modules[__name__])
