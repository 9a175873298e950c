"""MetaMAE end to end: exact second-order gradients (float64 finite differences), training,
ablations, mixed precision, saving, and replica invariance under MirroredStrategy."""

import json
import os
import subprocess
import sys
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_metamae import methods  # noqa: E402
from keras_metamae.models import masking  # noqa: E402
from keras_metamae.methods.metamae import MetaMAE  # noqa: E402
from tests.gradient_checks import (assert_directional_derivatives_match,  # noqa: E402
                                   assert_matches_finite_differences, training_step_gradients)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = dict(
    embed_dim=16,
    encoder_depth=1,
    encoder_heads=2,
    encoder_mlp_dim=32,
    decoder_dim=8,
    decoder_depth=1,
    decoder_heads=2,
    decoder_mlp_dim=16,
    projector_hidden_dim=32,
    projector_dim=8,
    mask_ratio=0.5,
    nearby_ratio=0.5,
    contrast_weight=0.5,
)


def _model(discrete=False, method="metamae", **overrides):
    kwargs = dict(TINY, num_tokens=8, token_grid=[2, 4], seed=0)
    kwargs.update(vocab_size=6) if discrete else kwargs.update(token_dim=3)
    kwargs.update(overrides)
    return methods.get(method).from_settings(**kwargs)


def _batch(discrete=False, batch_size=4, num_tokens=8, seed=0):
    rng = np.random.default_rng(seed)
    if discrete:
        tokens = rng.integers(0, 6, size=(batch_size, num_tokens))
    else:
        tokens = rng.normal(size=(batch_size, num_tokens, 3)).astype("float32")
    return {
        "tokens": tokens,
        "label": np.zeros(batch_size, "int64"),
        "mask_noise": rng.uniform(size=(batch_size, num_tokens)).astype("float32"),
        "nearby_noise": rng.uniform(size=(batch_size, num_tokens)).astype("float32"),
    }


# === exact gradients ===
def _float64_model(first_order=False, inner_steps=1):
    keras.utils.set_random_seed(0)
    model = MetaMAE(
        num_tokens=6, token_grid=[6], token_dim=3, embed_dim=8, encoder_depth=1,
        encoder_heads=2, encoder_mlp_dim=16, decoder_dim=8, decoder_depth=1, decoder_heads=2,
        decoder_mlp_dim=16, projector_hidden_dim=16, projector_dim=8, mask_ratio=0.5,
        inner_lr=0.5, contrast_weight=0.5, nearby_ratio=0.6, first_order=first_order,
        inner_steps=inner_steps, dtype="float64",
    )
    model.build()
    return model


def _float64_inputs():
    rng = np.random.default_rng(0)
    tokens = tf.constant(rng.normal(size=(3, 6, 3)))
    mask_noise = tf.constant(rng.uniform(size=(3, 6)))
    nearby_noise = tf.constant(rng.uniform(size=(3, 6)))
    return tokens, mask_noise, nearby_noise


def _checked_variables(model):
    block = model.encoder.blocks[0]
    return [
        model.encoder.token_embedding.embedding.kernel,
        block.norm1.gamma,  # through an encoder LayerNorm
        block.attention.qkv.kernel,
        block.fc1.kernel,
        model.encoder.norm.beta,
    ]


def _analytic_gradients(model, inputs):
    with tf.GradientTape() as tape:
        loss = model.compute_losses(*inputs, training=True)["loss"]
    return loss, tape.gradient(loss, _checked_variables(model))


@pytest.mark.parametrize("inner_steps", [1, 2])
def test_full_loss_gradient_matches_float64_finite_differences(inner_steps):
    """The outer gradient, second order through the inner gradient(s), through attention,
    GELU and LayerNorm, equals central finite differences of the loss in float64."""
    model = _float64_model(inner_steps=inner_steps)
    inputs = _float64_inputs()
    tokens, mask_noise, nearby_noise = inputs
    # The support set really contains Nearby-S tokens, so the inner loss covers them.
    _, mask = masking.random_masking(mask_noise, 0.5)
    assert masking.nearby_mask(mask, [6], nearby_noise, 0.6).numpy().sum() > 0

    loss, grads = _analytic_gradients(model, inputs)
    assert loss.dtype == tf.float64
    assert_matches_finite_differences(model, inputs, _checked_variables(model), grads)


def test_training_step_gradient_of_every_variable_matches_float64_finite_differences():
    """The gradient the train step applies (Keras' compiled train function, as training runs
    it), of every trainable variable: encoder, decoder and projector, each checked along a
    random direction of the whole tensor against central finite differences of the loss in
    float64, second order through the inner step."""
    model = _float64_model()
    tokens, mask_noise, nearby_noise = _float64_inputs()
    # The train step reads the noise as float32 (`unpack`): the loss below sees the same.
    mask_noise, nearby_noise = tf.cast(mask_noise, tf.float32), tf.cast(nearby_noise, tf.float32)
    batch = {"tokens": tokens, "mask_noise": mask_noise, "nearby_noise": nearby_noise}
    variables = model.trainable_variables
    groups = {v.path.split("/")[1] for v in variables}
    assert groups == {"encoder", "decoder", "projector"}
    grads = training_step_gradients(model, batch)
    assert all(np.any(g != 0) for g in grads)  # every variable takes part in the loss

    loss = tf.function(lambda: model.compute_losses(tokens, mask_noise, nearby_noise,
                                                    training=True)["loss"])
    worst = assert_directional_derivatives_match(loss, variables, grads)
    assert worst < 1e-5


def test_first_order_gradient_differs_from_second_order():
    inputs = _float64_inputs()
    loss2, second = _analytic_gradients(_float64_model(first_order=False), inputs)
    loss1, first = _analytic_gradients(_float64_model(first_order=True), inputs)
    np.testing.assert_allclose(loss1.numpy(), loss2.numpy())  # same weights, same loss
    for a, b in zip(first, second):
        relative = np.linalg.norm(a.numpy() - b.numpy()) / np.linalg.norm(b.numpy())
        assert relative > 1e-3


def test_inner_step_lowers_the_inner_loss_of_each_example_independently():
    model = _model(inner_lr=0.02)
    batch = _batch()
    tokens = tf.constant(batch["tokens"])
    keep, mask = masking.random_masking(tf.constant(batch["mask_noise"]), model.mask_ratio)
    support = masking.support_mask(mask, model.token_grid, batch["nearby_noise"], 0.5)
    z = model.encoder(tokens, keep_indices=keep)
    z_star, before = model.adapt(z, tokens, support, keep)
    # A small step along the negative gradient lowers the loss (sign of the update).
    after = tf.reduce_sum(model.per_example_error(
        tokens, model.decode(z_star, keep, False), support))
    assert after.numpy() < before.numpy()
    # Summed over the batch: example 0 adapts the same alone as within the batch.
    alone, _ = model.adapt(z[:1], tokens[:1], support[:1], keep[:1])
    np.testing.assert_allclose(alone.numpy(), z_star.numpy()[:1], rtol=1e-5, atol=1e-6)
    # The CLS latent is adapted too.
    assert np.abs(z_star.numpy()[:, 0] - z.numpy()[:, 0]).max() > 0


def test_projector_normalizes_each_view_with_its_own_batch_statistics():
    """The reference calls the projector on pool(Z) and on pool(Z*) separately, so each view's
    BatchNorm uses that view's statistics. Checked against the loss recomputed that way (and
    against the concatenated 2B-row projection, which must differ)."""
    from keras_metamae.models import losses as losses_lib

    model = _model()
    batch = _batch()
    tokens = tf.constant(batch["tokens"])
    calls = []
    original_call = model.projector.call

    def recording_call(inputs, training=None):
        calls.append(tuple(inputs.shape))
        return original_call(inputs, training=training)

    model.projector.call = recording_call
    losses = model.compute_losses(tokens, batch["mask_noise"], batch["nearby_noise"],
                                  training=True)
    assert calls == [(4, 16), (4, 16)]

    keep, mask = masking.random_masking(tf.constant(batch["mask_noise"]), model.mask_ratio)
    support = masking.support_mask(mask, model.token_grid, batch["nearby_noise"],
                                   model.nearby_ratio)
    z = model.encoder(tokens, keep_indices=keep)
    z_star, _ = model.adapt(z, tokens, support, keep, training=True)
    pooled = [tf.reduce_mean(v[:, 1:], axis=1) for v in (z, z_star)]
    per_view = [original_call(p, training=True) for p in pooled]
    np.testing.assert_allclose(losses["contrastive_loss"].numpy(),
                               losses_lib.nt_xent(*per_view)[0].numpy(), rtol=1e-5)
    joint = tf.split(original_call(tf.concat(pooled, 0), training=True), 2)
    assert abs(float(losses_lib.nt_xent(*joint)[0]) - float(losses["contrastive_loss"])) > 1e-4


def test_old_weights_format_checkpoints_are_refused_with_one_line(tmp_path):
    """A workdir written before the qkv and vocabulary biases were removed (its latest.json
    has no weights_format) is refused with a one-line ValueError, not a load failure."""
    from keras_metamae.rundir import CheckpointManager
    from keras_metamae.methods.base import WEIGHTS_FORMAT

    def built_model():
        model = _model(discrete=True)
        model.build()
        return model

    manager = CheckpointManager(str(tmp_path))
    manager.save(built_model(), 5)
    assert manager.latest_record()["weights_format"] == WEIGHTS_FORMAT == 2
    assert manager.restore(built_model()) == 5
    record = manager.latest_record()
    del record["weights_format"]
    with open(tmp_path / "latest.json", "w") as f:
        json.dump(record, f)
    expected = "weights format 1 but this version of the model has format 2"
    with pytest.raises(ValueError, match=expected) as error:
        manager.restore(built_model())
    assert "\n" not in str(error.value) and "--workdir" in str(error.value)


# === training ===
@pytest.mark.parametrize("discrete", [False, True])
def test_train_step_decreases_loss(discrete):
    keras.utils.set_random_seed(0)
    model = _model(discrete)
    model.compile(optimizer=keras.optimizers.AdamW(3e-3, weight_decay=1e-4))
    batch = _batch(discrete)
    history = [model.train_on_batch(batch, return_dict=True) for _ in range(20)]
    assert set(history[0]) == {"loss", "reconstruction_loss", "contrastive_loss",
                               "contrastive_accuracy", "inner_loss_before",
                               "inner_loss_after"}
    losses = [h["loss"] for h in history]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])
    first, last = history[0], history[-1]
    assert last["reconstruction_loss"] < first["reconstruction_loss"]
    np.testing.assert_allclose(
        first["loss"],
        first["reconstruction_loss"] + 0.5 * first["contrastive_loss"],
        rtol=1e-5,
    )


def test_mae_method_runs_without_inner_step_or_contrast():
    keras.utils.set_random_seed(0)
    model = _model(method="mae")
    assert not hasattr(model, "projector")
    model.compile(optimizer=keras.optimizers.AdamW(3e-3))
    batch = _batch()
    logs = [model.train_on_batch(batch, return_dict=True) for _ in range(5)]
    assert set(logs[0]) == {"loss", "reconstruction_loss"}
    assert logs[-1]["loss"] < logs[0]["loss"]
    np.testing.assert_allclose(logs[0]["loss"], logs[0]["reconstruction_loss"])
    assert model.evaluate(batch, verbose=0, return_dict=True)["loss"] > 0


@pytest.mark.parametrize("method", ["metamae", "mae"])
def test_linear_decoder_depth_zero_runs(method):
    """decoder_depth=0: the encoder sees every token (mask tokens at masked positions) and a
    per-token linear head reconstructs."""
    keras.utils.set_random_seed(0)
    model = _model(decoder_depth=0, method=method)
    model.compile(optimizer=keras.optimizers.AdamW(3e-3))
    batch = _batch()
    logs = [model.train_on_batch(batch, return_dict=True) for _ in range(5)]
    assert all(np.isfinite(v) for v in logs[-1].values())
    assert logs[-1]["reconstruction_loss"] < logs[0]["reconstruction_loss"]
    assert model.encoder.use_mask_token
    assert model.encoder.mask_token.shape == (16,)
    assert len(model.decoder.trainable_weights) == 2  # the linear head only
    out = model.reconstruct(batch["tokens"], batch["mask_noise"])
    assert out["predictions"].shape == (4, 8, 3)


def test_mixed_bfloat16_trains_with_float32_losses():
    keras.utils.set_random_seed(0)
    model = _model(dtype="mixed_bfloat16")
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    batch = _batch()
    logs = model.train_on_batch(batch, return_dict=True)
    assert all(np.isfinite(v) for v in logs.values())
    losses = model.compute_losses(tf.constant(batch["tokens"]), batch["mask_noise"],
                                  batch["nearby_noise"])
    assert all(v.dtype == tf.float32 for v in losses.values())
    assert model.encoder.norm.gamma.dtype == "float32"
    assert model(batch["tokens"]).dtype == tf.bfloat16


def test_noise_comes_from_the_seed_generator_when_absent():
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    tokens = _batch()["tokens"]
    a = model.test_on_batch({"tokens": tokens}, return_dict=True)["reconstruction_loss"]
    b = model.test_on_batch({"tokens": tokens}, return_dict=True)["reconstruction_loss"]
    assert a != b  # a fresh mask per step
    out = model.reconstruct(tokens)
    np.testing.assert_array_equal(out["mask"].numpy().sum(axis=1), 4.0)


def test_reconstruct_and_call():
    model = _model(discrete=True)
    batch = _batch(discrete=True)
    out = model.reconstruct(batch["tokens"], batch["mask_noise"])
    assert out["predictions"].shape == (4, 8, 6)
    _, mask = masking.random_masking(tf.constant(batch["mask_noise"]), 0.5)
    np.testing.assert_array_equal(out["mask"].numpy(), mask.numpy())
    assert model(batch["tokens"]).shape == (4, 16)


def test_config_round_trip_and_validation():
    model = _model(inner_steps=2, first_order=True, temperature=0.3)
    config = model.get_config()
    keys = ["num_tokens", "token_grid", "token_dim", "vocab_size", "embed_dim",
            "encoder_depth", "encoder_heads", "encoder_mlp_dim", "dropout", "decoder_dim",
            "decoder_depth", "decoder_heads", "decoder_mlp_dim", "mask_ratio", "seed",
            "projector_hidden_dim", "projector_dim", "inner_lr", "contrast_weight",
            "nearby_ratio", "inner_steps", "first_order", "temperature"]
    for key in keys:
        assert key in config
    assert MetaMAE.from_config(config).get_config() == config
    mae = _model(method="mae")
    assert type(mae).from_config(mae.get_config()).get_config() == mae.get_config()
    with pytest.raises(ValueError):
        _model(method="simclr")
    with pytest.raises(ValueError):
        _model(token_grid=[3, 3])
    with pytest.raises(ValueError):
        _model(vocab_size=5)  # both token_dim and vocab_size


def test_save_and_load_after_training(tmp_path):
    keras.utils.set_random_seed(0)
    model = _model(discrete=True)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    batch = _batch(discrete=True)
    for _ in range(2):
        model.train_on_batch(batch)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, MetaMAE)
    assert loaded.get_config() == model.get_config()
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(loaded(batch["tokens"]).numpy(), model(batch["tokens"]).numpy(),
                               rtol=1e-6)
    args = (tf.constant(batch["tokens"]), batch["mask_noise"], batch["nearby_noise"])
    np.testing.assert_allclose(loaded.compute_losses(*args)["loss"].numpy(),
                               model.compute_losses(*args)["loss"].numpy(), rtol=1e-6)
    # Training resumes with the restored optimizer state.
    assert int(loaded.optimizer.iterations.numpy()) == 2
    logs = loaded.train_on_batch(batch, return_dict=True)
    assert np.isfinite(logs["loss"])


# === replicas ===
_REPLICA_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    from keras_metamae.methods.metamae import MetaMAE

    TINY = json.loads(sys.argv[1])

    def batch_for(discrete, rng, batch_size=4):
        tokens = (rng.integers(0, 6, (batch_size, 8)) if discrete
                  else rng.normal(size=(batch_size, 8, 3)))
        return {"tokens": tokens,
                "mask_noise": rng.uniform(size=(batch_size, 8)).astype("float32"),
                "nearby_noise": rng.uniform(size=(batch_size, 8)).astype("float32")}

    def train_once(strategy, kwargs, batch, init):
        with strategy.scope():
            model = MetaMAE(**kwargs)
            model.build()
            if init is not None:
                model.set_weights(init)
            model.compile(optimizer=keras.optimizers.SGD(0.5))
        before = model.get_weights()
        history = model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
        return model, before, model.get_weights(), history.history["loss"][-1]

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    results = {}
    rng = np.random.default_rng(0)
    for discrete in (False, True):
        kwargs = dict(TINY, num_tokens=8, token_grid=[2, 4], seed=3, dtype="float64")
        kwargs.update(vocab_size=6) if discrete else kwargs.update(token_dim=3)
        batch = batch_for(discrete, rng)
        _, init, single, loss1 = train_once(tf.distribute.get_strategy(), kwargs, batch, None)
        model, _, double, loss2 = train_once(mirrored, kwargs, batch, init)
        results["discrete" if discrete else "continuous"] = {
            "weights": [[a.tolist(), b.tolist(), i.tolist()]
                        for a, b, i in zip(single, double, init)],
            "loss": [float(loss1), float(loss2)],
        }
    # Noise drawn by the model's seed generator (no noise in the batch) also works on 2
    # replicas.
    history = model.fit(tf.data.Dataset.from_tensors({"tokens": batch["tokens"]}).repeat(2),
                        epochs=1, verbose=0)
    results["drawn_noise_loss"] = float(history.history["loss"][-1])

    # NT-Xent with keys gathered across replicas, uneven local batches (3 + 1 rows): the
    # row-weighted mean of the local losses is the single-device loss.
    from keras_metamae.models import losses
    z = rng.normal(size=(4, 5))
    z_star = z + rng.normal(size=(4, 5))
    parts = {0: slice(0, 3), 1: slice(3, 4)}
    local = mirrored.run(
        lambda ctx_z, ctx_s: losses.nt_xent(ctx_z, ctx_s)[0],
        args=tuple(
            mirrored.experimental_distribute_values_from_function(
                lambda ctx, a=a: tf.constant(a[parts[ctx.replica_id_in_sync_group]]))
            for a in (z, z_star)),
    )
    values = [float(v) for v in mirrored.experimental_local_results(local)]
    results["nt_xent_uneven"] = [(3 * values[0] + values[1]) / 4,
                                 float(losses.nt_xent(tf.constant(z), tf.constant(z_star))[0])]
    print("RESULT" + json.dumps(results))
    """
)


def test_one_step_is_the_same_on_one_and_two_replicas():
    """MirroredStrategy with 2 logical CPUs and the same global batch and noise gives the same
    update as one device: loss scaling by replicas, the batch-summed inner loss, the
    all-gathered NT-Xent keys and the synchronized BatchNorm together. Run in float64, so
    agreement is to rounding (a float32 run agrees to ~1e-5 relative)."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", _REPLICA_SCRIPT, json.dumps(TINY)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    results = json.loads(lines[-1][len("RESULT"):])
    for name in ("continuous", "discrete"):
        result = results[name]
        moved = 0.0
        for single, double, init in result["weights"]:
            single, double, init = map(np.asarray, (single, double, init))
            np.testing.assert_allclose(double, single, rtol=1e-9, atol=1e-12)
            moved = max(moved, float(np.abs(single - init).max()))
        assert moved > 1e-3, name  # the step changed the weights
        np.testing.assert_allclose(result["loss"][1], result["loss"][0], rtol=1e-6)
    assert np.isfinite(results["drawn_noise_loss"])
    distributed, single = results["nt_xent_uneven"]
    np.testing.assert_allclose(distributed, single, rtol=1e-10)
