"""The linear-protocol metrics against scikit-learn and SciPy."""

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from keras_metamae.evaluation import knn, metrics


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_accuracy_and_weighted_f1_match_sklearn(rng):
    labels = rng.integers(0, 9, 500)
    predicted = np.where(rng.uniform(size=500) < 0.6, labels, rng.integers(0, 9, 500))
    assert metrics.accuracy(labels, predicted) == pytest.approx(skm.accuracy_score(labels, predicted))
    assert metrics.weighted_f1(labels, predicted) == pytest.approx(
        skm.f1_score(labels, predicted, average="weighted"))


def test_weighted_f1_with_a_class_never_predicted(rng):
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    predicted = np.array([0, 1, 1, 1, 0, 0, 1])
    assert metrics.weighted_f1(labels, predicted) == pytest.approx(
        skm.f1_score(labels, predicted, average="weighted", zero_division=0))


def test_spearman_matches_scipy_with_ties(rng):
    labels = rng.integers(0, 20, 300).astype(float)  # many ties
    predicted = labels + rng.normal(0, 5, 300)
    predicted[:50] = 1.0
    assert metrics.spearman(labels, predicted) == pytest.approx(
        stats.spearmanr(labels, predicted).statistic)


def test_macro_auroc_matches_sklearn(rng):
    labels = (rng.uniform(size=(400, 5)) < 0.3).astype(int)
    scores = labels * 0.5 + rng.normal(0, 1, (400, 5))
    scores[:, 2] = np.round(scores[:, 2])  # ties
    assert metrics.macro_auroc(labels, scores) == pytest.approx(
        skm.roc_auc_score(labels, scores, average="macro"))


def test_compute_dispatches_by_metric_and_task(rng):
    labels = rng.integers(0, 2, 100)
    logits = rng.normal(size=(100, 1)) + labels[:, None]
    expected = skm.accuracy_score(labels, (logits[:, 0] > 0).astype(int))
    assert metrics.compute("accuracy", labels, logits, "binary") == pytest.approx(expected)
    per_token_labels = rng.integers(0, 4, (10, 7))
    per_token_logits = rng.normal(size=(10, 7, 4))
    assert metrics.compute("accuracy", per_token_labels, per_token_logits,
                           "per_token_multiclass") == pytest.approx(
        np.mean(per_token_logits.argmax(-1) == per_token_labels))


def test_knn_accuracy_separable_and_random(rng):
    centers = rng.normal(size=(3, 8)) * 10
    train_y = rng.integers(0, 3, 90)
    test_y = rng.integers(0, 3, 30)
    train_x = centers[train_y] + rng.normal(size=(90, 8))
    test_x = centers[test_y] + rng.normal(size=(30, 8))
    assert knn.knn_accuracy(train_x, train_y, test_x, test_y, k=5) == 1.0
    shuffled = knn.knn_accuracy(train_x, rng.permutation(train_y), test_x, test_y, k=5)
    assert shuffled < 0.8
