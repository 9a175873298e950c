"""Online evaluation during pretraining: the kNN rule against brute force, what each kind of
label gets, the schedule (step 0, every `eval_every`, not again on resume), TensorBoard and the
run summary. Under MirroredStrategy: tests/test_distributed.py."""

from __future__ import annotations

import collections
import dataclasses
import os

import numpy as np
import pytest

from tests.conftest import TINY_MODEL
from tests.test_train import TINY_RUN, read_scalars


def brute_force_knn(bank, bank_labels, queries, k):
    """One query at a time, in plain Python: cosine similarity, nearest first (equal
    similarities by bank position), majority vote, a tie to the nearest tied neighbour."""
    predicted = []
    for query in queries:
        similarity = [float(np.dot(query, row) / (np.linalg.norm(query) * np.linalg.norm(row)))
                      for row in bank]
        order = sorted(range(len(bank)), key=lambda i: (-similarity[i], i))[:k]
        votes = [bank_labels[i] for i in order]
        counts = collections.Counter(votes)
        top = max(counts.values())
        predicted.append(next(v for v in votes if counts[v] == top))
    return np.array(predicted)


@pytest.mark.parametrize("k", [1, 4, 20, 60])
def test_knn_matches_brute_force(k):
    from keras_metamae.evaluation import knn

    rng = np.random.default_rng(k)
    bank = rng.normal(size=(60, 8)).astype("float32")
    bank_labels = rng.integers(0, 4, size=60)
    queries = rng.normal(size=(33, 8)).astype("float32")
    query_labels = rng.integers(0, 4, size=33)
    expected = brute_force_knn(bank, bank_labels, queries, k)
    np.testing.assert_array_equal(knn.knn_predict(bank, bank_labels, queries, k),
                                  expected)
    accuracy = knn.knn_accuracy(bank, bank_labels, queries, query_labels, k)
    assert accuracy == pytest.approx(np.mean(expected == query_labels))


def test_knn_vote_ties_go_to_the_nearest_tied_class():
    from keras_metamae.evaluation import knn

    angles = np.array([0.1, 0.2, 0.3, 0.4, 0.5])  # neighbours of the query at angle 0, in order
    bank = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    query = np.array([[1.0, 0.0]])
    # 2 votes each for 7 and 3: 7 holds the nearest neighbour.
    assert knn.knn_predict(bank[:4], [7, 3, 3, 7], query, k=4)[0] == 7
    # 9 is nearest but not tied for the most votes; of the tied 3 and 7, 3 is nearer.
    assert knn.knn_predict(bank, [9, 3, 7, 3, 7], query, k=5)[0] == 3
    # Equal similarity (the same vector twice): the earlier bank row counts as nearer.
    twins = np.array([[1.0, 1.0], [2.0, 2.0], [0.0, 1.0]])
    assert knn.knn_predict(twins, [5, 6, 6], [[1.0, 1.0]], k=1)[0] == 5
    assert knn.knn_predict(twins, [6, 5, 6], [[1.0, 1.0]], k=1)[0] == 6


def test_knn_refuses_more_neighbours_than_bank_rows():
    from keras_metamae.evaluation import knn

    bank = np.eye(3, dtype="float32")
    with pytest.raises(ValueError, match="k=4 neighbours but the bank holds 3"):
        knn.knn_predict(bank, [0, 1, 2], bank, k=4)
    with pytest.raises(ValueError, match="3 bank rows but 2 labels"):
        knn.knn_predict(bank, [0, 1], bank, k=1)


def test_what_is_evaluated_depends_on_the_labels(digits_data_dir, tmp_path):
    from keras_metamae import config as config_lib
    from keras_metamae import data
    from keras_metamae.evaluation import online as online_eval
    from preprocessing.spec import load_spec

    version_dir = data.find_dataset_dir(digits_data_dir, "digits")
    spec = load_spec(version_dir)
    logdir = str(tmp_path / "tb")
    config = config_lib.resolve("digits", {})
    callback, off = online_eval.from_config(config, spec, version_dir, logdir)
    assert off is None and callback.every == 300
    assert (callback.bank_splits, callback.query_splits) == (["train"], ["val"])
    assert callback.knn_skipped is None
    assert config_lib.resolve("eurosat", {}).eval_every == 5000

    off_config = config_lib.resolve("digits", {"eval_every": 0})
    assert online_eval.from_config(off_config, spec, version_dir, logdir) == (None, "--eval_every=0")
    short = config_lib.resolve("digits", {"steps": 100})
    assert "--steps=100 < --eval_every=300" in online_eval.from_config(short, spec, version_dir,
                                                                        logdir)[1]
    # Values to regress on have no class to vote for: the probe (ridge) only.
    regression = dataclasses.replace(spec, task="regression", metric="spearman")
    callback, _ = online_eval.from_config(config, regression, version_dir, logdir)
    assert callback.knn_skipped == "regression labels have no class to vote for"
    per_token = dataclasses.replace(spec, task="per_token_multiclass")
    assert "per-token labels" in online_eval.from_config(config, per_token, version_dir, logdir)[1]
    unlabelled = dataclasses.replace(spec, protocol={"probe_val": [], "probe_test": []})
    assert "no labelled probe_val or probe_test" in online_eval.from_config(
        config, unlabelled, version_dir, logdir)[1]
    with pytest.raises(ValueError, match="--eval_every"):
        config_lib.resolve("digits", {"eval_every": -1})


def test_training_logs_online_eval_from_step_0(digits_data_dir, tmp_path):
    from keras_metamae.training.run import run_training

    workdir = str(tmp_path / "run")
    run = dict(TINY_RUN, steps=6, eval_every=3, online_eval_examples=100, export=False)
    summary = run_training("digits", run, digits_data_dir, workdir, verbose=0)
    online = summary["online_eval"]
    assert [record["step"] for record in online["history"]] == [0, 3, 6]
    assert online["first"]["step"] == 0 and online["last"]["step"] == 6
    for record in online["history"]:
        assert 0.0 <= record["knn_accuracy"] <= 1.0 and 0.0 <= record["probe_accuracy"] <= 1.0
    assert 0 < online["seconds"] and 0 < online["fraction_of_training_time"] < 1
    scalars = read_scalars(os.path.join(workdir, "tensorboard"))
    for tag in ("knn_accuracy", "probe_accuracy"):
        logged = scalars[f"online_eval/online_eval/{tag}"]
        assert [step for step, _ in logged] == [0, 3, 6]
        assert [value for _, value in logged] == pytest.approx(
            [record[tag] for record in online["history"]])
    check_projector(os.path.join(workdir, "tensorboard", "online_eval"), queries=100, newest=6)


def check_projector(logdir: str, queries: int, newest: int) -> None:
    """TensorBoard's projector finds the step-0 and newest features of the queries, their
    labels and a sprite of their thumbnails."""
    from google.protobuf import text_format
    from PIL import Image
    from tensorboard.plugins import projector

    with open(os.path.join(logdir, "projector_config.pbtxt")) as f:
        config = text_format.Parse(f.read(), projector.ProjectorConfig())
    assert [e.tensor_name for e in config.embeddings] == [
        "online-eval queries, step 0", f"online-eval queries, step {newest}"]
    first, last = (np.loadtxt(os.path.join(logdir, e.tensor_path)) for e in config.embeddings)
    assert first.shape == last.shape == (queries, TINY_MODEL["embed_dim"])
    assert not np.allclose(first, last)  # trained features, not the random encoder's again
    embedding = config.embeddings[0]
    with open(os.path.join(logdir, embedding.metadata_path)) as f:
        labels = f.read().splitlines()
    assert len(labels) == queries and set(labels) <= {str(d) for d in range(10)}
    assert list(embedding.sprite.single_image_dim) == [32, 32]
    sprite = Image.open(os.path.join(logdir, embedding.sprite.image_path))
    assert sprite.size == (10 * 32, 10 * 32)  # 100 thumbnails, 10 per row


def test_a_resumed_run_does_not_redo_step_0(digits_data_dir, tmp_path):
    """The schedule, driven through the callback hooks at the steps fit would reach them."""
    import keras_metamae as km
    from keras_metamae.evaluation import online as online_eval

    version_dir = km.find_dataset(digits_data_dir, "digits")
    spec = km.load_spec(version_dir)
    model = km.model_from_spec(spec, **TINY_MODEL)
    callback = online_eval.OnlineEvaluation(spec, version_dir, str(tmp_path / "tb"), every=3,
                                            max_examples=40)
    callback.set_model(model)

    def at_step(step, hook, *args):
        model.optimizer.iterations.assign(step)
        getattr(callback, hook)(*args)
        return [record["step"] for record in callback.history]

    assert at_step(5, "on_train_begin") == []  # resumed at step 5
    assert at_step(5, "on_epoch_end", 0) == []
    assert at_step(7, "on_epoch_end", 1) == [7]  # the first chunk end past step 6
    assert at_step(8, "on_epoch_end", 2) == [7]
    assert at_step(9, "on_epoch_end", 3) == [7, 9]
    assert at_step(9, "on_train_end") == [7, 9]  # already evaluated
    assert at_step(10, "on_train_end") == [7, 9, 10]  # the final encoder, off the cadence
    assert set(callback.history[-1]) == {"step", "knn_accuracy", "probe_accuracy", "seconds"}
