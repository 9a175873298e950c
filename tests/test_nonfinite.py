"""Non-finite steps are skipped (weights and optimizer untouched), counted, and stop training."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_metamae.methods.metamae import MetaMAE
from keras_metamae.methods.nonfinite import NonFiniteGuard
from keras_metamae.training.callbacks import StopOnNonFinite
from tests.conftest import TINY_MODEL

MODEL = {k: v for k, v in TINY_MODEL.items()}


def tiny_model():
    keras.utils.set_random_seed(0)
    model = MetaMAE(num_tokens=16, token_grid=[4, 4], token_dim=4, mask_ratio=0.5, seed=0,
                    **MODEL)
    model.compile(optimizer=NonFiniteGuard(keras.optimizers.AdamW(1e-3)))
    return model


def batches(nan_at: set[int], count: int):
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        tokens = rng.normal(size=(8, 16, 4)).astype("float32")
        if i in nan_at:
            tokens[3, 2, 1] = np.nan
        out.append({"tokens": tokens})
    return out


def weights(model):
    return [v.numpy().copy() for v in model.trainable_variables]


def test_a_nan_batch_is_skipped_and_counted():
    model = tiny_model()
    data = batches({1}, 3)
    model.fit(tf.data.Dataset.from_tensors(data[0]), epochs=1, verbose=0)
    before = weights(model)
    slots = [v.numpy().copy() for v in model.optimizer.inner_optimizer.variables]
    model.fit(tf.data.Dataset.from_tensors(data[1]), epochs=1, verbose=0)
    for a, b in zip(before, weights(model)):
        np.testing.assert_array_equal(a, b)
    for a, v in zip(slots, model.optimizer.inner_optimizer.variables):
        np.testing.assert_array_equal(a, v.numpy())
    assert int(model.optimizer.iterations) == 1
    assert int(model.optimizer.skipped_steps) == 1
    model.fit(tf.data.Dataset.from_tensors(data[2]), epochs=1, verbose=0)
    assert int(model.optimizer.iterations) == 2
    assert int(model.optimizer.consecutive_skipped_steps) == 0
    assert all(np.all(np.isfinite(w)) for w in weights(model))


def test_consecutive_bad_steps_stop_training():
    model = tiny_model()
    data = batches(set(range(2, 40)), 40)
    stopper = StopOnNonFinite(max_bad_steps=3)
    ds = tf.data.Dataset.from_tensor_slices(
        {"tokens": np.stack([b["tokens"] for b in data])})
    model.fit(ds, epochs=1, verbose=0, callbacks=[stopper])
    assert stopper.stopped_at == 2
    assert int(model.optimizer.skipped_steps) == 3


def test_training_stops_with_a_clear_message(digits_data_dir, tmp_path, monkeypatch):
    from keras_metamae.methods import metamae
    from keras_metamae.training.run import NonFiniteTraining, run_training

    original = metamae.MetaMAE.compute_losses

    def poisoned(self, tokens, *args, **kwargs):
        losses = original(self, tokens, *args, **kwargs)
        losses["loss"] = losses["loss"] * np.float32("nan")
        return losses

    monkeypatch.setattr(metamae.MetaMAE, "compute_losses", poisoned)
    with pytest.raises(NonFiniteTraining, match="4 consecutive steps"):
        run_training("digits", dict(TINY_MODEL, steps=20, batch_size=16, log_every=5,
                                    checkpoint_every=5, max_bad_steps=4, export=False),
                     digits_data_dir, str(tmp_path / "w"), verbose=0)
