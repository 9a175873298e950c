"""Timing one training step of this project's models, shared by the step benchmarks.

`paper_config(name)` is a paper pretraining config (batch, token layout, Table 8 row),
`build_step(...)` compiles a model on in-memory synthetic tokens and returns a callable that
runs exactly one training step and waits for it, and `interleaved_medians` times competing
variants in turns (A B A B ...), so that a load change on a shared machine hits every variant
alike instead of whichever happened to run last.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time

# The paper's configs (DABS token layouts; Table 8 for the MetaMAE hyper-parameters).
PAPER_CONFIGS = {
    # 13 bands of 64x64 in 8x8 patches: 64 tokens of 8*8*13 = 832 values.
    "eurosat": dict(batch=64, num_tokens=64, token_grid=[8, 8], token_dim=832, inner_lr=0.1,
                    contrast_weight=1.0, decoder_depth=4, dropout=0.0, mask_ratio=0.85),
    # Log-mel spectrogram of 224x224 in 16x16 patches: 196 tokens of 256 values.
    "librispeech": dict(batch=64, num_tokens=196, token_grid=[14, 14], token_dim=256,
                        inner_lr=0.1, contrast_weight=1.0, decoder_depth=4, dropout=0.0,
                        mask_ratio=0.85),
    # 52 sensor channels over 320 steps in windows of 5: 64 tokens of 260 values.
    "pamap2": dict(batch=256, num_tokens=64, token_grid=[64], token_dim=260, inner_lr=0.5,
                   contrast_weight=1.0, decoder_depth=4, dropout=0.1, mask_ratio=0.85),
}

# (label, method, first_order), in the order the tables list them.
STEP_KINDS = (
    ("MAE", "mae", False),
    ("MetaMAE 2nd order", "metamae", False),
    ("MetaMAE 1st order", "metamae", True),
)


def paper_config(name: str, tiny: bool = False) -> dict:
    """A copy of `PAPER_CONFIGS[name]`; `tiny` shrinks the batch and widths for smoke tests."""
    config = dict(PAPER_CONFIGS[name])
    if tiny:
        config.update(batch=4, encoder_depth=1, embed_dim=16, encoder_heads=2,
                      encoder_mlp_dim=32, decoder_depth=1, decoder_dim=8, decoder_heads=2,
                      decoder_mlp_dim=16, projector_hidden_dim=32, projector_dim=8)
    return config


def keep_freed_memory() -> str:
    """Sets this process's malloc as `keras_metamae.train` does by default
    (`--keep_freed_memory`, keras_metamae/training/host_memory.py); returns what to write beside the
    figures."""
    from keras_metamae.training import host_memory

    if host_memory.keep_freed_memory():
        return "glibc malloc keeps freed memory (the trainer's default `--keep_freed_memory`)"
    return "the C library's malloc defaults (not glibc)"


def machine_line() -> str:
    """Machine, cores and the 1/5/15-minute load averages, for every table of figures."""
    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, load average {load} "
            f"(1/5/15 min), Python {platform.python_version()}")


def build_step(config: dict, method: str, first_order: bool, precision: str = "float32",
               jit_compile: bool = False, strategy=None, seed: int = 0):
    """Compiles a method (AdamW 1e-4, wd 1e-4, as the paper) on one synthetic batch that
    repeats, and returns `step()`: runs one training step and blocks until it is done.

    The first call traces (and with `jit_compile` compiles) the step: call it before timing.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_metamae import methods

    config = dict(config)
    batch = config.pop("batch")
    keras.mixed_precision.set_global_policy(
        "mixed_bfloat16" if precision == "bfloat16" else "float32")
    try:
        keras.utils.set_random_seed(seed)
        rng = np.random.default_rng(seed)
        tokens = rng.normal(size=(batch, config["num_tokens"], config["token_dim"]))
        ds = tf.data.Dataset.from_tensors({"tokens": tokens.astype("float32")}).repeat()
        settings = dict(config, first_order=first_order, seed=seed)
        if strategy is not None:
            with strategy.scope():
                model = methods.get(method).from_settings(**settings)
                model.compile(optimizer=keras.optimizers.AdamW(1e-4, weight_decay=1e-4),
                              jit_compile=jit_compile)
            ds = strategy.experimental_distribute_dataset(ds)
        else:
            model = methods.get(method).from_settings(**settings)
            model.compile(optimizer=keras.optimizers.AdamW(1e-4, weight_decay=1e-4),
                          jit_compile=jit_compile)
        # What `fit` does before its first step: under a strategy the optimizer's slots
        # cannot be created inside the replicated step.
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            model.build()
            model.optimizer.build(model.trainable_variables)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model.make_train_function()
    iterator = iter(ds)

    def step():
        logs = model.train_function(iterator)
        # Reading a value waits for the step (the runtime is asynchronous on GPUs).
        float(np.asarray(logs["loss"]).reshape(-1)[0])

    step.model = model
    step.batch = batch
    return step


def step_flops(step) -> float:
    """Floating-point operations of one training step of a `build_step` model: TensorFlow's
    static count (`tf.profiler` float_operation, matmuls and elementwise ops with a registered
    cost) over the traced `train_step` graph, the tapes' gradients included. Depends only on
    the config, never on the machine, so it says how much of a time ratio is inherent."""
    import tensorflow as tf
    from tensorflow.python.profiler import model_analyzer, option_builder

    from keras_metamae.training.build import set_xla_attention

    model = step.model
    shape = [model.num_tokens] if model.is_discrete else [model.num_tokens, model.token_dim]
    dtype = tf.int64 if model.is_discrete else tf.float32
    # The profiler does not count inside XLA-compiled functions: trace the attention core as
    # the TensorFlow ops it compiles (the same arithmetic), so attention's FLOPs are counted.
    # `build_step` models run with the default (compiled core), which is restored after.
    set_xla_attention(model, False)
    try:
        traced = tf.function(lambda tokens: model.train_step({"tokens": tokens}))
        graph = traced.get_concrete_function(
            tf.TensorSpec([step.batch, *shape], dtype)).graph
    finally:
        set_xla_attention(model, True)
    options = option_builder.ProfileOptionBuilder(
        option_builder.ProfileOptionBuilder.float_operation()).with_empty_output().build()
    return float(model_analyzer.profile(graph, options=options).total_float_ops)


def time_call(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved_medians(steps: dict, rounds: int, warmup: int = 1) -> dict:
    """`{name: median seconds}` of `rounds` calls of each callable in `steps`, in turns.

    Each variant first runs `warmup` untimed calls (tracing, compilation, allocator warm-up);
    then every round calls each variant once, in the same order."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            times[name].append(time_call(fn))
    return {name: statistics.median(ts) for name, ts in times.items()}
