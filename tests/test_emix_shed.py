"""The DABS baselines e-Mix and ShED: losses restated in NumPy, exact gradients (float64 finite
differences), training steps, and the config round trip."""

import dataclasses
import math
import os
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_metamae import methods  # noqa: E402
from keras_metamae.config import TrainConfig  # noqa: E402
from keras_metamae.methods.emix import EMix  # noqa: E402
from keras_metamae.methods.shed import ShED  # noqa: E402
from tests.gradient_checks import assert_matches_finite_differences  # noqa: E402

TINY = dict(embed_dim=8, encoder_depth=1, encoder_heads=2, encoder_mlp_dim=16)
NUM_TOKENS = 6


def _model(method, discrete=False, **overrides):
    kwargs = dict(TINY, num_tokens=NUM_TOKENS, token_grid=[NUM_TOKENS], seed=0)
    kwargs.update(vocab_size=7) if discrete else kwargs.update(token_dim=3)
    if method == "emix":
        kwargs.update(head_dim=8)
    else:
        kwargs.update(corruption_rate=0.5)
    kwargs.update(overrides)
    model = methods.get(method).from_settings(**kwargs)
    model.build()
    return model


def _float64_model(method):
    keras.utils.set_random_seed(0)
    return _model(method, dtype="float64")


def _float64_inputs(batch_size=4, seed=0):
    rng = np.random.default_rng(seed)
    tokens = tf.constant(rng.normal(size=(batch_size, NUM_TOKENS, 3)))
    noise = tf.constant(rng.uniform(size=(batch_size, NUM_TOKENS)))
    return tokens, noise


# === NumPy restatements ===
def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _layer_norm(x, gamma, beta, epsilon):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + epsilon) * gamma + beta


def test_emix_loss_matches_numpy():
    model = _float64_model("emix")
    tokens, noise = _float64_inputs()
    losses = model.compute_losses(tokens, noise, training=False)
    assert set(losses) == set(EMix.metric_names)
    assert losses["loss"].dtype == tf.float64

    n = noise.numpy()
    lam = np.maximum(n[:, 0], 1.0 - n[:, 0])
    perm = np.argsort(n[:, 1])
    assert lam.min() >= 0.5 and (perm != np.arange(len(perm))).any()
    e = model.encoder.embed_tokens(tokens).numpy()  # [B, T, D], no positions
    mixed = lam[:, None, None] * e + (1.0 - lam[:, None, None]) * e[perm]

    def view(embeddings):
        latent = model.encoder.encode_embeddings(tf.constant(embeddings)).numpy()
        pooled = latent[:, 1:].mean(axis=1)
        h = _layer_norm(pooled, model.head_norm.gamma.numpy(), model.head_norm.beta.numpy(),
                        model.head_norm.epsilon)
        out = h @ model.head.kernel.numpy() + model.head.bias.numpy()
        return out / np.linalg.norm(out, axis=-1, keepdims=True)

    logits = view(mixed) @ view(e).T / 0.2
    log_p = _log_softmax(logits)
    rows = np.arange(len(lam))
    expected = np.mean(-lam * log_p[rows, rows] - (1.0 - lam) * log_p[rows, perm])
    np.testing.assert_allclose(losses["loss"].numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(losses["contrastive_accuracy"].numpy(),
                               np.mean(logits.argmax(axis=1) == rows))
    # The model's own mixing is the one restated above.
    coefficient, permutation = model.mixing(noise)
    np.testing.assert_array_equal(permutation.numpy(), perm)
    np.testing.assert_allclose(
        model.mix_embeddings(tf.constant(e), coefficient, permutation).numpy(), mixed)


def test_shed_loss_matches_numpy_and_moves_exactly_k_tokens():
    model = _float64_model("shed")
    tokens, noise = _float64_inputs()
    losses = model.compute_losses(tokens, noise, training=False)
    assert set(losses) == set(ShED.metric_names)
    assert losses["loss"].dtype == tf.float64

    k = math.ceil(0.5 * NUM_TOKENS)
    assert model.num_shuffled == k == 3
    n = noise.numpy()
    batch = len(n)
    chosen = np.argsort(-n, axis=1)[:, :k]  # top-k, decreasing noise
    source = np.tile(np.arange(NUM_TOKENS), (batch, 1))
    for b in range(batch):
        for j in range(k):
            source[b, chosen[b, j]] = chosen[b, j - 1]  # c_j receives c_{j-1}
    labels = np.zeros((batch, NUM_TOKENS), "int64")
    np.put_along_axis(labels, chosen, 1, axis=1)

    e = model.encoder.embed_tokens(tokens).numpy()
    shuffled = np.take_along_axis(e, source[:, :, None], axis=1)
    # Exactly k tokens per example moved, each to a different position, and labelled.
    moved = np.abs(shuffled - e).max(axis=-1) > 0
    np.testing.assert_array_equal(moved.sum(axis=1), k)
    np.testing.assert_array_equal(moved, labels == 1)
    for b in range(batch):
        assert sorted(source[b]) == list(range(NUM_TOKENS))
        assert (source[b][moved[b]] != np.arange(NUM_TOKENS)[moved[b]]).all()
    model_source, model_replaced = model.shuffle_indices(noise)
    np.testing.assert_array_equal(model_source.numpy(), source)
    np.testing.assert_array_equal(model_replaced.numpy(), labels)

    latent = model.encoder.encode_embeddings(tf.constant(shuffled)).numpy()
    logits = latent[:, 1:] @ model.head.kernel.numpy() + model.head.bias.numpy()
    log_p = _log_softmax(logits)
    expected = -np.take_along_axis(log_p, labels[..., None], axis=-1).mean()
    np.testing.assert_allclose(losses["loss"].numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(losses["detection_accuracy"].numpy(),
                               np.mean(logits.argmax(axis=-1) == labels))


# === exact gradients ===
def _checked_variables(model):
    block = model.encoder.blocks[0]
    return [
        model.encoder.token_embedding.embedding.kernel,
        block.norm1.gamma,
        block.attention.qkv.kernel,
        model.head.kernel,
    ]


def _analytic_gradients(model, inputs):
    with tf.GradientTape() as tape:
        loss = model.compute_losses(*inputs, training=True)["loss"]
    return loss, tape.gradient(loss, _checked_variables(model))


def test_emix_gradient_matches_float64_finite_differences(monkeypatch):
    """stop_gradient(E[pi]) is a constant for the gradient: the finite differences hold the
    partner embeddings at their value for the unperturbed weights."""
    model = _float64_model("emix")
    inputs = _float64_inputs()
    loss, grads = _analytic_gradients(model, inputs)
    assert loss.dtype == tf.float64

    # Without the stop-gradient the embedding gradient differs (the partner term is there).
    frozen = tf.constant(model.encoder.embed_tokens(inputs[0]))
    monkeypatch.setattr(model, "partner_embeddings", lambda e, perm: tf.gather(e, perm))
    _, through = _analytic_gradients(model, inputs)
    relative = np.linalg.norm((through[0] - grads[0]).numpy()) / np.linalg.norm(grads[0].numpy())
    assert relative > 1e-3
    np.testing.assert_allclose(through[1].numpy(), grads[1].numpy())  # same graph above E

    monkeypatch.setattr(model, "partner_embeddings", lambda e, perm: tf.gather(frozen, perm))
    assert_matches_finite_differences(model, inputs, _checked_variables(model), grads)


def test_shed_gradient_matches_float64_finite_differences():
    model = _float64_model("shed")
    inputs = _float64_inputs()
    loss, grads = _analytic_gradients(model, inputs)
    assert loss.dtype == tf.float64
    assert all(float(tf.norm(g)) > 0 for g in grads)
    assert_matches_finite_differences(model, inputs, _checked_variables(model), grads)


# === training ===
def _batch(method, discrete, batch_size=8, seed=0):
    rng = np.random.default_rng(seed)
    if discrete:
        tokens = rng.integers(0, 7, size=(batch_size, NUM_TOKENS))
    else:
        tokens = rng.normal(size=(batch_size, NUM_TOKENS, 3)).astype("float32")
    key = methods.get(method).noise_keys[0]
    return {
        "tokens": tokens,
        "label": np.zeros(batch_size, "int64"),
        key: rng.uniform(size=(batch_size, NUM_TOKENS)).astype("float32"),
    }


@pytest.mark.parametrize("discrete", [False, True])
@pytest.mark.parametrize("method", ["emix", "shed"])
def test_train_steps_lower_the_loss(method, discrete):
    keras.utils.set_random_seed(0)
    model = _model(method, discrete)
    model.compile(optimizer=keras.optimizers.AdamW(3e-3))
    batch = _batch(method, discrete)
    logs = [model.train_on_batch(batch, return_dict=True) for _ in range(8)]
    assert set(logs[0]) == set(model.metric_names)
    losses = [log["loss"] for log in logs]
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    assert model(batch["tokens"]).shape == (8, 8)


@pytest.mark.parametrize("method", ["emix", "shed"])
def test_mixed_bfloat16_losses_are_float32(method):
    model = _model(method, dtype="mixed_bfloat16")
    batch = _batch(method, False, batch_size=4)
    losses = model.compute_losses(tf.constant(batch["tokens"]),
                                  tf.constant(batch[model.noise_keys[0]]))
    assert all(v.dtype == tf.float32 for v in losses.values())
    assert all(np.isfinite(v.numpy()) for v in losses.values())


# === config ===
@pytest.mark.parametrize("method", ["emix", "shed"])
def test_config_round_trip_and_from_spec(method):
    model = _model(method, head_dim=4) if method == "emix" else _model(method)
    config = model.get_config()
    if method == "emix":
        assert config["head_dim"] == 4
    else:
        assert config["corruption_rate"] == 0.5
    clone = type(model).from_config(config)
    assert clone.get_config() == config

    spec = types.SimpleNamespace(num_tokens=NUM_TOKENS, token_grid=[2, 3], token_dim=0,
                                 vocab_size=7, segments=None)
    settings = dataclasses.asdict(TrainConfig())
    settings.update(TINY, corruption_rate=0.3)
    built = methods.from_spec(method, spec, **settings)
    assert type(built) is methods.get(method)
    assert built.method_name == method
    assert built.token_grid == [2, 3] and built.vocab_size == 7 and built.embed_dim == 8
    if method == "shed":
        assert built.corruption_rate == 0.3 and built.num_shuffled == 2
    else:
        assert built.head_dim == 128
    assert not hasattr(built, "decoder") and not hasattr(built, "reconstruct")
