"""`python -m keras_metamae.compare` — which pretraining should I use on my data?

    python -m keras_metamae.compare                                   # digits, all 7 columns, 3 seeds
    python -m keras_metamae.compare --dataset eurosat --steps 20000 \\
        --methods random,emix,shed,capri,dabs-mae,mae,metamae --seeds 0,1,2

Pretrains every method with every seed on the same encoder (a difference between columns
comes from the objective alone), probes each frozen encoder on the dataset's test split (the
paper's probe, the converged probe, kNN) or on `--transfer_dataset`'s (a labelled set of the
same token layout, for a dataset preprocessed without labels), and writes into `--workdir`:
`results.json`, `results.md` (per method the mean with a 95% Student-t interval over seeds,
the per-seed values, and a verdict that says when the seeds cannot tell methods apart) and
`comparison.png` (bars with intervals; online probe accuracy against pretraining step). Each
run is a training workdir under `<workdir>/<method>/seed-<s>/`, so `tensorboard --logdir
<workdir>` shows all of them (HParams included). A rerun skips what is done and resumes what
was interrupted. A method whose run diverges is reported as "diverged at step N".
Any training flag (`--dropout`, `--batch_size`, ...) applies to every method.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from commandline import cli
from keras_metamae import config as config_lib
from keras_metamae.comparison.runner import PAPER_ORDER, parse_methods, parse_seeds
from keras_metamae.comparison.study import compare_methods

FLAGS = flags.FLAGS
DEFAULT_SEEDS = "0,1,2"
# The comparison sets these itself, per run.
_NOT_FLAGS = {"dataset", "data_dir", "workdir", "model", "seed", "steps", "export"}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    def define(kind, name, default, help_text, *args):
        getattr(flags, f"DEFINE_{kind}")(name, default, *args, help_text, flag_values=flag_values)

    define("string", "dataset", "digits", "Dataset to pretrain and probe on (a folder under "
           "--data_dir; digits is preprocessed on demand).")
    define("string", "methods", ",".join(PAPER_ORDER), "Comma-separated methods: random (the "
           "randomly initialised encoder) and any --model of train.")
    define("string", "seeds", DEFAULT_SEEDS, "Comma-separated seeds; every method runs with each.")
    define("integer", "steps", None, "Pretraining steps per run (default: the dataset's preset).")
    define("integer", "epochs", 100, "Epochs of the paper's probe (DABS: 100).")
    define("enum", "probe", "both", "Which linear probe(s).", ["paper", "converged", "both"])
    define("string", "transfer_dataset", None, "Labelled dataset of the same token layout to "
           "probe on (default: --dataset itself); needed when --dataset is pretrain-only "
           "(preprocessed without labels).")
    define("string", "workdir", None, "Where the runs and results go (default "
           "workdirs/compare-<dataset>).")
    define("string", "data_dir", None, "Root of processed datasets (default $KERAS_METAMAE_DATA "
           "or data/processed).")
    # Every other TrainConfig field is a flag, as in train: it applies to every method.
    for field in config_lib.TrainConfig.__dataclass_fields__.values():
        if field.name in _NOT_FLAGS or field.name in flag_values:
            continue
        define({"bool": "bool", "int": "integer", "float": "float"}.get(str(field.type), "string"),
               field.name, None, "Training flag for every run (see train --help).")


def main(invocation: cli.Invocation):
    """The command (absl): `cli.run_program` parses the flags into FLAGS first."""
    cli.quiet_tensorflow_logs()
    from keras_metamae.training.run import default_data_dir

    for name in ("steps", "epochs"):
        value = FLAGS[name].value
        if value is not None and value < 1:
            raise cli.UserError(f"invalid value {value}", f"--{name} {value}",
                                "expected a positive integer")
    overrides = {field: FLAGS[field].value for field in config_lib.TrainConfig.__dataclass_fields__
                 if field not in _NOT_FLAGS and field in FLAGS and FLAGS[field].present}
    data_dir = cli.storage_path(FLAGS.data_dir, "--data_dir") or os.path.abspath(default_data_dir())
    workdir = cli.storage_path(FLAGS.workdir, "--workdir") or os.path.abspath(
        os.path.join("workdirs", f"compare-{FLAGS.dataset}"))
    try:
        seeds, methods = parse_seeds(FLAGS.seeds), parse_methods(FLAGS.methods)
        if FLAGS.dry_run:
            probe = f", probed on {FLAGS.transfer_dataset}" if FLAGS.transfer_dataset else ""
            print(f"compares {', '.join(methods)} on {FLAGS.dataset}{probe}, seeds "
                  f"{', '.join(map(str, seeds))}, {FLAGS.steps or 'the preset'} steps each, "
                  f"into {workdir}\nnothing was written (--dry_run)")
            return 0
        cli.check_writable(workdir, "--workdir")
        _, paths = compare_methods(FLAGS.dataset, methods, seeds, FLAGS.steps, workdir,
                                   data_dir, FLAGS.epochs, FLAGS.probe, overrides,
                                   probe_dataset=FLAGS.transfer_dataset, verbose=1)
    except (FileNotFoundError, ValueError) as e:
        raise cli.UserError.wrap(e, f"--dataset {FLAGS.dataset}",
                                 "see `python -m keras_metamae.compare --help`") from e
    from keras_metamae.comparison.report import closing_text

    print()
    print(closing_text(paths))
    print(f"TensorBoard (every run, HParams): tensorboard --logdir {workdir}")


if __name__ == "__main__":
    cli.run_program(sys.modules[__name__])
