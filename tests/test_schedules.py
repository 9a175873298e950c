"""Learning-rate schedules: the paper's constant rate by default, warm-up + cosine on request."""

from __future__ import annotations

import math

import numpy as np
import pytest

from keras_metamae import config as config_lib


def _values(schedule, steps):
    return np.array([float(schedule(step)) for step in steps])


def test_default_recipe_is_adamw_at_a_constant_1e_4():
    """Paper Appendix A and the reference: AdamW, lr 1e-4, wd 1e-4, no warm-up, no schedule."""
    from keras_metamae.training.schedules import learning_rate_schedule

    for dataset in ("eurosat", "pamap2", "higgs", "genomics"):
        config = config_lib.resolve(dataset, {})
        assert (config.lr_schedule, config.learning_rate, config.weight_decay) == \
            ("constant", 1e-4, 1e-4), dataset
    schedule = learning_rate_schedule("constant", 1e-4, total_steps=100_000, warmup_steps=1000)
    np.testing.assert_allclose(_values(schedule, [0, 1, 999, 50_000, 99_999, 200_000]), 1e-4,
                               rtol=1e-7)


def test_warmup_cosine_is_linear_warmup_then_cosine_to_zero():
    """Keras' CosineDecay with warm-up gives peak * s / W for s <= W, then a cosine decay that
    reaches 0 at the last step. (The hand-written schedule it replaces was the same curve from
    step W on; during warm-up it ran one step ahead, peak * (s + 1) / W.)"""
    from keras_metamae.training.schedules import learning_rate_schedule

    peak, total, warmup = 1e-3, 100, 10
    schedule = learning_rate_schedule("warmup_cosine", peak, total, warmup)
    steps = np.arange(total + 5)
    progress = np.clip((steps - warmup) / (total - warmup), 0.0, 1.0)
    expected = np.where(steps <= warmup, peak * steps / warmup,
                        0.5 * peak * (1.0 + np.cos(math.pi * progress)))
    np.testing.assert_allclose(_values(schedule, steps), expected, rtol=1e-5, atol=1e-10)
    # Warm-up longer than the run: clipped so the peak is still reached.
    short = learning_rate_schedule("warmup_cosine", peak, total_steps=5, warmup_steps=50)
    assert float(short(4)) == pytest.approx(peak)


def test_both_schedules_leave_the_same_optimizer_variables():
    """No learning-rate variable in the optimizer (a float rate would be one, saved in the
    checkpoint and restored over a changed --learning_rate on resume), so a workdir resumes
    under either schedule and always at the configured rate."""
    import keras

    from keras_metamae.training.schedules import learning_rate_schedule

    paths = []
    for name in ("constant", "warmup_cosine"):
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="dense")],
                                 name="model")
        optimizer = keras.optimizers.AdamW(learning_rate_schedule(name, 1e-3, 100, 10))
        optimizer.build(model.trainable_variables)
        paths.append([v.path.split("/", 1)[1] for v in optimizer.variables])
    assert paths[0] == paths[1]
    assert not [p for p in paths[0] if "learning_rate" in p]


def test_digits_demo_keeps_warmup_cosine_and_flags_validate():
    assert config_lib.resolve("digits", {}).lr_schedule == "warmup_cosine"
    assert config_lib.resolve("digits", {"lr_schedule": "constant"}).lr_schedule == "constant"
    with pytest.raises(ValueError, match="--lr_schedule"):
        config_lib.resolve("eurosat", {"lr_schedule": "cosine"})
    with pytest.raises(ValueError, match="--warmup_steps"):
        config_lib.resolve("eurosat", {"warmup_steps": -1})
