"""Evaluation metrics of the DABS linear protocol: accuracy (multiclass, binary, per-token),
weighted F1 (WaferMap), Spearman correlation (Stability, Fluorescence), macro AUROC
(multilabel), from scikit-learn and SciPy; plus a cosine kNN accuracy.
"""

from __future__ import annotations

import numpy as np


def accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    labels, predicted = np.asarray(labels).ravel(), np.asarray(predicted).ravel()
    if labels.size == 0:
        raise ValueError("accuracy of an empty set")
    return float(np.mean(labels == predicted))


def weighted_f1(labels: np.ndarray, predicted: np.ndarray) -> float:
    """F1 per class present in `labels`, averaged with weights = class support (a class that is
    never predicted scores 0)."""
    from sklearn.metrics import f1_score

    labels, predicted = np.asarray(labels).ravel(), np.asarray(predicted).ravel()
    return float(f1_score(labels, predicted, labels=np.unique(labels), average="weighted",
                          zero_division=0))


def spearman(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Spearman's rho with ties at their mean rank; 0 when either side is constant."""
    from scipy.stats import spearmanr

    labels = np.asarray(labels, np.float64).ravel()
    predicted = np.asarray(predicted, np.float64).ravel()
    if np.ptp(labels) == 0 or np.ptp(predicted) == 0:
        return 0.0
    return float(spearmanr(labels, predicted).statistic)


def binary_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties count 1/2)."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels).ravel().astype(bool)
    if labels.all() or not labels.any():
        raise ValueError("AUROC needs both positive and negative examples")
    return float(roc_auc_score(labels, np.asarray(scores, np.float64).ravel()))


def macro_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean AUROC over the label columns that have both classes in `labels`."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    values = [binary_auroc(labels[:, j], scores[:, j]) for j in range(labels.shape[1])
              if 0 < labels[:, j].sum() < len(labels)]
    if not values:
        raise ValueError("no label column has both positive and negative examples")
    return float(np.mean(values))


def compute(metric: str, labels: np.ndarray, outputs: np.ndarray, task: str) -> float:
    """The spec's metric from linear-head outputs (logits, or values for regression)."""
    outputs = np.asarray(outputs)
    if metric == "spearman":
        return spearman(labels, outputs.reshape(len(outputs), -1)[:, 0])
    if metric == "auroc":
        return macro_auroc(labels, outputs)
    if task == "binary" and outputs.shape[-1] == 1:
        predicted = (outputs[..., 0] > 0).astype(np.int64)
    else:
        predicted = np.argmax(outputs, axis=-1)
    if metric == "weighted_f1":
        return weighted_f1(labels, predicted)
    if metric == "accuracy":
        return accuracy(labels, predicted)
    raise ValueError(f"unknown metric {metric!r}")
