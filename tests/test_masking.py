"""Random masking and Nearby-S support sets against brute-force numpy references."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_metamae.models import masking  # noqa: E402


def _numpy_neighbours(mask, grid):
    """Masked tokens with a visible grid neighbour, by enumeration."""
    batch, num_tokens = mask.shape
    rows, cols = (1, grid[0]) if len(grid) == 1 else grid
    out = np.zeros_like(mask)
    for b in range(batch):
        for t in range(num_tokens):
            if not mask[b, t]:
                continue
            r, c = divmod(t, cols)
            for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0)):
                rr, cc = r + dr, c + dc
                if 0 <= rr < rows and 0 <= cc < cols and not mask[b, rr * cols + cc]:
                    out[b, t] = 1.0
    return out


@pytest.mark.parametrize("num_tokens,ratio,kept", [(16, 0.75, 4), (20, 0.85, 3), (8, 0.99, 1),
                                                   (128, 0.15, 108), (5, 0.0, 5)])
def test_random_masking_keeps_the_lowest_noise_tokens(num_tokens, ratio, kept):
    assert masking.num_kept(num_tokens, ratio) == kept
    noise = np.random.default_rng(num_tokens).uniform(size=(3, num_tokens)).astype("float32")
    keep, mask = masking.random_masking(tf.constant(noise), ratio)
    keep, mask = keep.numpy(), mask.numpy()
    assert keep.shape == (3, kept)
    np.testing.assert_array_equal(mask.sum(axis=1), num_tokens - kept)
    for b in range(3):
        expected = np.sort(np.argsort(noise[b])[:kept])
        np.testing.assert_array_equal(keep[b], expected)
        np.testing.assert_array_equal(np.flatnonzero(mask[b] == 0), expected)


@pytest.mark.parametrize("grid", [[12], [3, 4], [5, 5]])
def test_nearby_with_ratio_one_is_exactly_the_grid_neighbours(grid):
    num_tokens = int(np.prod(grid))
    rng = np.random.default_rng(num_tokens)
    for ratio in (0.5, 0.75):
        noise = rng.uniform(size=(6, num_tokens)).astype("float32")
        _, mask = masking.random_masking(tf.constant(noise), ratio)
        mask = mask.numpy()
        nearby_noise = rng.uniform(size=mask.shape).astype("float32")
        nearby = masking.nearby_mask(mask, grid, nearby_noise, 1.0).numpy()
        expected = _numpy_neighbours(mask, grid)
        np.testing.assert_array_equal(nearby, expected)
        assert expected.sum() > 0
        none = masking.nearby_mask(mask, grid, nearby_noise, 0.0).numpy()
        np.testing.assert_array_equal(none, 0.0)
        support = masking.support_mask(mask, grid, nearby_noise, 1.0).numpy()
        np.testing.assert_array_equal(support, (1.0 - mask) + expected)


def test_nearby_explicit_1d_has_no_wrap_around():
    mask = np.ones((1, 6), np.float32)
    mask[0, 5] = 0.0  # only the last token visible
    nearby = masking.nearby_mask(mask, [6], np.zeros((1, 6)), 1.0).numpy()
    np.testing.assert_array_equal(nearby, [[0, 0, 0, 0, 1, 0]])


def test_nearby_explicit_2d_four_neighbourhood_no_wrap():
    # 3x3 grid, visible: centre (1,1) and top-right corner (0,2).
    mask = np.ones((1, 9), np.float32)
    mask[0, 4] = 0.0
    mask[0, 2] = 0.0
    nearby = masking.nearby_mask(mask, [3, 3], np.zeros((1, 9)), 1.0).numpy().reshape(3, 3)
    expected = np.array([[0, 1, 0],
                         [1, 0, 1],
                         [0, 1, 0]])
    np.testing.assert_array_equal(nearby, expected)
    # Corner (0,2) alone must not reach (1,0) (row-major wrap) nor diagonals.
    mask = np.ones((1, 9), np.float32)
    mask[0, 2] = 0.0
    nearby = masking.nearby_mask(mask, [3, 3], np.zeros((1, 9)), 1.0).numpy().reshape(3, 3)
    np.testing.assert_array_equal(nearby, [[0, 1, 0], [0, 0, 1], [0, 0, 0]])


def test_nearby_keeps_each_candidate_with_probability_r():
    rng = np.random.default_rng(7)
    noise = rng.uniform(size=(400, 64)).astype("float32")
    _, mask = masking.random_masking(tf.constant(noise), 0.75)
    nearby_noise = rng.uniform(size=(400, 64)).astype("float32")
    candidates = masking.nearby_mask(mask, [8, 8], nearby_noise, 1.0).numpy()
    chosen = masking.nearby_mask(mask, [8, 8], nearby_noise, 0.3).numpy()
    assert np.all(chosen <= candidates)
    np.testing.assert_array_equal(chosen, candidates * (nearby_noise < 0.3))
    fraction = chosen.sum() / candidates.sum()
    assert abs(fraction - 0.3) < 0.03
