"""`python -m keras_metamae.evaluate` — the DABS linear protocol on a frozen encoder.

    python -m keras_metamae.evaluate --workdir workdirs/digits-metamae
    python -m keras_metamae.evaluate --workdir W --encoder random          # paper baseline
    python -m keras_metamae.evaluate --workdir W --transfer_dataset cifar10

Features = mean of the encoder's non-CLS output tokens (after its final LayerNorm). The splits
come from the spec's protocol (`probe_train`, `probe_val`, `probe_test`: EuroSAT probes on its
held-out transfer part, AudioMNIST on train+val, ...). The paper's probe: one linear layer
trained with Adam (lr 1e-4, L2 weight decay 1e-4, as the reference's PyTorch Adam) for 100
epochs, scored on the test split with the spec's metric after the last epoch (`value`), plus the
test value at the best validation epoch where the protocol has a validation split. Next to it a
converged probe (standardized features, L-BFGS logistic regression regularised on validation).
Writes `<workdir>/eval/<dataset>.json` and TensorBoard scalars under `<workdir>/tensorboard/eval`.

The workdir alone says what to evaluate (its config.json and the spec it was trained on,
`dataset_spec.json`), so it can be evaluated from any directory, also after being moved; the
processed data comes from the run's `--data_dir` unless `--data_dir` says where it is now.
`--dry_run` prints what would be probed and written, and exits.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import TYPE_CHECKING

import numpy as np
from absl import flags

from keras_metamae import cli, metrics

if TYPE_CHECKING:
    from keras_metamae.config import TrainConfig
    from preprocessing.spec import DatasetSpec


def _progress_line(label: str | None, total: int | None, unit: str):
    """A progress line (keras_metamae/progress.py) for one evaluation phase, or None (quiet)."""
    if label is None:
        return None
    from keras_metamae.progress import ProgressLine

    return ProgressLine(label, total=total, unit=unit).start(0, heartbeat=True)


def extract_features(encoder, spec, version_dir: str, split, batch_size: int,
                     per_token: bool = False, progress: str | None = None):
    """(features, labels) of a whole split (or several, concatenated), in file order, from the
    frozen encoder. `progress`: the label of a progress line (examples embedded), or None."""
    from keras_metamae import data

    ds = data.make_dataset(spec, version_dir, split, batch_size, shuffle=False, repeat=False,
                           drop_remainder=False)
    splits = [split] if isinstance(split, str) else list(split)
    expected = sum(spec.splits[s].num_examples for s in splits if s in spec.splits)
    line = _progress_line(progress and f"{progress}: embed {'+'.join(splits)}",
                          expected or None, "examples")
    features, labels = [], []
    done = 0
    try:
        for batch in ds:
            if per_token:
                latent = encoder(batch["tokens"], training=False)[:, 1:, :]
                features.append(np.asarray(latent, np.float32))
            else:
                features.append(np.asarray(encoder.features(batch["tokens"], training=False),
                                           np.float32))
            labels.append(batch["label"].numpy())
            done += len(labels[-1])
            if line is not None:
                line.update(done)
        if line is not None:
            line.finish(done)
    finally:
        if line is not None:
            line.close()
    if not features:
        raise ValueError(f"{version_dir}: split {split!r} is empty")
    return np.concatenate(features), np.concatenate(labels)


def _head_units_and_loss(spec):
    import keras

    if spec.task == "regression":
        return 1, "mse"
    if spec.task == "binary":
        return 1, keras.losses.BinaryCrossentropy(from_logits=True)
    if spec.task == "multilabel":
        return spec.num_classes, keras.losses.BinaryCrossentropy(from_logits=True)
    return spec.num_classes, keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def train_linear_head(train_x, train_y, spec, *, epochs: int, batch_size: int, seed: int,
                      learning_rate: float = 1e-4, weight_decay: float = 1e-4,
                      on_epoch_end=None):
    """The paper's probe: one Dense layer on frozen features, Adam with L2 weight decay.

    The reference trains it with PyTorch's Adam(weight_decay=wd), which adds wd * w to the
    gradient of every parameter (L2, not AdamW's decoupled decay); an L2 regularizer of wd / 2
    on the kernel and the bias gives the same gradient. `on_epoch_end(epoch, predict)` is called
    after each epoch (for best-on-validation bookkeeping). Returns `predict`: features -> outputs.
    """
    import keras

    keras.utils.set_random_seed(seed)
    units, loss = _head_units_and_loss(spec)
    l2 = keras.regularizers.L2(weight_decay / 2) if weight_decay else None
    # Per-token tasks: features [N, T, D] and labels [N, T]; Dense acts on the last axis.
    head = keras.Sequential([keras.Input(train_x.shape[1:]),
                             keras.layers.Dense(units, kernel_regularizer=l2, bias_regularizer=l2)])
    # epsilon as PyTorch's Adam default (Keras adds it before the bias correction, 1e-7).
    head.compile(optimizer=keras.optimizers.Adam(learning_rate, epsilon=1e-8), loss=loss)
    targets = train_y.astype("float32") if spec.task in ("regression", "binary",
                                                         "multilabel") else train_y
    if spec.task in ("regression", "binary") and targets.ndim == 1:
        targets = targets[:, None]

    def predict(x):
        return head.predict(x, batch_size=4096, verbose=0)

    callbacks = []
    if on_epoch_end is not None:
        callbacks.append(keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: on_epoch_end(epoch, predict)))
    head.fit(train_x, targets, batch_size=batch_size, epochs=epochs, verbose=0, shuffle=True,
             callbacks=callbacks)
    predict.head = head  # for inspection (tests)
    return predict


def paper_probe(spec, train, val, test, *, epochs: int, batch_size: int, seed: int,
                progress: str | None = None) -> dict:
    """The DABS/paper linear probe (Adam lr 1e-4, L2 1e-4, `epochs` epochs).

    `value` is the test metric after the last epoch, as the reference reports it; where the
    protocol has a validation split, `value_best_val` is the test metric at the epoch with the
    best validation metric (`best_epoch`, 1-based).
    """
    track = {"best": -np.inf, "epoch": 0, "test": None}
    line = _progress_line(progress and f"{progress}: paper probe", epochs, "epochs")

    def on_epoch_end(epoch, predict):
        if val is not None:
            score = metrics.compute(spec.metric, val[1], predict(val[0]), spec.task)
            if score > track["best"]:
                track.update(best=score, epoch=epoch + 1,
                             test=metrics.compute(spec.metric, test[1], predict(test[0]),
                                                  spec.task))
        if line is not None:
            line.update(epoch + 1, details=(f"best val {spec.metric} {track['best']:.4f}"
                                            if val is not None else None))

    try:
        predict = train_linear_head(
            train[0], train[1], spec, epochs=epochs, batch_size=batch_size, seed=seed,
            on_epoch_end=on_epoch_end if val is not None or line is not None else None)
        if line is not None:
            line.finish(epochs)
    finally:
        if line is not None:
            line.close()
    result = {"value": metrics.compute(spec.metric, test[1], predict(test[0]), spec.task)}
    if val is not None:
        result.update(value_best_val=track["test"], best_epoch=track["epoch"],
                      val_value=track["best"])
    return result


# Inverse regularisation strengths tried by the converged probe (selected on validation).
CONVERGED_C_GRID = tuple(10.0 ** k for k in range(-4, 5))
# Share of the probe's training data held out for selection when the protocol has no val split.
SELECTION_HOLDOUT = 0.1


def _flatten_tokens(x, y):
    """Per-token tasks: [N, T, D], [N, T] -> rows of tokens."""
    return x.reshape(-1, x.shape[-1]), y.reshape(-1)


class _ConstantClassifier:
    """Stands in for a classifier fitted on a single class (tiny or degenerate probe data)."""

    def __init__(self, classes):
        self.classes_ = np.asarray(classes)

    def decision_function(self, x):
        return np.zeros((len(x), 1))


def _fit_converged(spec, x, y, strength: float, seed: int):
    """A converged linear model on standardized features; returns features -> outputs shaped
    like the paper head's (logits / values), so `metrics.compute` scores both the same way."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.multiclass import OneVsRestClassifier

    per_token = x.ndim == 3
    if per_token:
        x, y = _flatten_tokens(x, y)
    if spec.task == "regression":
        model = Ridge(alpha=1.0 / strength).fit(x, y.reshape(len(y), -1)[:, 0])
    elif spec.task != "multilabel" and len(np.unique(y)) < 2:
        # One class in the training data: the only prediction there is.
        model = _ConstantClassifier(np.unique(y))
    else:
        logistic = LogisticRegression(C=strength, solver="lbfgs", max_iter=1000, random_state=seed)
        model = (OneVsRestClassifier(logistic) if spec.task == "multilabel" else logistic).fit(x, y)

    def predict(features):
        shape = features.shape
        flat = features.reshape(-1, shape[-1]) if per_token else features
        if spec.task == "regression":
            out = model.predict(flat)[:, None]
        elif spec.task == "multilabel":
            out = model.decision_function(flat)
        else:
            scores = model.decision_function(flat)
            if scores.ndim == 1:  # two classes seen: the score of classes_[1]
                scores = np.stack([-scores, scores], axis=1)
            if spec.task == "binary" and scores.shape[1] == 1:
                out = np.full((len(flat), 1), 1.0 if model.classes_[0] == 1 else -1.0)
            elif spec.task == "binary":
                out = (scores[:, 1] - scores[:, 0])[:, None] / 2
            else:
                # Classes absent from the training data can never be predicted.
                out = np.full((len(flat), max(spec.num_classes, 1)), -np.inf, np.float32)
                out[:, model.classes_.astype(np.int64)] = scores
        return out.reshape(*shape[:-1], out.shape[-1]) if per_token else out

    return predict


def converged_probe(spec, train, val, test, *, seed: int, progress: str | None = None,
                    strengths=CONVERGED_C_GRID) -> dict:
    """Standardized features, then L-BFGS logistic regression (ridge for regression) with the
    regularisation picked on the validation split, or on a seeded 10% of the training data
    when the protocol has none, among `strengths` (inverse regularisation C); refit on all
    training data with the chosen strength.

    The paper's 100 epochs of Adam at lr 1e-4 are far from converged on small data (a random
    digits encoder scores 0.15 with it and 0.60 with kNN); this probe shows what the features
    hold, next to the paper's number.
    """
    mean = train[0].reshape(-1, train[0].shape[-1]).mean(axis=0)
    std = train[0].reshape(-1, train[0].shape[-1]).std(axis=0) + 1e-6
    scale = lambda x: ((x - mean) / std).astype(np.float64)  # noqa: E731
    train_x = scale(train[0])
    if val is not None:
        fit, select, selected_on = (train_x, train[1]), (scale(val[0]), val[1]), "val"
    else:
        order = np.random.default_rng(seed).permutation(len(train_x))
        cut = max(1, int(round(len(order) * SELECTION_HOLDOUT)))
        held, kept = order[:cut], order[cut:]
        fit, select = (train_x[kept], train[1][kept]), (train_x[held], train[1][held])
        selected_on = "train_holdout"
    best = (-np.inf, None)
    # One fit per strength, then the refit with the chosen one.
    line = _progress_line(progress and f"{progress}: converged probe",
                          len(strengths) + 1, "fits")
    try:
        for fits, strength in enumerate(strengths, 1):
            predict = _fit_converged(spec, fit[0], fit[1], strength, seed)
            score = metrics.compute(spec.metric, select[1], predict(select[0]), spec.task)
            if score > best[0]:
                best = (score, strength)
            if line is not None:
                line.update(fits, details=f"C={strength:g}")
        predict = _fit_converged(spec, train_x, train[1], best[1], seed)
        if line is not None:
            line.finish(len(strengths) + 1, details=f"chose C={best[1]:g}")
    finally:
        if line is not None:
            line.close()
    return {"value": metrics.compute(spec.metric, test[1], predict(scale(test[0])), spec.task),
            "C": best[1], "selection_value": best[0], "selected_on": selected_on}


PROBES = ("paper", "converged", "both")


def linear_eval(encoder, spec, version_dir: str, *, epochs: int, batch_size: int,
                seed: int = 0, knn: bool = True, probe: str = "both",
                progress: str | None = None) -> dict:
    """Probes a frozen encoder on the splits the spec's protocol names.

    `probe`: "paper" (the DABS protocol, reported as `value`), "converged" (under `converged`)
    or "both". `progress`: a label (e.g. "pretrained encoder") to show a progress line per
    phase (embedding each split, the paper probe's epochs, the converged probe's fits) on
    stderr; None is quiet.
    """
    if probe not in PROBES:
        raise ValueError(f"--probe: got {probe!r}, expected one of {PROBES}")
    per_token = spec.task == "per_token_multiclass"
    roles = {role: spec.protocol_splits(role) for role in ("probe_train", "probe_val", "probe_test")}
    for role in ("probe_train", "probe_test"):
        missing = [s for s in roles[role] if s not in spec.splits] or ([] if roles[role] else ["(none)"])
        if missing:
            raise ValueError(f"{version_dir}/spec.json: split {missing[0]!r} is missing; the "
                             f"linear protocol trains on {roles['probe_train']} and reports on "
                             f"{roles['probe_test']} (spec protocol)")
    started = time.perf_counter()
    train = extract_features(encoder, spec, version_dir, roles["probe_train"], 256, per_token,
                             progress)
    test = extract_features(encoder, spec, version_dir, roles["probe_test"], 256, per_token,
                            progress)
    val = None
    if roles["probe_val"] and all(spec.splits.get(s) and spec.splits[s].num_examples
                                  for s in roles["probe_val"]):
        val = extract_features(encoder, spec, version_dir, roles["probe_val"], 256, per_token,
                               progress)
    result = {
        "dataset": spec.name,
        "metric": spec.metric,
        "probe_splits": roles,
        "train_examples": int(len(train[0])),
        "test_examples": int(len(test[0])),
        "epochs": epochs,
        "batch_size": batch_size,
    }
    if probe in ("paper", "both"):
        result.update(paper_probe(spec, train, val, test, epochs=epochs, batch_size=batch_size,
                                  seed=seed, progress=progress))
    if probe in ("converged", "both"):
        result["converged"] = converged_probe(spec, train, val, test, seed=seed, progress=progress)
        if probe == "converged":
            result["value"] = result["converged"]["value"]
    result["probe"] = probe
    if knn and spec.task in ("multiclass", "binary"):
        result["knn_accuracy"] = metrics.knn_accuracy(train[0], train[1], test[0], test[1])
    result["seconds"] = time.perf_counter() - started
    return result


def random_encoder(config, spec):
    """The paper's "random initialization" baseline: same architecture, untrained."""
    from keras_metamae.train import build_model_for_spec

    return build_model_for_spec(config, spec).encoder


def write_json(path: str, record: dict) -> None:
    from preprocessing.atomic_files import write_text_atomically

    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_text_atomically(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


def log_to_tensorboard(workdir: str, record: dict, step: int) -> None:
    import tensorflow as tf

    writer = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard", "eval"))
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

    def describe(self, encoder_kind: str, probe: str, epochs: int, baseline: bool) -> str:
        from keras_metamae.checkpoints import CheckpointManager

        steps = CheckpointManager(os.path.join(self.workdir, "checkpoints"), create=False).steps()
        encoder = ("random (untrained, same architecture)" if encoder_kind == "random" else
                   f"pretrained, checkpoint step {steps[-1]}" if steps else "pretrained: none yet")
        roles = {r: self.spec.protocol_splits(r) for r in ("probe_train", "probe_val", "probe_test")}
        splits = ", ".join(f"{role[6:]} {'+'.join(names) or '-'}" for role, names in roles.items())
        return "\n".join([
            f"workdir      {self.workdir} ({self.config.model} on {self.config.dataset})",
            f"encoder      {encoder}",
            f"dataset      {self.dataset}: {self.version_dir}",
            f"probe        {probe} on {splits}; metric {self.spec.metric}; {epochs} epochs, "
            f"batch {self.batch_size}" + ("; plus a random-encoder baseline" if
                                          baseline and encoder_kind == "pretrained" else ""),
            f"writes       {self.output_path} and {os.path.join(self.workdir, 'tensorboard', 'eval')}",
            "nothing was computed or written (--dry_run)",
        ])


def plan_evaluation(workdir: str, dataset: str | None = None, data_dir: str | None = None,
                    encoder_kind: str = "pretrained", batch_size: int | None = None
                    ) -> EvaluationPlan:
    """Resolves and checks everything an evaluation needs before computing anything: the
    workdir, the data (its location and token contract) and that the outputs can be written.
    Raises UserError (or the data module's DataError)."""
    from keras_metamae import data
    from keras_metamae.export import load_workdir
    from preprocessing.spec import load_spec, token_segments

    workdir = cli.local_path(workdir, "--workdir")
    config, train_spec = load_workdir(workdir)
    dataset = dataset or config.dataset
    if data_dir is None:
        # Absolute as train records it (an older workdir's relative path: from here).
        data_dir = os.path.abspath(config.data_dir)
        if not os.path.isdir(data_dir):
            raise cli.UserError(
                "the processed data this run was trained on is gone", data_dir,
                f"pass --data_dir, the root of processed datasets that holds {dataset}")
    else:
        data_dir = cli.local_path(data_dir, "--data_dir")
    version_dir = data.find_dataset_dir(data_dir, dataset)
    spec = load_spec(version_dir)
    # The encoder's token contract must match the evaluated dataset's.
    for field in ("num_tokens", "token_dim", "vocab_size", "segments"):
        # Segments: token layout only (vqa's raw text is a pair where mscoco's is a caption).
        same = (token_segments(spec.segments) == token_segments(train_spec.segments)
                if field == "segments" else getattr(spec, field) == getattr(train_spec, field))
        if not same:
            raise cli.UserError(
                f"{dataset} has {field}={getattr(spec, field)} but the encoder was trained on "
                f"{config.dataset} with {field}={getattr(train_spec, field)}",
                f"{version_dir}/spec.json",
                "transfer needs a dataset of the same modality and tokens")
    suffix = "" if encoder_kind == "pretrained" else "-random"
    output_path = os.path.join(workdir, "eval", f"{dataset}{suffix}.json")
    # Before the probe runs (minutes): a result that cannot be written is refused now.
    cli.check_writable(os.path.dirname(output_path), "--workdir")
    cli.check_writable(os.path.join(workdir, "tensorboard", "eval"), "--workdir")
    # Table 16 fixes some probe batches (Genomics-ID 64 where pretraining uses 32).
    batch_size = batch_size or spec.probe_batch_size or config.batch_size
    return EvaluationPlan(workdir=workdir, config=config, train_spec=train_spec, dataset=dataset,
                          version_dir=version_dir, spec=spec, batch_size=batch_size,
                          output_path=output_path)


def run_evaluation(workdir: str, dataset: str | None = None, data_dir: str | None = None,
                   encoder_kind: str = "pretrained", epochs: int = 100,
                   batch_size: int | None = None, baseline: bool = True,
                   transfer: bool = False, probe: str = "both", progress: bool = True) -> dict:
    """Probes the workdir's encoder (`plan_evaluation`), writes the JSON and TensorBoard
    scalars, returns the record. `progress`: a line per phase on stderr."""
    from keras_metamae.export import load_trained_model

    plan = plan_evaluation(workdir, dataset, data_dir, encoder_kind, batch_size)
    config, spec, train_spec = plan.config, plan.spec, plan.train_spec
    step = 0
    if encoder_kind == "random":
        encoder = random_encoder(config, train_spec)
    else:
        model, _, _, step = load_trained_model(plan.workdir)
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
    define("integer", "epochs", 100, "Linear-head epochs (DABS protocol: 100).")
    define("integer", "batch_size", None, "Linear-head batch size (default: the preset's).")
    define("bool", "baseline", True, "Also probe a randomly initialized encoder.")
    define("enum", "probe", "both", "paper: the DABS probe (Adam lr 1e-4, L2 1e-4, --epochs); "
           "converged: standardized features + L-BFGS logistic regression (ridge for "
           "regression) regularised on validation; both (default).", list(PROBES))
    flags.mark_flag_as_required("workdir", flag_values=flag_values)


def main(invocation: cli.Invocation):
    """The command (absl): `cli.run_program` parses the flags into FLAGS first."""
    from keras_metamae.data import DataError

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
                                   FLAGS.batch_size)
            print(plan.describe(FLAGS.encoder, FLAGS.probe, FLAGS.epochs, FLAGS.baseline))
            return 0
        record = run_evaluation(FLAGS.workdir, dataset, FLAGS.data_dir, FLAGS.encoder,
                                FLAGS.epochs, FLAGS.batch_size, FLAGS.baseline,
                                transfer=bool(FLAGS.transfer_dataset), probe=FLAGS.probe)
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
