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

import os
import sys

from absl import flags

from commandline import cli
from keras_metamae import config as config_lib
from keras_metamae.training.run import (NonFiniteTraining, TrainingInterrupted,
                                         default_data_dir, describe_run, run_training)
from keras_metamae.training.strategy import uses_multiworker

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
        help_text = (f"{config_lib.FIELD_HELP[field.name]} Default: the dataset's preset, else "
                     f"{field.default!r}.")
        define = {"bool": flags.DEFINE_bool, "int": flags.DEFINE_integer,
                  "float": flags.DEFINE_float}.get(str(field.type), flags.DEFINE_string)
        define(field.name, None, help_text, flag_values=flag_values)
    # Multi-worker training (not TrainConfig fields: the same run may resume on another cluster).
    flags.DEFINE_string("worker_hosts", None, "Every worker's host:port, comma-separated, the "
                        "same on all workers; builds TF_CONFIG (see keras_metamae/training/multiworker.py).",
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
    from keras_metamae.evaluation.online import summary_lines

    lines += summary_lines(summary.get("online_eval") or {})
    lines += [
        f"workdir      {summary['workdir']}",
        f"encoder      {summary['export_dir']}",
        # The workdir, not its tensorboard/ folder: there HParams would find no metrics.
        f"tensorboard  tensorboard --logdir {summary['workdir']}",
        f"evaluate     python -m keras_metamae.evaluate --workdir {summary['workdir']}"
        + (" --transfer_dataset LABELLED  (a labelled dataset of the same token layout; "
           f"{summary['dataset']} has no labels)" if summary.get("pretrain_only") else ""),
    ]
    print("\n".join(lines))


def _as_user_error(error: Exception, data_dir: str | None, workdir: str | None) -> cli.UserError:
    from keras_metamae.data.errors import DataError

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
    from keras_metamae.training import multiworker

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
    data_dir = cli.storage_path(FLAGS.data_dir, "--data_dir") or os.path.abspath(default_data_dir())
    workdir = cli.storage_path(FLAGS.workdir, "--workdir")
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
    except TrainingInterrupted as e:
        sys.stdout.flush()
        print(f"interrupted: {e}; resume with the same command: python -m keras_metamae.train "
              f"{' '.join(invocation.argv)}", file=sys.stderr, flush=True)
        sys.exit(130 if e.signal_name == "SIGINT" else 143)  # the shells' 128 + signal
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
