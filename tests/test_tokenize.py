"""Tokenizers: exact inverses, patch order, normalization, and the same results in tf.function/tf.data."""

import numpy as np
import pytest
import tensorflow as tf

from preprocessing import tokenize
from preprocessing.spec import DatasetSpec


def image_spec(h=8, w=8, c=3, ph=2, pw=4, normalization=None):
    spec = DatasetSpec(name="img", modality="image", input_shape=[h, w, c], tokenizer="patch2d",
                       patch_shape=[ph, pw], num_tokens=1, token_grid=[1], token_dim=1,
                       normalization=normalization or {})
    layout = tokenize.token_layout(spec)
    spec.num_tokens, spec.token_dim, spec.token_grid = (layout["num_tokens"], layout["token_dim"],
                                                        layout["token_grid"])
    return spec.validate()


@pytest.mark.parametrize("channels", [1, 3, 13])
@pytest.mark.parametrize("patch", [(2, 2), (4, 2), (8, 8)])
def test_patchify_2d_round_trip(channels, patch):
    x = np.random.default_rng(channels).normal(size=(3, 16, 8, channels)).astype(np.float32)
    tokens = tokenize.patchify_2d(x, patch)
    assert tokens.shape == (3, (16 // patch[0]) * (8 // patch[1]), patch[0] * patch[1] * channels)
    back = tokenize.unpatchify_2d(tokens, patch, (16, 8, channels))
    np.testing.assert_array_equal(back.numpy(), x)


def test_patchify_2d_order_is_row_major_grid_and_patch():
    x = np.arange(4 * 4 * 2, dtype=np.float32).reshape(1, 4, 4, 2)
    tokens = tokenize.patchify_2d(x, (2, 2)).numpy()
    # Token 1 is the patch in grid row 0, column 1: pixels (0..1, 2..3), flattened (row, col, ch).
    np.testing.assert_array_equal(tokens[0, 1], x[0, 0:2, 2:4, :].reshape(-1))
    np.testing.assert_array_equal(tokens[0, 2], x[0, 2:4, 0:2, :].reshape(-1))


@pytest.mark.parametrize("channels", [1, 2, 52])
@pytest.mark.parametrize("patch", [1, 5])
def test_patchify_1d_round_trip(channels, patch):
    x = np.random.default_rng(0).normal(size=(2, 20, channels)).astype(np.float32)
    tokens = tokenize.patchify_1d(x, patch)
    assert tokens.shape == (2, 20 // patch, patch * channels)
    np.testing.assert_array_equal(tokens.numpy()[0, 1], x[0, patch:2 * patch].reshape(-1))
    back = tokenize.unpatchify_1d(tokens, [patch], (20, channels))
    np.testing.assert_array_equal(back.numpy(), x)


def test_round_trip_inside_tf_function_with_unknown_batch():
    spec = image_spec(normalization={"mean": [1.0, 2.0, 3.0], "std": [2.0, 4.0, 0.5]})
    x = np.random.default_rng(1).normal(size=(5, 8, 8, 3)).astype(np.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)])
    def round_trip(raw):
        tokens = tokenize.raw_to_tokens(raw, spec)
        return tokens, tokenize.tokens_to_raw(tokens, spec)

    tokens, back = round_trip(x)
    np.testing.assert_allclose(tokens.numpy(), tokenize.raw_to_tokens(x, spec).numpy(), rtol=1e-6)
    np.testing.assert_allclose(back.numpy(), x, rtol=1e-5, atol=1e-5)


def test_round_trip_inside_tf_data_map():
    x = np.random.default_rng(2).normal(size=(6, 16, 16, 4)).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices(x).batch(3).map(
        lambda b: tokenize.unpatchify_2d(tokenize.patchify_2d(b, (4, 4)), (4, 4), (16, 16, 4)))
    np.testing.assert_array_equal(np.concatenate(list(ds.as_numpy_iterator())), x)


def test_normalize_per_channel_and_inverse():
    norm = {"mean": [10.0, -1.0], "std": [2.0, 0.5]}
    x = np.array([[[12.0, -1.5], [10.0, 0.0]]], np.float32)
    y = tokenize.normalize(x, norm).numpy()
    np.testing.assert_allclose(y, [[[1.0, -1.0], [0.0, 2.0]]])
    np.testing.assert_allclose(tokenize.denormalize(y, norm).numpy(), x)
    np.testing.assert_array_equal(tokenize.normalize(x, {}).numpy(), x)


def test_raw_to_tokens_normalizes_then_patchifies():
    spec = image_spec(h=4, w=4, c=1, ph=2, pw=2, normalization={"mean": [3.0], "std": [2.0]})
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    tokens = tokenize.raw_to_tokens(x, spec).numpy()
    assert tokens.dtype == np.float32 and tokens.shape == (1, 4, 4)
    np.testing.assert_allclose(tokens[0, 0], (np.array([0, 1, 4, 5]) - 3.0) / 2.0)


def test_raw_to_tokens_rejects_wrong_shape():
    spec = image_spec()
    with pytest.raises(ValueError, match=r"expected \[B, 8, 8, 3\]"):
        tokenize.raw_to_tokens(np.zeros((2, 8, 8, 1), np.float32), spec)
    with pytest.raises(ValueError, match="batch of shape"):
        tokenize.raw_to_tokens(np.zeros((8, 8, 3), np.float32), spec)


def test_tabular_and_discrete_tokens():
    tab = DatasetSpec(name="t", modality="tabular", input_shape=[5], tokenizer="tabular",
                      patch_shape=[1], num_tokens=5, token_dim=1, token_grid=[5],
                      normalization={"mean": [1.0] * 5, "std": [2.0] * 5}).validate()
    rows = np.arange(10, dtype=np.float32).reshape(2, 5)
    tokens = tokenize.raw_to_tokens(rows, tab)
    assert tokens.shape == (2, 5, 1)
    np.testing.assert_allclose(tokenize.tokens_to_raw(tokens, tab).numpy(), rows, rtol=1e-6)
    # The flat TFRecord layout is accepted too.
    np.testing.assert_allclose(tokenize.tokens_to_raw(tf.reshape(tokens, [2, 5]), tab).numpy(), rows, rtol=1e-6)

    seq = DatasetSpec(name="s", modality="token", input_shape=[6], tokenizer="discrete",
                      patch_shape=[1], num_tokens=6, vocab_size=4, token_grid=[6]).validate()
    ids = np.array([[0, 1, 2, 3, 3, 0]], np.int32)
    tokens = tokenize.raw_to_tokens(ids, seq)
    assert tokens.dtype == tf.int64
    np.testing.assert_array_equal(tokenize.tokens_to_raw(tokens, seq).numpy(), ids)


def test_token_layout_and_indivisible_input():
    spec = image_spec(h=64, w=64, c=13, ph=8, pw=8)
    assert (spec.num_tokens, spec.token_dim, spec.token_grid) == (64, 832, [8, 8])
    with pytest.raises(ValueError, match="not divisible"):
        tokenize.patchify_2d(np.zeros((1, 6, 8, 1), np.float32), (4, 4))
