"""`make demo` — the whole pipeline on the embedded default dataset, offline, on a CPU.

Preprocess digits -> pretrain MetaMAE -> pretrain the MAE baseline with the same budget ->
linear-evaluate both and a random encoder -> export the MetaMAE encoder -> print a table.

    python -m keras_metamae.demo [--steps 600] [--workdir workdirs/demo]
"""

from __future__ import annotations

import os
import sys
import time

from absl import flags

from commandline import cli

FLAGS = flags.FLAGS


def run_demo(workdir: str, steps: int | None, data_dir: str | None, epochs: int) -> list[dict]:
    from keras_metamae.evaluation.run import run_evaluation
    from keras_metamae.training.run import (default_data_dir, locate_or_prepare_dataset,
                                            run_training)

    data_dir = data_dir or default_data_dir()
    started = time.perf_counter()
    locate_or_prepare_dataset("digits", data_dir)
    print(f"[demo] digits preprocessed in {data_dir} ({time.perf_counter() - started:.0f} s)")

    rows = []
    for model in ("metamae", "mae"):
        overrides = {"model": model, "export": model == "metamae"}
        if steps:
            overrides["steps"] = steps
        run_dir = os.path.join(workdir, model)
        print(f"[demo] pretraining {model} in {run_dir}")
        summary = run_training("digits", overrides, data_dir, run_dir, verbose=2)
        record = run_evaluation(run_dir, epochs=epochs, baseline=False)
        online = summary["online_eval"]
        rows.append({"method": "MetaMAE" if model == "metamae" else "MAE",
                     "metric": record["metric"], "value": record["value"],
                     "converged": (record.get("converged") or {}).get("value"),
                     "knn": record.get("knn_accuracy"), "train_seconds": summary["train_seconds"],
                     "online": online.get("last"), "online_first": online.get("first"),
                     "export": summary["export_dir"], "workdir": run_dir})
    random_record = run_evaluation(os.path.join(workdir, "metamae"), epochs=epochs,
                                            encoder_kind="random")
    rows.append({"method": "random encoder", "metric": random_record["metric"],
                 "value": random_record["value"],
                 "converged": (random_record.get("converged") or {}).get("value"),
                 "knn": random_record.get("knn_accuracy"),
                 # The MetaMAE run's step 0: its encoder at random initialisation (`evaluate`'s
                 # random baseline draws its weights from the same seed).
                 "online": rows[0].get("online_first"),
                 "train_seconds": 0.0, "export": None, "workdir": None})
    return rows


def format_table(rows: list[dict]) -> str:
    # linear = the paper's probe (100 epochs of Adam at lr 1e-4); converged = L-BFGS logistic
    # regression regularised on validation (see keras_metamae/evaluation/probes.py), kNN = cosine k=20,
    # all on the test split. online = the training run's last online evaluation
    # (keras_metamae/evaluation/online.py: kNN and converged probe, bank = train, queries = val).
    lines = [f"{'method':<16} {'metric':<10} {'linear':>8} {'converged':>10} {'kNN':>8} "
             f"{'online kNN':>11} {'online probe':>13} {'step':>5} {'train time':>11}",
             "-" * 100]

    def figure(value):
        return "-" if value is None else f"{value:.4f}"

    for r in rows:
        online = r.get("online") or {}
        probe = next((v for k, v in online.items() if k.startswith("probe_")), None)
        lines.append(f"{r['method']:<16} {r['metric']:<10} {r['value']:>8.4f} "
                     f"{figure(r.get('converged')):>10} {figure(r.get('knn')):>8} "
                     f"{figure(online.get('knn_accuracy')):>11} {figure(probe):>13} "
                     f"{online.get('step', '-'):>5} {r['train_seconds']:>10.1f}s")
    return "\n".join(lines)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Command-line flags; defined only when run as a program."""
    flags.DEFINE_integer("steps", None, "Pretraining steps per method (default: the digits "
                         "preset).", flag_values=flag_values)
    flags.DEFINE_string("workdir", os.path.join("workdirs", "demo"), "Where both runs go.",
                        flag_values=flag_values)
    flags.DEFINE_string("data_dir", None, "Root of preprocessed datasets.",
                        flag_values=flag_values)
    flags.DEFINE_integer("epochs", 100, "Linear-probe epochs.", flag_values=flag_values)


def main(invocation: cli.Invocation):
    """The command (absl): `cli.run_program` parses the flags into FLAGS first."""
    cli.quiet_tensorflow_logs()
    workdir = cli.local_path(FLAGS.workdir, "--workdir")
    data_dir = cli.local_path(FLAGS.data_dir, "--data_dir") if FLAGS.data_dir else None
    for name in ("steps", "epochs"):
        value = FLAGS[name].value
        if value is not None and value < 1:
            raise cli.UserError(f"invalid value {value}", f"--{name} {value}",
                                "expected a positive integer")
    if FLAGS.dry_run:
        print(f"pretrains MetaMAE and MAE on digits into {workdir}/metamae and {workdir}/mae "
              f"({FLAGS.steps or 'the digits preset'} steps each), probes both and a random "
              f"encoder ({FLAGS.epochs} epochs), exports the MetaMAE encoder\n"
              f"nothing was written (--dry_run)")
        return 0
    cli.check_writable(workdir, "--workdir")
    started = time.perf_counter()
    try:
        rows = run_demo(workdir, FLAGS.steps, data_dir, FLAGS.epochs)
    except (FileNotFoundError, ValueError) as e:
        raise cli.UserError.wrap(e, "make demo", "see the message above") from e
    print()
    print(format_table(rows))
    print()
    print(f"Total time: {time.perf_counter() - started:.0f} s")
    print(f"Exported MetaMAE encoder: {rows[0]['export']}")
    print(f"  saved_model_cli show --dir {rows[0]['export']} --all")
    print(f"TensorBoard (losses, online kNN/probe curves of both runs): "
          f"tensorboard --logdir {workdir}")


if __name__ == "__main__":
    cli.run_program(sys.modules[__name__])
