"""Reconstruction and NT-Xent losses against hand-computed numpy values."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_metamae.models import losses  # noqa: E402


def _numpy_nt_xent(z, z_star, tau):
    """Eq. 3-4 written out with loops: each of the 2B representations is a query against the
    other 2B - 1, the positive being the other view of the same example."""
    reps = np.concatenate([z, z_star], axis=0)
    reps = reps / np.linalg.norm(reps, axis=1, keepdims=True)
    n = len(z)
    total, correct = 0.0, 0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        sims = {j: reps[i] @ reps[j] / tau for j in range(2 * n) if j != i}
        denominator = sum(np.exp(s) for s in sims.values())
        total += -np.log(np.exp(sims[positive]) / denominator)
        correct += int(max(sims, key=sims.get) == positive)
    return total / (2 * n), correct / (2 * n)


def test_nt_xent_matches_hand_computed_value():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 7))
    z_star = z + 0.8 * rng.normal(size=(5, 7))
    loss, accuracy = losses.nt_xent(tf.constant(z), tf.constant(z_star), temperature=0.5)
    expected_loss, expected_accuracy = _numpy_nt_xent(z, z_star, 0.5)
    np.testing.assert_allclose(loss.numpy(), expected_loss, rtol=1e-10)
    np.testing.assert_allclose(accuracy.numpy(), expected_accuracy)
    assert 0.0 < expected_accuracy < 1.0  # the example distinguishes right from wrong


def test_nt_xent_is_symmetric_and_scale_invariant():
    rng = np.random.default_rng(1)
    z = tf.constant(rng.normal(size=(4, 3)))
    z_star = tf.constant(rng.normal(size=(4, 3)))
    a, _ = losses.nt_xent(z, z_star)
    b, _ = losses.nt_xent(z_star, 3.0 * z)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10)


def test_nt_xent_gradient_is_finite_with_identical_views():
    z = tf.constant(np.random.default_rng(2).normal(size=(3, 4)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(z)
        loss, accuracy = losses.nt_xent(z, z)
    grad = tape.gradient(loss, z)
    assert np.all(np.isfinite(grad.numpy()))
    assert accuracy.numpy() == 1.0


def test_contrastive_accuracy():
    logits = tf.constant([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0], [0.0, 0.0, 5.0]])
    np.testing.assert_allclose(losses.contrastive_accuracy(logits, [1, 2, 2]).numpy(), 2 / 3)


def test_mse_reconstruction_matches_numpy():
    rng = np.random.default_rng(3)
    targets = rng.normal(size=(2, 4, 3))
    predictions = rng.normal(size=(2, 4, 3))
    mask = np.array([[1, 0, 1, 0], [0, 0, 0, 1]], np.float64)
    per_token = ((predictions - targets) ** 2).mean(axis=-1)
    expected = (per_token * mask).sum() / mask.sum()
    got = losses.reconstruction_loss(tf.constant(targets), tf.constant(predictions), mask)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    per_example = losses.per_example_reconstruction_loss(
        tf.constant(targets), tf.constant(predictions), mask
    )
    np.testing.assert_allclose(
        per_example.numpy(), (per_token * mask).sum(1) / mask.sum(1), rtol=1e-12
    )


def test_cross_entropy_reconstruction_matches_numpy():
    rng = np.random.default_rng(4)
    targets = rng.integers(0, 5, size=(2, 3))
    logits = rng.normal(size=(2, 3, 5))
    mask = np.array([[1, 1, 0], [0, 1, 0]], np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    per_token = -np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    got = losses.reconstruction_loss(targets, tf.constant(logits), mask, discrete=True)
    np.testing.assert_allclose(got.numpy(), (per_token * mask).sum() / mask.sum(), rtol=1e-12)


def test_reconstruction_loss_ignores_tokens_outside_the_target_set():
    rng = np.random.default_rng(5)
    targets = rng.normal(size=(3, 6, 2))
    predictions = rng.normal(size=(3, 6, 2))
    mask = (rng.uniform(size=(3, 6)) < 0.5).astype(np.float64)
    mask[:, 0] = 1.0
    mask[:, 1] = 0.0
    base = losses.reconstruction_loss(targets, tf.constant(predictions), mask).numpy()
    per_example = losses.per_example_reconstruction_loss(targets, tf.constant(predictions), mask)

    changed = predictions.copy()
    changed[mask == 0] += 10.0 * rng.normal(size=changed[mask == 0].shape)
    np.testing.assert_allclose(
        losses.reconstruction_loss(targets, tf.constant(changed), mask).numpy(), base
    )
    np.testing.assert_allclose(
        losses.per_example_reconstruction_loss(targets, tf.constant(changed), mask).numpy(),
        per_example.numpy(),
    )
    changed[mask == 1] += 1.0
    assert losses.reconstruction_loss(targets, tf.constant(changed), mask).numpy() > base + 0.5

    # Same for discrete tokens.
    ids = rng.integers(0, 4, size=(3, 6))
    logits = rng.normal(size=(3, 6, 4))
    base = losses.reconstruction_loss(ids, tf.constant(logits), mask, discrete=True).numpy()
    changed = logits.copy()
    changed[mask == 0] = 100.0 * rng.normal(size=changed[mask == 0].shape)
    np.testing.assert_allclose(
        losses.reconstruction_loss(ids, tf.constant(changed), mask, discrete=True).numpy(), base
    )


def test_per_example_loss_of_an_example_without_targets_is_zero():
    targets = np.ones((2, 3, 1))
    predictions = np.zeros((2, 3, 1))
    mask = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    got = losses.per_example_reconstruction_loss(targets, tf.constant(predictions), mask)
    np.testing.assert_allclose(got.numpy(), [1.0, 0.0])
