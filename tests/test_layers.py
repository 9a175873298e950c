"""LayerNorm, attention block, embeddings: forward values, exact second-order gradients
(checked against float64 finite differences), serialization."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_metamae.models import layers  # noqa: E402
from keras_metamae import models as model_lib  # noqa: E402


def _hessian_vector_product(fn, x, v):
    """d/dx <grad fn(x), v> with nested tapes (exact second order if fn's ops are)."""
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            y = fn(x)
        g = inner.gradient(y, x)
        directional = tf.reduce_sum(g * v)
    return outer.gradient(directional, x)


def _finite_difference_hvp(fn, x, v, eps=1e-5):
    """Central finite differences of the first-order gradient along v (float64)."""

    def grad(at):
        with tf.GradientTape() as tape:
            tape.watch(at)
            y = fn(at)
        return tape.gradient(y, at)

    return (grad(x + eps * v) - grad(x - eps * v)) / (2 * eps)


def _random(shape, seed, dtype="float64"):
    return tf.constant(np.random.default_rng(seed).normal(size=shape), dtype=dtype)


def test_layer_norm_matches_keras_layer_normalization():
    x = _random((3, 5, 8), 0, "float32") * 3.0 + 1.0
    ours = layers.LayerNorm(epsilon=1e-6)
    ref = keras.layers.LayerNormalization(epsilon=1e-6)
    ours.build(x.shape)
    ref.build(x.shape)
    rng = np.random.default_rng(1)
    gamma = rng.normal(size=8).astype("float32")
    beta = rng.normal(size=8).astype("float32")
    ours.set_weights([gamma, beta])
    ref.set_weights([gamma, beta])
    np.testing.assert_allclose(ours(x).numpy(), ref(x).numpy(), rtol=1e-5, atol=1e-5)


def test_layer_norm_second_order_gradient_matches_finite_differences():
    norm = layers.LayerNorm(dtype="float64")
    norm.build((2, 4, 6))
    rng = np.random.default_rng(2)
    norm.set_weights([rng.normal(size=6), rng.normal(size=6)])
    weights = _random((2, 4, 6), 3)
    # A scalar whose Hessian involves the LayerNorm statistics' second derivatives.
    fn = lambda x: tf.reduce_sum(weights * norm(x) ** 2) + tf.reduce_sum(tf.sin(norm(x)))  # noqa
    x = _random((2, 4, 6), 4)
    v = _random((2, 4, 6), 5)
    exact = _hessian_vector_product(fn, x, v)
    numeric = _finite_difference_hvp(fn, x, v)
    np.testing.assert_allclose(exact.numpy(), numeric.numpy(), rtol=1e-6, atol=1e-8)


def test_moments_layer_norm_fails_the_same_check():
    """The check above is discriminating: the `tf.nn.moments` formulation (stop-gradient on
    the mean inside the variance, what Keras' LayerNormalization uses on TF) has a correct
    first-order but a wrong second-order gradient."""

    def moments_norm(x):
        mean, var = tf.nn.moments(x, axes=[-1], keepdims=True)
        return (x - mean) * tf.math.rsqrt(var + 1e-6)

    weights = _random((2, 4, 6), 3)
    fn = lambda x: tf.reduce_sum(weights * moments_norm(x) ** 2)  # noqa: E731
    x = _random((2, 4, 6), 4)
    v = _random((2, 4, 6), 5)
    exact = _hessian_vector_product(fn, x, v).numpy()
    numeric = _finite_difference_hvp(fn, x, v).numpy()
    assert np.max(np.abs(exact - numeric)) > 1e-3


@pytest.mark.parametrize("training", [False, True])
def test_transformer_block_second_order_gradient_matches_finite_differences(training):
    """training=True: the attention core runs XLA-compiled (value, gradient and gradient of the
    gradient); the Hessian-vector product equals finite differences either way."""
    block = layers.TransformerBlock(num_heads=2, mlp_dim=12, dtype="float64")
    block.build((2, 5, 8))
    weights = _random((2, 5, 8), 6)
    fn = lambda x: tf.reduce_sum(weights * block(x, training=training) ** 2)  # noqa: E731
    x = _random((2, 5, 8), 7)
    v = _random((2, 5, 8), 8)
    exact = _hessian_vector_product(fn, x, v)
    numeric = _finite_difference_hvp(fn, x, v)
    np.testing.assert_allclose(exact.numpy(), numeric.numpy(), rtol=1e-5, atol=1e-7)


def test_xla_attention_core_equals_the_plain_ops_to_second_order():
    attention = layers.MultiHeadSelfAttention(num_heads=2, dtype="float64")
    attention.build((3, 7, 8))
    weights = _random((3, 7, 8), 9)
    x = _random((3, 7, 8), 10)
    v = _random((3, 7, 8), 11)
    results = {}
    for training in (True, False):  # True: attention_core (XLA); False: the same TF ops
        fn = lambda x: tf.reduce_sum(weights * tf.sin(attention(x, training=training)))  # noqa
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x)
        gradient = tape.gradient(value, x)
        results[training] = (value, gradient, _hessian_vector_product(fn, x, v))
    for compiled, plain in zip(results[True], results[False]):
        np.testing.assert_allclose(compiled.numpy(), plain.numpy(), rtol=1e-12, atol=1e-12)


def test_gelu_exact_matches_keras_and_its_second_derivative_finite_differences():
    x = _random((4, 6), 12) * 2.0
    np.testing.assert_allclose(layers.gelu_exact(x).numpy(),
                               keras.ops.gelu(x, approximate=False).numpy(), rtol=1e-7)
    fn = lambda x: tf.reduce_sum(layers.gelu_exact(x) ** 2)  # noqa: E731
    v = _random((4, 6), 13)
    np.testing.assert_allclose(_hessian_vector_product(fn, x, v).numpy(),
                               _finite_difference_hvp(fn, x, v).numpy(), rtol=1e-6, atol=1e-8)


def test_layer_norm_computes_in_float32_under_mixed_precision():
    norm = layers.LayerNorm(dtype="mixed_bfloat16")
    x = _random((2, 3, 8), 9, "float32") * 100.0 + 1000.0
    y = norm(x)
    assert y.dtype == tf.bfloat16
    assert norm.gamma.dtype == "float32"
    ref = keras.layers.LayerNormalization(epsilon=1e-6)(x)
    np.testing.assert_allclose(tf.cast(y, tf.float32).numpy(), ref.numpy(), atol=0.05)


def test_transformer_block_is_pre_norm_residual():
    """With the attention output projection and the last MLP layer zeroed, the block is the
    identity (both branches are residual, normalization inside the branches)."""
    block = layers.TransformerBlock(num_heads=2, mlp_dim=12)
    x = _random((2, 5, 8), 10, "float32")
    block(x)
    for dense in (block.attention.proj, block.fc2):
        dense.kernel.assign(tf.zeros_like(dense.kernel))
        dense.bias.assign(tf.zeros_like(dense.bias))
    np.testing.assert_allclose(block(x).numpy(), x.numpy(), atol=1e-6)


def test_sincos_position_embedding_1d():
    table = layers.sincos_position_embedding([10], 8)
    assert table.shape == (10, 8) and table.dtype == np.float32
    omega = 1.0 / 10000.0 ** (np.arange(4) / 4.0)
    np.testing.assert_allclose(table[3, :4], np.sin(3 * omega), rtol=1e-6)
    np.testing.assert_allclose(table[3, 4:], np.cos(3 * omega), rtol=1e-6)
    assert len({tuple(row) for row in table.round(6)}) == 10


def test_sincos_position_embedding_2d():
    rows, cols = 3, 4
    table = layers.sincos_position_embedding([rows, cols], 16)
    assert table.shape == (12, 16)
    grid = table.reshape(rows, cols, 16)
    # First half encodes the row, second half the column (tokens are row-major).
    np.testing.assert_allclose(grid[1, 0, :8], grid[1, 3, :8])
    np.testing.assert_allclose(grid[0, 2, 8:], grid[2, 2, 8:])
    np.testing.assert_allclose(grid[2, 1, :8], layers.sincos_position_embedding([rows], 8)[2])
    assert len({tuple(row) for row in table.round(6)}) == 12


def test_sincos_position_embedding_pads_odd_widths():
    table = layers.sincos_position_embedding([2, 2], 10)
    assert table.shape == (4, 10)
    np.testing.assert_array_equal(table[:, 8:], 0.0)


def test_token_embedding_shapes_and_tied_matrix():
    continuous = layers.TokenEmbedding(16, token_dim=3)
    assert continuous(np.zeros((2, 5, 3), "float32")).shape == (2, 5, 16)
    discrete = layers.TokenEmbedding(16, vocab_size=7)
    out = discrete(np.array([[0, 6, 2]]))
    assert out.shape == (1, 3, 16)
    np.testing.assert_allclose(out[0, 1].numpy(), discrete.embeddings.numpy()[6])
    with pytest.raises(ValueError):
        layers.TokenEmbedding(16, token_dim=3, vocab_size=7)


def _roundtrip(layer, *inputs, **call_kwargs):
    expected = layer(*inputs, **call_kwargs)
    config = keras.saving.serialize_keras_object(layer)
    clone = keras.saving.deserialize_keras_object(config)
    clone(*inputs, **call_kwargs)
    clone.set_weights(layer.get_weights())
    assert clone.get_config() == layer.get_config()
    np.testing.assert_allclose(clone(*inputs, **call_kwargs).numpy(), expected.numpy(),
                               rtol=1e-6)


def test_layers_serialize_round_trip():
    x = _random((2, 5, 8), 11, "float32")
    _roundtrip(layers.LayerNorm(epsilon=1e-5), x)
    _roundtrip(layers.MultiHeadSelfAttention(num_heads=2), x)
    _roundtrip(layers.TransformerBlock(num_heads=2, mlp_dim=12, dropout=0.1), x)
    _roundtrip(layers.TokenEmbedding(8, token_dim=8), x)
    _roundtrip(layers.TokenEmbedding(8, vocab_size=5), np.array([[1, 2, 4]]))


def test_models_serialize_round_trip():
    tokens = _random((2, 6, 3), 12, "float32")
    encoder = model_lib.Encoder(num_tokens=6, token_grid=[2, 3], token_dim=3, embed_dim=8,
                                depth=1, num_heads=2, mlp_dim=16)
    _roundtrip(encoder, tokens)
    keep = np.array([[0, 4], [1, 5]])
    latent = encoder(tokens, keep_indices=keep)
    assert latent.shape == (2, 3, 8)
    decoder = model_lib.Decoder(num_tokens=6, token_grid=[2, 3], token_dim=3, embed_dim=8,
                                decoder_dim=4, depth=1, num_heads=2, mlp_dim=8)
    _roundtrip(decoder, latent, keep)
    assert decoder(latent, keep).shape == (2, 6, 3)
    _roundtrip(model_lib.Projector(hidden_dim=12, output_dim=4), latent[:, 0, :])


def test_encoder_keep_indices_select_tokens_and_features_pool():
    tokens = _random((2, 6, 3), 13, "float32")
    encoder = model_lib.Encoder(num_tokens=6, token_grid=[6], token_dim=3, embed_dim=8,
                                depth=0, num_heads=2, mlp_dim=16)
    full = encoder(tokens)
    assert full.shape == (2, 7, 8)
    keep = np.array([[1, 3], [0, 5]])
    # Without blocks each output token depends only on its own input and position.
    part = encoder(tokens, keep_indices=keep)
    np.testing.assert_allclose(part[0, 1:].numpy(), full.numpy()[0, [2, 4]], rtol=1e-5)
    np.testing.assert_allclose(part[1, 1:].numpy(), full.numpy()[1, [1, 6]], rtol=1e-5)
    np.testing.assert_allclose(encoder.features(tokens).numpy(),
                               full.numpy()[:, 1:].mean(axis=1), rtol=1e-5)


def test_decoder_puts_visible_tokens_back_in_place():
    """A visible token's prediction depends on its own latent; masked positions get the
    mask token. Checked with a block-free decoder (each position is independent)."""
    decoder = model_lib.Decoder(num_tokens=5, token_grid=[5], token_dim=2, embed_dim=4,
                                decoder_dim=4, depth=1, num_heads=1, mlp_dim=4)
    latent = _random((1, 3, 4), 14, "float32")
    keep = np.array([[1, 3]])
    decoder(latent, keep)
    # Zero the block's residual branches so positions do not mix.
    block = decoder.blocks[0]
    for dense in (block.attention.proj, block.fc2):
        dense.kernel.assign(tf.zeros_like(dense.kernel))
        dense.bias.assign(tf.zeros_like(dense.bias))
    out = decoder(latent, keep).numpy()
    moved = latent.numpy().copy()
    moved[0, 2] += 1.0  # the latent of position 3
    out2 = decoder(moved, keep).numpy()
    changed = np.abs(out2 - out).sum(axis=-1)[0] > 1e-6
    np.testing.assert_array_equal(changed, [False, False, False, True, False])


# === the reference's recipe details (timm ViT blocks, PyTorch layer defaults) ===
def test_layer_norm_default_epsilon_is_pytorch_1e_5():
    """Tokens of tiny variance are where epsilon matters: y = (x - mean) / sqrt(var + 1e-5)."""
    x = _random((2, 3, 8), 15, "float32") * 3e-3
    norm = layers.LayerNorm()
    centered = x.numpy() - x.numpy().mean(-1, keepdims=True)
    expected = centered / np.sqrt((centered ** 2).mean(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(norm(x).numpy(), expected, rtol=1e-4, atol=1e-5)
    block = layers.TransformerBlock(num_heads=2, mlp_dim=12)
    block.build((2, 3, 8))
    assert block.norm1.epsilon == block.norm2.epsilon == 1e-5


def test_attention_has_no_qkv_bias_by_default():
    attention = layers.MultiHeadSelfAttention(num_heads=2)
    attention.build((2, 5, 8))
    assert attention.qkv.bias is None and [w.name for w in attention.qkv.weights] == ["kernel"]
    assert attention.proj.bias is not None  # timm's output projection keeps its bias
    block = layers.TransformerBlock(num_heads=2, mlp_dim=12)
    block.build((2, 5, 8))
    assert block.attention.qkv.bias is None
    with_bias = layers.MultiHeadSelfAttention(num_heads=2, qkv_bias=True)
    with_bias.build((2, 5, 8))
    assert with_bias.qkv.bias.shape == (24,)


def test_discrete_token_embedding_is_xavier_uniform():
    vocab, dim = 50, 64
    embedding = layers.TokenEmbedding(dim, vocab_size=vocab)
    embedding.build((None, 4))
    values = embedding.embeddings.numpy()
    limit = np.sqrt(6.0 / (vocab + dim))  # the same for torch's [vocab, dim] weight
    assert np.abs(values).max() <= limit
    # Uniform on [-limit, limit] has std limit / sqrt(3); N(0, 0.02) would be far below.
    np.testing.assert_allclose(values.std(), limit / np.sqrt(3.0), rtol=0.05)


def test_encoder_applies_dropout_to_the_embedded_sequence():
    """timm's `pos_drop`: dropout after the position embedding and the CLS token, before the
    blocks. Without blocks, training mode still changes the output only through it."""
    tokens = _random((4, 6, 3), 16, "float32")

    def encoder(dropout):
        keras.utils.set_random_seed(0)
        return model_lib.Encoder(num_tokens=6, token_grid=[6], token_dim=3, embed_dim=8,
                                 depth=0, num_heads=2, mlp_dim=16, dropout=dropout)

    with_dropout = encoder(0.5)
    inference = with_dropout(tokens, training=False).numpy()
    trained = with_dropout(tokens, training=True).numpy()
    assert np.abs(trained - inference).max() > 1e-2
    # The CLS token is in the dropped sequence too.
    assert np.abs(trained[:, 0] - inference[:, 0]).max() > 1e-2
    without = encoder(0.0)
    np.testing.assert_allclose(without(tokens, training=True).numpy(),
                               without(tokens, training=False).numpy())


def test_projector_batch_norm_uses_pytorch_epsilon_and_momentum():
    """Keras momentum 0.9 is PyTorch's momentum 0.1: after one training call the moving mean
    is 0.1 * the batch mean; the batch is normalized with epsilon 1e-5."""
    projector = model_lib.Projector(hidden_dim=6, output_dim=3)
    x = _random((5, 4), 17, "float32") * 1e-2
    projector.build(x.shape)
    norm = projector.batch_norm
    assert norm.epsilon == 1e-5 and norm.momentum == 0.9 and norm.synchronized
    projector(x, training=True)
    hidden = x.numpy() @ projector.dense1.kernel.numpy()
    np.testing.assert_allclose(norm.moving_mean.numpy(), 0.1 * hidden.mean(0), rtol=1e-4,
                               atol=1e-7)
    normalized = norm(hidden, training=True).numpy()
    expected = (hidden - hidden.mean(0)) / np.sqrt(hidden.var(0) + 1e-5)
    np.testing.assert_allclose(normalized, expected, rtol=1e-3, atol=1e-4)


def test_discrete_vocabulary_head_is_tied_matrix_only():
    """logits = head(h) @ E^T: no extra vocabulary bias (and no such weight)."""
    decoder = model_lib.Decoder(num_tokens=5, token_grid=[5], vocab_size=7, embed_dim=4,
                                decoder_dim=4, depth=0)
    latent = _random((2, 6, 4), 18, "float32")
    matrix = _random((7, 4), 19, "float32")
    logits = decoder(latent, embeddings=matrix).numpy()
    head = decoder.head
    expected = (latent.numpy()[:, 1:] @ head.kernel.numpy() + head.bias.numpy()) @ matrix.numpy().T
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    assert not [w for w in decoder.weights if "vocab" in w.path]


# === the encoder embeds only the kept tokens ===
def _latent_embed_all_then_keep(encoder, tokens, keep):
    """The encoder's former path: embed all T tokens, add positions, keep n of them."""
    x = encoder.embed_tokens(tokens) + tf.cast(encoder._position_table, encoder.compute_dtype)
    x = tf.gather(x, keep, batch_dims=1)
    cls = tf.broadcast_to(tf.cast(encoder.cls_token, x.dtype), (x.shape[0], 1, x.shape[-1]))
    x = tf.concat([cls, x], axis=1)
    for block in encoder.blocks:
        x = block(x)
    return encoder.norm(x)


def _mixed_tokens(batch, rng):
    """Packed tokens of a 2-segment sequence: 6 image patches of 3 values, 4 word ids < 7."""
    segments = [
        {"name": "image", "kind": "continuous", "num_tokens": 6, "token_grid": [2, 3],
         "token_dim": 3},
        {"name": "text", "kind": "discrete", "num_tokens": 4, "token_grid": [4],
         "vocab_size": 7},
    ]
    packed = np.zeros((batch, 10, 3))
    packed[:, :6] = rng.normal(size=(batch, 6, 3))
    packed[:, 6:, 0] = rng.integers(0, 7, size=(batch, 4))
    return segments, packed


@pytest.mark.parametrize("kind", ["continuous", "discrete", "segmented"])
def test_embedding_only_kept_tokens_gives_the_same_latent_and_gradients(kind):
    """The encoder gathers the kept tokens and their position (and modality) rows before
    embedding them; in float64 that equals embedding all T tokens and then keeping n, for the
    latent and for every weight's gradient."""
    rng = np.random.default_rng(20)
    batch = 3
    keep = tf.constant([[0, 3, 5, 7], [1, 2, 4, 6], [2, 3, 6, 7]], tf.int32)
    if kind == "continuous":
        num_tokens, extra = 8, dict(token_grid=[2, 4], token_dim=3)
        tokens = tf.constant(rng.normal(size=(batch, 8, 3)))
    elif kind == "discrete":
        num_tokens, extra = 8, dict(token_grid=[8], vocab_size=5)
        tokens = tf.constant(rng.integers(0, 5, size=(batch, 8)))
    else:
        segments, packed = _mixed_tokens(batch, rng)
        num_tokens, extra = 10, dict(token_grid=[10], token_dim=3, segments=segments)
        tokens = tf.constant(packed)
        # Kept sets that mix the segments differently: image only, text only, both.
        keep = tf.constant([[0, 1, 2, 5], [6, 7, 8, 9], [1, 4, 6, 9]], tf.int32)
    keras.utils.set_random_seed(0)
    encoder = model_lib.Encoder(num_tokens=num_tokens, embed_dim=8, depth=1, num_heads=2,
                                mlp_dim=16, dtype="float64", **extra)
    encoder.build()
    with tf.GradientTape(persistent=True) as tape:
        new = encoder(tokens, keep_indices=keep)
        old = _latent_embed_all_then_keep(encoder, tokens, keep)
        new_loss, old_loss = tf.reduce_sum(new ** 2), tf.reduce_sum(old ** 2)
    np.testing.assert_allclose(new.numpy(), old.numpy(), rtol=1e-12, atol=1e-12)
    variables = encoder.trainable_variables
    for v, g_new, g_old in zip(variables, tape.gradient(new_loss, variables),
                               tape.gradient(old_loss, variables)):
        g_new, g_old = tf.convert_to_tensor(g_new), tf.convert_to_tensor(g_old)
        np.testing.assert_allclose(g_new.numpy(), g_old.numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=v.path)
