"""The DABS baselines DABS-2.0 MAE and Capri: their losses restated in NumPy, exact float64
gradients (finite differences), training steps, mixed-token sequences and the config."""

import dataclasses
import os
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_metamae import methods  # noqa: E402
from keras_metamae.config import TrainConfig  # noqa: E402
from keras_metamae.methods.capri import Capri  # noqa: E402
from keras_metamae.methods.dabs_mae import DABSMAE  # noqa: E402
from keras_metamae.models.masking import num_masked  # noqa: E402
from keras_metamae.models.masking import top_k_mask  # noqa: E402
from tests.gradient_checks import assert_matches_finite_differences  # noqa: E402

T = 6
VOCAB = 5
TINY = dict(embed_dim=8, encoder_depth=1, encoder_heads=2, encoder_mlp_dim=16, seed=0)
# ceil(0.5 * 6) = 3 and ceil(0.3 * 6) = 2 masked tokens per example.
OWN = {"dabs-mae": dict(mask_ratio=0.5), "capri": dict(corruption_rate=0.3)}
SEGMENTS = [
    {"name": "image", "kind": "continuous", "num_tokens": 4, "token_dim": 3, "token_grid": [2, 2]},
    {"name": "text", "kind": "discrete", "num_tokens": 3, "vocab_size": VOCAB, "token_grid": [3]},
]


def _model(method, kind="continuous", dtype=None, **overrides):
    keras.utils.set_random_seed(0)
    kwargs = dict(TINY, **OWN[method])
    if kind == "mixed":
        kwargs.update(num_tokens=7, token_grid=[7], token_dim=3, segments=SEGMENTS)
    elif kind == "discrete":
        kwargs.update(num_tokens=T, token_grid=[T], vocab_size=VOCAB)
    else:
        kwargs.update(num_tokens=T, token_grid=[2, 3], token_dim=3)
    kwargs.update(overrides)
    if dtype:
        kwargs["dtype"] = dtype
    model = methods.get(method).from_settings(**kwargs)
    model.build()
    return model


def _pack(image, text):
    pad = np.zeros(text.shape + (image.shape[-1],))
    pad[..., 0] = text
    return np.concatenate([image, pad], axis=1)


def _batch(kind="continuous", batch_size=3, dtype="float64", seed=0):
    rng = np.random.default_rng(seed)
    if kind == "mixed":
        tokens = _pack(rng.normal(size=(batch_size, 4, 3)),
                       rng.integers(0, VOCAB, size=(batch_size, 3))).astype(dtype)
    elif kind == "discrete":
        tokens = rng.integers(0, VOCAB, size=(batch_size, T))
    else:
        tokens = rng.normal(size=(batch_size, T, 3)).astype(dtype)
    noise = rng.uniform(size=(batch_size, tokens.shape[1])).astype(dtype)
    return {"tokens": tokens, "mask_noise": noise}


# === NumPy restatements ===
def _np_mask(noise, ratio):
    """1.0 on the ceil(T * ratio) largest-noise tokens of each example."""
    k = int(np.ceil(noise.shape[1] * ratio))
    mask = np.zeros_like(noise)
    np.put_along_axis(mask, np.argsort(-noise, axis=1)[:, :k], 1.0, axis=1)
    assert (mask.sum(1) == k).all()
    return mask


def _np_cross_entropy(logits, labels):
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]


def _np_encoder_outputs(model, tokens, mask):
    """The non-CLS outputs of the model's encoder on its token embeddings, masked ones zeroed
    in NumPy, and those (unmasked) embeddings."""
    embeddings = model.encoder.embed_tokens(tf.constant(tokens)).numpy()
    zeroed = embeddings * (1.0 - mask[..., None])
    latent = model.encoder.encode_embeddings(tf.constant(zeroed), training=False).numpy()
    return latent[:, 1:], embeddings


def _np_l2(targets, out, head):
    kernel, bias = head.kernel.numpy(), head.bias.numpy()
    predictions = np.maximum(out, 0.0) @ kernel + bias
    return np.linalg.norm(targets - predictions, axis=-1)


def test_top_k_mask_masks_ceil_ratio_tokens():
    rng = np.random.default_rng(3)
    noise = rng.uniform(size=(5, 20))
    for ratio in (0.15, 0.5, 0.85):
        mask = top_k_mask(tf.constant(noise), ratio).numpy()
        np.testing.assert_array_equal(mask, _np_mask(noise, ratio))
        assert mask.dtype == np.float32
    assert [num_masked(20, 0.15), num_masked(50, 0.14), num_masked(6, 0.85), num_masked(6, 0.01)] \
        == [3, 8, 6, 1]


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
def test_dabs_mae_loss_matches_numpy(kind):
    model = _model("dabs-mae", kind, dtype="float64")
    batch = _batch(kind)
    losses = model.compute_losses(tf.constant(batch["tokens"]), tf.constant(batch["mask_noise"]))
    assert set(losses) == set(DABSMAE.metric_names)
    assert losses["loss"].dtype == tf.float64

    mask = _np_mask(batch["mask_noise"], 0.5)
    assert (mask.sum(1) == 3).all()
    out, _ = _np_encoder_outputs(model, batch["tokens"], mask)
    if kind == "continuous":
        error = _np_l2(batch["tokens"], out, model.heads[0])
    else:
        matrix = model.encoder.token_embedding.embeddings.numpy()
        error = _np_cross_entropy(out @ matrix.T, batch["tokens"])
    expected = error[mask > 0].mean()
    np.testing.assert_allclose(losses["loss"].numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(losses["reconstruction_loss"].numpy(), expected, rtol=1e-10)


def test_dabs_mae_mixed_loss_is_the_mean_of_the_segment_losses():
    model = _model("dabs-mae", "mixed", dtype="float64")
    assert [h.name for h in model.heads] == ["head_image"]  # the text head is tied
    batch = _batch("mixed", batch_size=4)
    loss = model.compute_losses(tf.constant(batch["tokens"]), tf.constant(batch["mask_noise"]))
    mask = _np_mask(batch["mask_noise"], 0.5)
    assert mask[:, :4].sum() > 0 and mask[:, 4:].sum() > 0
    out, _ = _np_encoder_outputs(model, batch["tokens"], mask)
    image = _np_l2(batch["tokens"][:, :4], out[:, :4], model.heads[0])
    matrix = model.encoder.segment_embeddings[1].embeddings.numpy()
    text = _np_cross_entropy(out[:, 4:] @ matrix.T, batch["tokens"][:, 4:, 0].astype(int))
    image_loss, text_loss = image[mask[:, :4] > 0].mean(), text[mask[:, 4:] > 0].mean()
    np.testing.assert_allclose(loss["loss"].numpy(), (image_loss + text_loss) / 2, rtol=1e-10)


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
def test_capri_loss_matches_numpy(kind):
    model = _model("capri", kind, dtype="float64")
    batch = _batch(kind)
    losses = model.compute_losses(tf.constant(batch["tokens"]), tf.constant(batch["mask_noise"]))
    assert set(losses) == set(Capri.metric_names)

    mask = _np_mask(batch["mask_noise"], 0.3)
    assert (mask.sum(1) == 2).all()
    out, embeddings = _np_encoder_outputs(model, batch["tokens"], mask)
    predictions = out @ model.predictor.kernel.numpy() + model.predictor.bias.numpy()
    logits = np.einsum("bid,bjd->bij", predictions, embeddings) / 0.07
    labels = np.broadcast_to(np.arange(T), (3, T))
    np.testing.assert_allclose(losses["loss"].numpy(),
                               _np_cross_entropy(logits, labels).mean(), rtol=1e-10)
    np.testing.assert_allclose(losses["prediction_accuracy"].numpy(),
                               (logits.argmax(-1) == labels).mean(), rtol=1e-6)


def test_capri_loss_is_finite_for_large_logits():
    model = _model("capri")
    batch = _batch(dtype="float32")
    losses = model.compute_losses(tf.constant(batch["tokens"] * 1e3), batch["mask_noise"])
    assert np.isfinite(losses["loss"].numpy())


# === exact gradients ===
def _checked_variables(model, method, kind):
    encoder = model.encoder
    block = encoder.blocks[0]
    if kind == "mixed":
        first = [encoder.segment_embeddings[0].embedding.kernel,
                 encoder.segment_embeddings[1].embedding.embeddings]
    elif kind == "discrete":
        first = [encoder.token_embedding.embeddings]
    else:
        first = [encoder.token_embedding.embedding.kernel]
    if method == "capri":
        head = model.predictor.kernel
    elif model.heads:
        head = model.heads[0].kernel
    else:
        head = encoder.norm.gamma  # discrete DABS-MAE: the head is the embedding itself
    return first + [block.norm1.gamma, block.attention.qkv.kernel, head]


@pytest.mark.parametrize("method,kind", [("dabs-mae", "continuous"), ("dabs-mae", "discrete"),
                                         ("dabs-mae", "mixed"), ("capri", "continuous"),
                                         ("capri", "discrete")])
def test_full_loss_gradient_matches_float64_finite_differences(method, kind):
    model = _model(method, kind, dtype="float64", dropout=0.0)
    batch = _batch(kind)
    inputs = [tf.constant(batch["tokens"]), tf.constant(batch["mask_noise"])]
    variables = _checked_variables(model, method, kind)
    with tf.GradientTape() as tape:
        loss = model.compute_losses(*inputs, training=True)["loss"]
    grads = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, variables)]
    assert loss.dtype == tf.float64
    assert all(np.abs(g).max() > 0 for g in grads)
    assert_matches_finite_differences(model, inputs, variables, grads)


# === training ===
@pytest.mark.parametrize("method,kind", [("dabs-mae", "continuous"), ("dabs-mae", "mixed"),
                                         ("capri", "continuous"), ("capri", "discrete")])
def test_train_steps_lower_the_loss_and_log_the_metric_names(method, kind):
    model = _model(method, kind)
    model.compile(optimizer=keras.optimizers.AdamW(3e-3), jit_compile=False)
    batch = _batch(kind, batch_size=4, dtype="float32")
    history = [model.train_on_batch(batch, return_dict=True) for _ in range(12)]
    assert all(set(logs) == set(model.metric_names) for logs in history)
    losses = [logs["loss"] for logs in history]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    assert model(batch["tokens"]).shape == (4, 8)


# === config, reconstruction, settings ===
@pytest.mark.parametrize("method,kind", [("dabs-mae", "continuous"), ("dabs-mae", "mixed"),
                                         ("capri", "discrete")])
def test_config_round_trip(method, kind):
    model = _model(method, kind)
    config = model.get_config()
    assert config == type(model).from_config(config).get_config()
    assert config[next(iter(OWN[method]))] == next(iter(OWN[method].values()))


def test_dabs_mae_reconstruct_shapes():
    model = _model("dabs-mae")
    batch = _batch(batch_size=2, dtype="float32")
    out = model.reconstruct(batch["tokens"], mask_noise=batch["mask_noise"])
    assert out["predictions"].shape == (2, T, 3)
    assert out["mask"].dtype == tf.float32 and out["mask"].shape == (2, T)
    np.testing.assert_array_equal(out["mask"].numpy(), _np_mask(batch["mask_noise"], 0.5))
    assert model.reconstruct(batch["tokens"])["mask"].numpy().sum(1).tolist() == [3, 3]


def test_from_spec_ignores_the_settings_a_method_does_not_take():
    spec = types.SimpleNamespace(num_tokens=T, token_grid=[2, 3], token_dim=3, vocab_size=0,
                                 segments=None)
    settings = dataclasses.asdict(TrainConfig())
    settings.update(TINY, corruption_rate=0.4, mask_ratio=0.6)
    capri = methods.from_spec("capri", spec, **settings)
    assert isinstance(capri, Capri) and capri.corruption_rate == 0.4
    assert not hasattr(capri, "mask_ratio")
    mae = methods.from_spec("dabs-mae", spec, **settings)
    assert isinstance(mae, DABSMAE) and mae.mask_ratio == 0.6
    assert mae.token_grid == [2, 3] and mae.embed_dim == 8
