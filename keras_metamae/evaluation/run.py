"""Evaluating a training run directory: resolve what to probe (`plan_evaluation`), probe its
encoder or a random one of the same architecture (`run_evaluation`), write the record.

Writes `<workdir>/eval/<dataset>.json` (`-random` for the random encoder) and TensorBoard
scalars under `<workdir>/tensorboard/eval`. The workdir alone says what to evaluate (its
config.json and the spec it was trained on), so it can be evaluated from any directory, also
after being moved; the processed data comes from the run's `--data_dir` unless `data_dir`
says where it is now.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import TYPE_CHECKING

from commandline import cli, filesystem
from keras_metamae.evaluation.probes import linear_eval
from keras_metamae.rundir import RunDir
from preprocessing.atomic_files import write_text_atomically

if TYPE_CHECKING:
    from keras_metamae.config import TrainConfig
    from preprocessing.spec import DatasetSpec


def random_encoder(config, spec):
    """The paper's "random initialization" baseline: same architecture, untrained, its
    initial weights drawn from `config.seed` (the same seed gives the same encoder)."""
    import keras

    keras.utils.set_random_seed(config.seed)
    model = config.make_model(spec)
    model.build()
    return model.encoder


def write_json(path: str, record: dict) -> None:
    filesystem.makedirs(os.path.dirname(path))
    write_text_atomically(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


def log_to_tensorboard(workdir: str, record: dict, step: int) -> None:
    import tensorflow as tf

    writer = tf.summary.create_file_writer(RunDir(workdir).eval_tensorboard_dir)
    with writer.as_default(step=step):
        tf.summary.scalar(f"linear/{record['dataset']}/{record['metric']}", record["value"])
        if record.get("baseline_random") is not None:
            tf.summary.scalar(f"linear_random/{record['dataset']}/{record['metric']}",
                              record["baseline_random"])
        if "knn_accuracy" in record:
            tf.summary.scalar(f"knn/{record['dataset']}/accuracy", record["knn_accuracy"])
    writer.flush()


@dataclasses.dataclass
class EvaluationPlan:
    """What `run_evaluation` probes and where it writes, resolved before any computation."""

    workdir: str
    config: TrainConfig
    train_spec: DatasetSpec  # what the encoder was trained on
    dataset: str
    version_dir: str
    spec: DatasetSpec  # what it is evaluated on
    batch_size: int
    output_path: str
    step: int | None = None  # the checkpoint probed (None: the newest, none yet, or random)

    def describe(self, encoder_kind: str, probe: str, epochs: int, baseline: bool) -> str:
        encoder = ("random (untrained, same architecture)" if encoder_kind == "random" else
                   f"pretrained, checkpoint step {self.step}" if self.step else
                   "pretrained: none yet")
        roles = {r: self.spec.protocol_splits(r) for r in ("probe_train", "probe_val", "probe_test")}
        splits = ", ".join(f"{role[6:]} {'+'.join(names) or '-'}" for role, names in roles.items())
        return "\n".join([
            f"workdir      {self.workdir} ({self.config.model} on {self.config.dataset})",
            f"encoder      {encoder}",
            f"dataset      {self.dataset}: {self.version_dir}",
            f"probe        {probe} on {splits}; metric {self.spec.metric}; {epochs} epochs, "
            f"batch {self.batch_size}" + ("; plus a random-encoder baseline" if
                                          baseline and encoder_kind == "pretrained" else ""),
            f"writes       {self.output_path} and "
            f"{RunDir(self.workdir).eval_tensorboard_dir}",
            "nothing was computed or written (--dry_run)",
        ])


def plan_evaluation(workdir: str, dataset: str | None = None, data_dir: str | None = None,
                    encoder_kind: str = "pretrained", batch_size: int | None = None,
                    step: int | None = None) -> EvaluationPlan:
    """Resolves and checks everything an evaluation needs before computing anything: the
    workdir, the checkpoint (`step`: any kept one; default the newest), the data (its location
    and token contract) and that the outputs can be written. Raises UserError (or the data
    module's DataError)."""
    from keras_metamae import data
    from preprocessing.spec import load_spec, token_layout_difference

    workdir = cli.storage_path(workdir, "--workdir")
    run_dir = RunDir(workdir)
    config, train_spec = run_dir.load()
    if step is not None:
        step = run_dir.check_step(step)
    elif encoder_kind == "pretrained" and run_dir.checkpoint_steps():
        step = run_dir.checkpoint_steps()[-1]
    dataset = dataset or config.dataset
    if data_dir is None:
        # Absolute as train records it (an older workdir's relative path: from here).
        data_dir = filesystem.absolute(config.data_dir)
        if not filesystem.isdir(data_dir):
            raise cli.UserError(
                "the processed data this run was trained on is gone", data_dir,
                f"pass --data_dir, the root of processed datasets that holds {dataset}")
    else:
        data_dir = cli.storage_path(data_dir, "--data_dir")
    version_dir = data.find_dataset_dir(data_dir, dataset)
    spec = load_spec(version_dir)
    if spec.is_pretrain_only:
        raise cli.UserError(
            f"{dataset} has no labels (pretrain-only), so there is nothing to probe",
            f"{version_dir}/spec.json",
            f"evaluate on a labelled dataset of the same token layout: python -m "
            f"keras_metamae.evaluate --workdir {workdir} --transfer_dataset LABELLED")
    # The encoder's token contract must match the evaluated dataset's.
    field = token_layout_difference(spec, train_spec)
    if field is not None:
        raise cli.UserError(
            f"{dataset} has {field}={getattr(spec, field)} but the encoder was trained on "
            f"{config.dataset} with {field}={getattr(train_spec, field)}",
            f"{version_dir}/spec.json",
            "transfer needs a dataset of the same modality and tokens")
    output_path = run_dir.eval_path(dataset, encoder_kind)
    # Before the probe runs (minutes): a result that cannot be written is refused now.
    cli.check_writable(os.path.dirname(output_path), "--workdir")
    cli.check_writable(run_dir.eval_tensorboard_dir, "--workdir")
    # Table 16 fixes some probe batches (Genomics-ID 64 where pretraining uses 32).
    batch_size = batch_size or spec.probe_batch_size or config.batch_size
    return EvaluationPlan(workdir=workdir, step=step, config=config, train_spec=train_spec,
                          dataset=dataset, version_dir=version_dir, spec=spec,
                          batch_size=batch_size, output_path=output_path)


def run_evaluation(workdir: str, dataset: str | None = None, data_dir: str | None = None,
                   encoder_kind: str = "pretrained", epochs: int = 100,
                   batch_size: int | None = None, baseline: bool = True,
                   transfer: bool = False, probe: str = "both", progress: bool = True,
                   step: int | None = None) -> dict:
    """Probes the workdir's encoder (`plan_evaluation`; `step`: a kept checkpoint, default the
    newest readable one), writes the JSON and TensorBoard scalars, returns the record.
    `progress`: a line per phase on stderr."""
    plan = plan_evaluation(workdir, dataset, data_dir, encoder_kind, batch_size, step)
    config, spec, train_spec = plan.config, plan.spec, plan.train_spec
    config.apply_matmul_precision()  # as the run trained
    if encoder_kind == "random":
        encoder, step = random_encoder(config, train_spec), 0
    else:
        # The user's step, not the plan's newest: without one, a damaged newest checkpoint
        # falls back to the one before it.
        model, _, _, step = RunDir(plan.workdir).load_trained_model(step)
        encoder = model.encoder
    record = linear_eval(encoder, spec, plan.version_dir, epochs=epochs,
                         batch_size=plan.batch_size, seed=config.seed, probe=probe,
                         progress=f"{encoder_kind} encoder" if progress else None)
    record.update(encoder=encoder_kind, step=step, workdir=plan.workdir,
                  pretrain_dataset=config.dataset, model=config.model, transfer=transfer)
    record["baseline_random"] = None
    if encoder_kind == "pretrained" and baseline:
        baseline_record = linear_eval(random_encoder(config, train_spec), spec, plan.version_dir,
                                      epochs=epochs, batch_size=plan.batch_size,
                                      seed=config.seed, knn=False, probe=probe,
                                      progress="random encoder" if progress else None)
        record["baseline_random"] = baseline_record["value"]
        if "converged" in baseline_record:
            record["baseline_random_converged"] = baseline_record["converged"]["value"]
    write_json(plan.output_path, record)
    log_to_tensorboard(plan.workdir, record, step)
    return record
