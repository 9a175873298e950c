"""The linear probes: the paper's (L2 as PyTorch's Adam, last epoch + best on validation, the
spec's protocol splits) and the converged one."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from keras_metamae.evaluation import probes
from keras_metamae.evaluation.run import random_encoder
from preprocessing.spec import DatasetSpec, load_spec


def _spec(task="multiclass", num_classes=3, metric="accuracy"):
    return DatasetSpec(name="toy", modality="tabular", input_shape=[4], tokenizer="tabular",
                       patch_shape=[1], num_tokens=4, token_grid=[4], token_dim=1, task=task,
                       metric=metric, num_classes=num_classes)


def test_paper_probe_weight_decay_is_l2_like_pytorch_adam():
    """PyTorch's Adam(weight_decay) adds wd*w to the gradient and then normalizes it, so with no
    data gradient every weight still moves by lr on the first step; decoupled AdamW-style decay
    would move it by lr*wd*w (~1e-5 here)."""
    x = np.zeros((8, 5), np.float32)  # zero features: the kernel has no data gradient
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    lr = 1e-2
    kernels = {}
    for wd in (0.0, 1e-2):
        predict = probes.train_linear_head(x, y, _spec(), epochs=1, batch_size=8, seed=0,
                                             learning_rate=lr, weight_decay=wd)
        kernels[wd] = predict.head.layers[-1].kernel.numpy()
    np.testing.assert_allclose(np.abs(kernels[0.0] - kernels[1e-2]), lr, rtol=0.02)
    assert np.all((kernels[1e-2] - kernels[0.0]) * np.sign(kernels[0.0]) < 0)  # towards zero


def test_paper_probe_reports_last_epoch_and_best_on_validation():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 6)) * 3

    def draw(n):
        y = rng.integers(0, 3, n)
        return (centers[y] + rng.normal(size=(n, 6))).astype(np.float32), y

    result = probes.paper_probe(_spec(), draw(300), draw(60), draw(60), epochs=5,
                                  batch_size=32, seed=0)
    assert 1 <= result["best_epoch"] <= 5
    assert 0.0 <= result["value"] <= 1.0 and 0.0 <= result["value_best_val"] <= 1.0
    without_val = probes.paper_probe(_spec(), draw(300), None, draw(60), epochs=2,
                                       batch_size=32, seed=0)
    assert "value_best_val" not in without_val


@pytest.mark.parametrize("task,metric,num_classes", [
    ("multiclass", "accuracy", 4), ("binary", "accuracy", 2), ("regression", "spearman", 0)])
def test_converged_probe_recovers_a_linear_signal(task, metric, num_classes):
    rng = np.random.default_rng(1)
    w = rng.normal(size=(8, max(num_classes, 1)))

    def draw(n):
        x = rng.normal(size=(n, 8)) * 50 + 10  # badly scaled: the probe standardizes
        score = ((x - 10) / 50) @ w
        if task == "regression":
            y = score[:, 0].astype(np.float32)
        elif task == "binary":
            y = (score[:, 0] > 0).astype(np.int64)
        else:
            y = np.argmax(score, axis=1)
        return x.astype(np.float32), y

    spec = _spec(task, num_classes, metric)
    result = probes.converged_probe(spec, draw(400), draw(100), draw(200), seed=0)
    assert result["value"] > 0.85, result
    assert result["C"] in probes.CONVERGED_C_GRID and result["selected_on"] == "val"
    no_val = probes.converged_probe(spec, draw(400), None, draw(200), seed=0)
    assert no_val["selected_on"] == "train_holdout" and no_val["value"] > 0.85


def test_converged_probe_shows_what_the_paper_probe_misses_on_digits(digits_data_dir):
    """A random digits encoder: 100 epochs of Adam at lr 1e-4 underfit (~0.15), the converged
    probe reads the features (> 0.5, like kNN)."""
    from keras_metamae import config as config_lib
    from keras_metamae import data

    version_dir = data.find_dataset_dir(digits_data_dir, "digits")
    spec = load_spec(version_dir)
    encoder = random_encoder(config_lib.resolve("digits", dict(
        embed_dim=32, encoder_depth=1, encoder_heads=2, encoder_mlp_dim=64)), spec)
    record = probes.linear_eval(encoder, spec, version_dir, epochs=10, batch_size=64, knn=False)
    assert record["converged"]["value"] > 0.6
    assert record["converged"]["value"] > record["value"] + 0.2


def test_probe_reads_the_splits_the_spec_protocol_names(digits_data_dir, tmp_path):
    """A protocol of probe_train = train + val (AudioMNIST, DTD, ... in DABS) and no val."""
    from keras_metamae import config as config_lib
    from keras_metamae import data

    source = data.find_dataset_dir(digits_data_dir, "digits")
    version_dir = str(tmp_path / "digits" / "2")
    shutil.copytree(source, version_dir)
    spec_path = os.path.join(version_dir, "spec.json")
    d = json.load(open(spec_path))
    d["protocol"] = {"probe_train": ["train", "val"], "probe_val": []}
    json.dump(d, open(spec_path, "w"))
    spec = load_spec(version_dir)
    encoder = random_encoder(config_lib.resolve("digits", dict(
        embed_dim=16, encoder_depth=1, encoder_heads=2, encoder_mlp_dim=16)), spec)
    record = probes.linear_eval(encoder, spec, version_dir, epochs=1, batch_size=64,
                                  knn=False, probe="paper")
    assert record["train_examples"] == spec.splits["train"].num_examples + spec.splits["val"].num_examples
    assert record["test_examples"] == spec.splits["test"].num_examples
    assert "value_best_val" not in record and "converged" not in record
    d["protocol"] = {"probe_test": ["holdout"]}
    json.dump(d, open(spec_path, "w"))
    with pytest.raises(Exception, match="holdout"):
        load_spec(version_dir)
