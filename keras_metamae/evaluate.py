"""`python -m keras_metamae.evaluate` — the DABS linear protocol on a frozen encoder.

    python -m keras_metamae.evaluate --workdir workdirs/digits-metamae
    python -m keras_metamae.evaluate --workdir W --encoder random          # paper baseline
    python -m keras_metamae.evaluate --workdir W --transfer_dataset cifar10

Features = mean of the encoder's non-CLS output tokens (after its final LayerNorm). One
linear layer is trained with Adam (lr 1e-4, weight decay 1e-4) for 100 epochs on the train
split and scored on the test split with the metric the dataset's spec declares. Writes
`<workdir>/eval/<dataset>.json` and TensorBoard scalars under `<workdir>/tensorboard/eval`.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

from keras_metamae.cli import quiet_tensorflow_logs

from keras_metamae import metrics


def extract_features(encoder, spec, version_dir: str, split: str, batch_size: int,
                     per_token: bool = False):
    """(features, labels) of a whole split, in file order, from the frozen encoder."""
    from keras_metamae import data

    ds = data.make_dataset(spec, version_dir, split, batch_size, shuffle=False, repeat=False,
                           drop_remainder=False)
    features, labels = [], []
    for batch in ds:
        if per_token:
            latent = encoder(batch["tokens"], training=False)[:, 1:, :]
            features.append(np.asarray(latent, np.float32))
        else:
            features.append(np.asarray(encoder.features(batch["tokens"], training=False),
                                       np.float32))
        labels.append(batch["label"].numpy())
    if not features:
        raise ValueError(f"{version_dir}: split {split!r} is empty")
    return np.concatenate(features), np.concatenate(labels)


def train_linear_head(train_x, train_y, spec, *, epochs: int, batch_size: int, seed: int,
                      learning_rate: float = 1e-4, weight_decay: float = 1e-4):
    """One Dense layer on frozen features; returns a function features -> outputs."""
    import keras

    keras.utils.set_random_seed(seed)
    # Per-token tasks: features [N, T, D] and labels [N, T]; Dense acts on the last axis.
    if spec.task == "regression":
        units, loss = 1, "mse"
    elif spec.task == "binary":
        units, loss = 1, keras.losses.BinaryCrossentropy(from_logits=True)
    elif spec.task == "multilabel":
        units, loss = spec.num_classes, keras.losses.BinaryCrossentropy(from_logits=True)
    else:
        units, loss = spec.num_classes, keras.losses.SparseCategoricalCrossentropy(
            from_logits=True)
    head = keras.Sequential([keras.Input(train_x.shape[1:]), keras.layers.Dense(units)])
    head.compile(optimizer=keras.optimizers.Adam(learning_rate, weight_decay=weight_decay),
                 loss=loss)
    targets = train_y.astype("float32") if spec.task in ("regression", "binary",
                                                         "multilabel") else train_y
    if spec.task in ("regression", "binary") and targets.ndim == 1:
        targets = targets[:, None]
    head.fit(train_x, targets, batch_size=batch_size, epochs=epochs, verbose=0, shuffle=True)
    return lambda x: head.predict(x, batch_size=4096, verbose=0)


def linear_eval(encoder, spec, version_dir: str, *, epochs: int, batch_size: int,
                seed: int = 0, knn: bool = True) -> dict:
    per_token = spec.task == "per_token_multiclass"
    for split in ("train", "test"):
        if split not in spec.splits:
            raise ValueError(f"{version_dir}/spec.json: split {split!r} is missing; the linear "
                             f"protocol trains on 'train' and reports on 'test'")
    started = time.perf_counter()
    train_x, train_y = extract_features(encoder, spec, version_dir, "train", 256, per_token)
    test_x, test_y = extract_features(encoder, spec, version_dir, "test", 256, per_token)
    predict = train_linear_head(train_x, train_y, spec, epochs=epochs,
                                batch_size=batch_size, seed=seed)
    result = {
        "dataset": spec.name,
        "metric": spec.metric,
        "value": metrics.compute(spec.metric, test_y, predict(test_x), spec.task),
        "train_examples": int(len(train_x)),
        "test_examples": int(len(test_x)),
        "epochs": epochs,
        "batch_size": batch_size,
    }
    if knn and spec.task in ("multiclass", "binary"):
        result["knn_accuracy"] = metrics.knn_accuracy(train_x, train_y, test_x, test_y)
    result["seconds"] = time.perf_counter() - started
    return result


def random_encoder(config, spec):
    """The paper's "random initialization" baseline: same architecture, untrained."""
    from keras_metamae.train import build_model_for_spec

    return build_model_for_spec(config, spec).encoder


def write_json(path: str, record: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


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


def run_evaluation(workdir: str, dataset: str | None = None, data_dir: str | None = None,
                   encoder_kind: str = "pretrained", epochs: int = 100,
                   batch_size: int | None = None, baseline: bool = True,
                   transfer: bool = False) -> dict:
    from keras_metamae import config as config_lib
    from keras_metamae import data
    from keras_metamae.export import load_trained_model
    from preprocessing.spec import load_spec

    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path}: not a training workdir (no config.json)")
    config = config_lib.TrainConfig.load(config_path)
    dataset = dataset or config.dataset
    data_dir = data_dir or config.data_dir
    version_dir = data.find_dataset_dir(data_dir, dataset)
    spec = load_spec(version_dir)
    train_spec = load_spec(data.find_dataset_dir(config.data_dir, config.dataset))
    # The encoder's token contract must match the evaluated dataset's.
    for field in ("num_tokens", "token_dim", "vocab_size", "segments"):
        if getattr(spec, field) != getattr(train_spec, field):
            raise ValueError(
                f"{version_dir}/spec.json: {field}={getattr(spec, field)} but the encoder in "
                f"{workdir} was trained on {config.dataset} with {field}="
                f"{getattr(train_spec, field)}; transfer needs a dataset of the same modality")
    batch_size = batch_size or config.batch_size

    step = 0
    if encoder_kind == "random":
        encoder = random_encoder(config, train_spec)
    else:
        model, _, _, step = load_trained_model(workdir)
        encoder = model.encoder
    record = linear_eval(encoder, spec, version_dir, epochs=epochs, batch_size=batch_size,
                         seed=config.seed)
    record.update(encoder=encoder_kind, step=step, workdir=workdir,
                  pretrain_dataset=config.dataset, model=config.model, transfer=transfer)
    record["baseline_random"] = None
    if encoder_kind == "pretrained" and baseline:
        baseline_record = linear_eval(random_encoder(config, train_spec), spec, version_dir,
                                      epochs=epochs, batch_size=batch_size, seed=config.seed,
                                      knn=False)
        record["baseline_random"] = baseline_record["value"]
    suffix = "" if encoder_kind == "pretrained" else "-random"
    write_json(os.path.join(workdir, "eval", f"{dataset}{suffix}.json"), record)
    log_to_tensorboard(workdir, record, step)
    return record


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags; defined only when run as a program."""
    flags.DEFINE_string("workdir", None, "Training workdir holding config.json and checkpoints.")
    flags.DEFINE_string("dataset", None, "Dataset to evaluate on (default: the pretraining one).")
    flags.DEFINE_string("transfer_dataset", None, "A transfer set of the same modality.")
    flags.DEFINE_string("data_dir", None, "Root of preprocessed datasets (default: the run's).")
    flags.DEFINE_enum("encoder", "pretrained", ["pretrained", "random"], "Which encoder to probe.")
    flags.DEFINE_integer("epochs", 100, "Linear-head epochs (DABS protocol: 100).")
    flags.DEFINE_integer("batch_size", None, "Linear-head batch size (default: the preset's).")
    flags.DEFINE_bool("baseline", True, "Also probe a randomly initialized encoder.")
    flags.mark_flag_as_required("workdir")


def main(argv):
    quiet_tensorflow_logs()
    del argv
    dataset = FLAGS.transfer_dataset or FLAGS.dataset
    try:
        record = run_evaluation(FLAGS.workdir, dataset, FLAGS.data_dir, FLAGS.encoder,
                                FLAGS.epochs, FLAGS.batch_size, FLAGS.baseline,
                                transfer=bool(FLAGS.transfer_dataset))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    line = f"{record['dataset']}: {record['metric']} = {record['value']:.4f} ({record['encoder']})"
    if record.get("baseline_random") is not None:
        line += f", random encoder {record['baseline_random']:.4f}"
    if "knn_accuracy" in record:
        line += f", kNN accuracy {record['knn_accuracy']:.4f}"
    print(line)


if __name__ == "__main__":
    define_flags()
    app.run(main)
