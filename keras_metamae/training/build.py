"""The model a training run steps: its method compiled with AdamW, the learning-rate
schedule and the non-finite guard, every weight and optimizer slot created."""

from __future__ import annotations

import logging

from keras_metamae.config import TrainConfig


def set_xla_attention(model, enabled: bool) -> None:
    """`--xla_attention`: a run-time choice, not part of the architecture (the same weights and
    math either way), so it is set on the built layers rather than in the model's config."""
    from keras_metamae.models.layers import MultiHeadSelfAttention

    for layer in model._flatten_layers():
        if isinstance(layer, MultiHeadSelfAttention):
            layer.xla_core = bool(enabled)


def apply_host_settings(config: TrainConfig) -> bool:
    """`--keep_freed_memory`: this process's malloc keeps what it frees (for the rest of the
    process; keras_metamae/training/host_memory.py). True when it took effect."""
    if not config.keep_freed_memory:
        return False
    from keras_metamae.training import host_memory

    applied = host_memory.keep_freed_memory()
    logging.info("keep_freed_memory: %s", "glibc malloc keeps freed memory" if applied
                 else "not glibc: the C library's defaults stay")
    return applied


def build_model(config: TrainConfig, spec, strategy, total_steps: int):
    """The config's method on the spec's tokens, compiled under `strategy`."""
    import keras

    from keras_metamae.methods.nonfinite import NonFiniteGuard
    from keras_metamae.training.schedules import learning_rate_schedule
    from keras_metamae.training.strategy import resolve_jit

    with strategy.scope():
        model = config.make_model(spec)
        set_xla_attention(model, config.xla_attention)
        schedule = learning_rate_schedule(config.lr_schedule, config.learning_rate, total_steps,
                                          config.warmup_steps)
        adamw = keras.optimizers.AdamW(
            learning_rate=schedule,
            weight_decay=config.weight_decay,
            global_clipnorm=config.clip_norm or None,
        )
        # Skips (and counts) steps with a non-finite loss or gradient; float16 also needs
        # dynamic loss scaling, float32 and bfloat16 do not.
        optimizer = NonFiniteGuard(adamw, loss_scaling=config.mixed_precision == "float16")
        model.compile(optimizer=optimizer, jit_compile=resolve_jit(config.jit_compile, strategy))
    return model


def materialize(model, spec) -> None:
    """Creates every weight and optimizer slot, so checkpoints can be loaded into the model."""
    import numpy as np

    if spec.is_discrete:
        tokens = np.zeros((2, spec.num_tokens), "int64")
    else:
        tokens = np.zeros((2, spec.num_tokens, spec.token_dim), "float32")
    model(tokens, training=False)
    model.build_for_training(tokens)
    model.optimizer.build(model.trainable_variables)
