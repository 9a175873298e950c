"""`python -m keras_metamae.evaluate` — the DABS linear protocol on a frozen encoder.

    python -m keras_metamae.evaluate --workdir workdirs/digits-metamae
    python -m keras_metamae.evaluate --workdir W --encoder random          # paper baseline
    python -m keras_metamae.evaluate --workdir W --transfer_dataset cifar10

Probes the frozen encoder on the splits the dataset's spec protocol names, with the paper's
probe (DABS: Adam, 100 epochs), the converged probe and kNN (keras_metamae/evaluation/probes.py
says exactly how). Writes `<workdir>/eval/<dataset>.json` and TensorBoard scalars under
`<workdir>/tensorboard/eval`.

The workdir alone says what to evaluate (its config.json and the spec it was trained on,
`dataset_spec.json`), so it can be evaluated from any directory, also after being moved; the
processed data comes from the run's `--data_dir` unless `--data_dir` says where it is now.
`--dry_run` prints what would be probed and written, and exits.
"""

from __future__ import annotations

import sys

from absl import flags

from commandline import cli
from keras_metamae.evaluation.probes import PROBES
from keras_metamae.evaluation.run import plan_evaluation, run_evaluation

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Command-line flags; defined only when run as a program."""
    def define(kind, name, default, help_text, *args):
        getattr(flags, f"DEFINE_{kind}")(name, default, *args, help_text, flag_values=flag_values)

    define("string", "workdir", None, "Training workdir holding config.json and checkpoints "
           "(required).")
    define("string", "dataset", None, "Dataset to evaluate on (default: the pretraining one).")
    define("string", "transfer_dataset", None, "A transfer set of the same modality.")
    define("string", "data_dir", None, "Root of processed datasets (default: the run's, as "
           "recorded in its config.json).")
    define("enum", "encoder", "pretrained", "Which encoder to probe.", ["pretrained", "random"])
    define("integer", "step", None, "Checkpoint step to probe (default: the newest; any kept one).")
    define("integer", "epochs", 100, "Linear-head epochs (DABS protocol: 100).")
    define("integer", "batch_size", None, "Linear-head batch size (default: the preset's).")
    define("bool", "baseline", True, "Also probe a randomly initialized encoder.")
    define("enum", "probe", "both", "paper: the DABS probe (Adam lr 1e-4, L2 1e-4, --epochs); "
           "converged: standardized features + L-BFGS logistic regression (ridge for "
           "regression) regularised on validation; both (default).", list(PROBES))
    flags.mark_flag_as_required("workdir", flag_values=flag_values)


def main(invocation: cli.Invocation):
    """The command (absl): `cli.run_program` parses the flags into FLAGS first."""
    from keras_metamae.data.errors import DataError

    cli.quiet_tensorflow_logs()
    if FLAGS.dataset and FLAGS.transfer_dataset:
        raise cli.UserError("--dataset and --transfer_dataset both given",
                            f"--transfer_dataset {FLAGS.transfer_dataset}",
                            "pass one of them: the dataset to evaluate on")
    if FLAGS.epochs < 1:
        raise cli.UserError(f"invalid value {FLAGS.epochs}", f"--epochs {FLAGS.epochs}",
                            "expected at least 1 epoch")
    if FLAGS.batch_size is not None and FLAGS.batch_size < 1:
        raise cli.UserError(f"invalid value {FLAGS.batch_size}", f"--batch_size {FLAGS.batch_size}",
                            "expected a positive batch size")
    dataset = FLAGS.transfer_dataset or FLAGS.dataset
    try:
        if FLAGS.dry_run:
            plan = plan_evaluation(FLAGS.workdir, dataset, FLAGS.data_dir, FLAGS.encoder,
                                   FLAGS.batch_size, FLAGS.step)
            print(plan.describe(FLAGS.encoder, FLAGS.probe, FLAGS.epochs, FLAGS.baseline))
            return 0
        record = run_evaluation(FLAGS.workdir, dataset, FLAGS.data_dir, FLAGS.encoder,
                                FLAGS.epochs, FLAGS.batch_size, FLAGS.baseline,
                                transfer=bool(FLAGS.transfer_dataset), probe=FLAGS.probe,
                                step=FLAGS.step)
    except DataError as e:
        raise cli.UserError.wrap(e, f"--data_dir {FLAGS.data_dir}" if FLAGS.data_dir else
                                 "--data_dir", "pass the --data_dir that holds the processed "
                                 "dataset") from e
    except (FileNotFoundError, ValueError) as e:
        raise cli.UserError.wrap(e, f"--workdir {FLAGS.workdir}",
                                 "see `python -m keras_metamae.evaluate --help`") from e
    line = f"{record['dataset']}: {record['metric']} = {record['value']:.4f} ({record['encoder']})"
    if record.get("baseline_random") is not None:
        line += f", random encoder {record['baseline_random']:.4f}"
    if "value_best_val" in record:
        line += f"; best on validation (epoch {record['best_epoch']}) {record['value_best_val']:.4f}"
    if "converged" in record:
        line += f"; converged probe {record['converged']['value']:.4f}"
        if record.get("baseline_random_converged") is not None:
            line += f" (random encoder {record['baseline_random_converged']:.4f})"
    if "knn_accuracy" in record:
        line += f", kNN accuracy {record['knn_accuracy']:.4f}"
    print(line)


if __name__ == "__main__":
    cli.run_program(sys.modules[__name__])
