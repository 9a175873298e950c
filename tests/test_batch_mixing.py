"""Pretraining batches mix classes like uniform sampling, whatever order the raw data came in.

Many users' arrays are stored sorted by class, and several DABS ids start with the class or the
speaker (EuroSAT `AnnualCrop_1`, LibriSpeech `103-1240-0000`). Shards sorted by id and a reader
that interleaves a few shards through a bounded buffer then give batches of two or three
classes, which skews the contrastive negatives and the projector's BatchNorm.
"""

from __future__ import annotations

import numpy as np
import pytest

from keras_metamae import data
from keras_metamae.data import records
from pipeline import preprocess
from pipeline.transforms import order_key
from preprocessing.spec import load_spec

NUM_CLASSES = 10
PER_CLASS = 600
BATCH = 64
# Smaller than the split, so the buffer alone cannot undo a sorted order.
SHUFFLE_BUFFER = 500


def expected_distinct(num_classes: int, batch: int) -> float:
    """Mean number of distinct classes in a batch drawn uniformly from balanced classes."""
    return num_classes * (1 - (1 - 1 / num_classes) ** batch)


@pytest.fixture(scope="module")
def class_sorted_run(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(NUM_CLASSES), PER_CLASS)  # sorted by class, as users store them
    inputs = (rng.normal(size=(len(labels), 2, 2)) + labels[:, None, None]).astype(np.float32)
    np.save(raw / "inputs.npy", inputs)
    np.save(raw / "labels.npy", labels)
    out = str(tmp_path_factory.mktemp("processed"))
    result = preprocess.run(["--dataset", "custom", "--format", "npy", "--raw_data_dir", str(raw),
                             "--patch_shape", "1", "--name", "sorted", "--data_dir", out,
                             "--num_shards", "4"])
    return result.version_dir


def test_training_batches_mix_classes_like_uniform_sampling(class_sorted_run, monkeypatch):
    monkeypatch.setattr(records, "_MAX_SHUFFLE_BUFFER", SHUFFLE_BUFFER)
    spec = load_spec(class_sorted_run)
    assert spec.splits["train"].num_examples > 4 * SHUFFLE_BUFFER
    ds = data.make_dataset(spec, class_sorted_run, "train", BATCH, seed=3)
    distinct = [len(np.unique(batch["label"].numpy())) for batch in ds.take(60)]
    uniform = expected_distinct(NUM_CLASSES, BATCH)  # 9.99
    assert np.mean(distinct) >= 0.9 * uniform, (np.mean(distinct), uniform)


def test_shard_order_ignores_the_id_order_and_is_reproducible():
    ids = [f"row-{i:09d}" for i in range(1000)]
    ordered = sorted(ids, key=lambda i: order_key(i, 42))
    # The sorted position of an id says nothing about its place in the raw order.
    rank = {example_id: r for r, example_id in enumerate(ordered)}
    correlation = np.corrcoef(np.arange(1000), [rank[i] for i in ids])[0, 1]
    assert abs(correlation) < 0.1
    assert ordered == sorted(ids, key=lambda i: order_key(i, 42))
    assert ordered != sorted(ids, key=lambda i: order_key(i, 7))
