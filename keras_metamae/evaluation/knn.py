"""Cosine k-nearest-neighbour classification of frozen features: the one kNN of the project
(the evaluation's `knn_accuracy` on the test split and the online evaluation's)."""

import numpy as np

# DINO and the kNN monitors of SSL libraries use 20 neighbours.
KNN_NEIGHBOURS = 20
# Queries scored against the bank at once: bounds the [queries, bank] similarity matrix.
_QUERY_CHUNK = 1024


def _unit_rows(x) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_predict(bank, bank_labels, queries, k: int = KNN_NEIGHBOURS) -> np.ndarray:
    """Predicted class of each query: majority vote of its `k` most cosine-similar bank rows.

    Neighbours are ordered by similarity, equal similarities by bank position (a stable
    sort, so the result does not depend on the sort's whims). A vote tie goes to the tied
    class of the nearest neighbour. Raises ValueError when the bank holds fewer than `k` rows.
    """
    bank, queries = _unit_rows(bank), _unit_rows(queries)
    bank_labels = np.asarray(bank_labels).ravel()
    if len(bank_labels) != len(bank):
        raise ValueError(f"knn: {len(bank)} bank rows but {len(bank_labels)} labels")
    if not 1 <= k <= len(bank):
        raise ValueError(f"knn: k={k} neighbours but the bank holds {len(bank)} examples")
    classes, bank_class = np.unique(bank_labels, return_inverse=True)
    predicted = []
    for start in range(0, len(queries), _QUERY_CHUNK):
        similarity = queries[start : start + _QUERY_CHUNK] @ bank.T
        nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
        votes = bank_class[nearest]  # [queries, k] class indices, nearest first
        rows = np.arange(len(votes))[:, None]
        counts = np.zeros((len(votes), len(classes)), np.int64)
        np.add.at(counts, (rows, votes), 1)
        tied = counts == counts.max(axis=1, keepdims=True)
        first_tied = np.argmax(tied[rows, votes], axis=1)  # nearest neighbour of a tied class
        predicted.append(classes[votes[rows[:, 0], first_tied]])
    if not predicted:
        return np.zeros((0,), bank_labels.dtype)
    return np.concatenate(predicted)


def knn_accuracy(bank, bank_labels, queries, query_labels, k: int = KNN_NEIGHBOURS) -> float:
    """Share of queries whose `knn_predict` class is their label."""
    query_labels = np.asarray(query_labels).ravel()
    if len(query_labels) == 0:
        raise ValueError("knn: no queries")
    return float(np.mean(knn_predict(bank, bank_labels, queries, k) == query_labels))
