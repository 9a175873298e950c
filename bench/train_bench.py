"""Training-step throughput: MAE vs MetaMAE (first/second order), XLA, float32 vs bfloat16,
and the tf.data reader alone. Writes its section of BENCHMARKS.md.

    python bench/train_bench.py                 # the paper's EuroSAT config (slow on a CPU)
    python bench/train_bench.py --quick         # batch 16 and a 4-layer encoder, for a laptop

Paper EuroSAT config: batch 64, 64 tokens of 832 values, 12-layer encoder (d=256), 4-layer
decoder (d=128). Steps are timed after warm-up (tracing, XLA compilation) with `model.fit` on
in-memory synthetic tokens, so the number is the model's step alone.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.markdown_section import replace_section  # noqa: E402
from keras_metamae.metamae import MetaMAE  # noqa: E402

EUROSAT = dict(num_tokens=64, token_grid=[8, 8], token_dim=832, decoder_depth=4,
               inner_lr=0.1, contrast_weight=1.0, mask_ratio=0.85)


class StepTimer(keras.callbacks.Callback):
    def __init__(self, warmup: int):
        super().__init__()
        self.warmup = warmup
        self.times: list[float] = []

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter())

    def seconds_per_step(self) -> float:
        timed = np.diff(self.times[self.warmup - 1:])
        return float(np.median(timed))


def time_model(method: str, first_order: bool, jit: bool, precision: str, batch: int,
               depth: int, steps: int, warmup: int) -> float:
    keras.mixed_precision.set_global_policy(
        "mixed_bfloat16" if precision == "bfloat16" else "float32")
    keras.utils.set_random_seed(0)
    model = MetaMAE(method=method, first_order=first_order, encoder_depth=depth, seed=0,
                    **EUROSAT)
    model.compile(optimizer=keras.optimizers.AdamW(1e-4, weight_decay=1e-4), jit_compile=jit)
    tokens = np.random.default_rng(0).normal(size=(batch, 64, 832)).astype("float32")
    ds = tf.data.Dataset.from_tensors({"tokens": tokens}).repeat()
    timer = StepTimer(warmup)
    model.fit(ds, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[timer])
    keras.mixed_precision.set_global_policy("float32")
    return timer.seconds_per_step()


def time_reader(batch: int, examples_per_class: int) -> float:
    """Examples/s of keras_metamae.data on a synthetic EuroSAT-format dataset."""
    from keras_metamae import data
    from pipeline import preprocess
    from tests.fixtures import make_eurosat

    with tempfile.TemporaryDirectory() as root:
        raw = make_eurosat.make_raw(root, per_class=examples_per_class)
        out = os.path.join(root, "out")
        result = preprocess.run(["--dataset", "eurosat", "--data_dir", raw, "--output_dir", out])
        ds = data.make_dataset(result.spec, result.version_dir, "train", batch, repeat=True)
        iterator = iter(ds)
        for _ in range(5):
            next(iterator)
        n = 50
        start = time.perf_counter()
        for _ in range(n):
            next(iterator)
        return n * batch / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="batch 16, 4-layer encoder")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "..",
                                                         "BENCHMARKS.md"))
    args = parser.parse_args()
    batch, depth = (16, 4) if args.quick else (64, 12)
    device = "GPU: " + tf.config.experimental.get_device_details(
        tf.config.list_physical_devices("GPU")[0]).get("device_name", "?") \
        if tf.config.list_physical_devices("GPU") else f"CPU ({os.cpu_count()} cores)"
    has_gpu = bool(tf.config.list_physical_devices("GPU"))

    runs = [("MAE", "mae", False, False, "float32"),
            ("MetaMAE first-order", "metamae", True, False, "float32"),
            ("MetaMAE second-order", "metamae", False, False, "float32"),
            ("MetaMAE second-order", "metamae", False, False, "bfloat16")]
    if has_gpu:  # XLA on a CPU compiles for minutes and is not what anyone trains with
        runs += [("MAE", "mae", False, True, "float32"),
                 ("MetaMAE second-order", "metamae", False, True, "float32")]
    rows, step_of = [], {}
    for name, method, first_order, jit, precision in runs:
        seconds = time_model(method, first_order, jit, precision, batch, depth, args.steps,
                             args.warmup)
        step_of[(name, jit, precision)] = seconds
        rows.append((name, "on" if jit else "off", precision, seconds))
        print(f"{name:<22} xla={jit!s:<5} {precision:<8} {seconds * 1000:8.1f} ms/step "
              f"{batch / seconds:8.1f} examples/s", flush=True)
    reader = time_reader(batch, 40)
    mae = step_of[("MAE", False, "float32")]
    meta = step_of[("MetaMAE second-order", False, "float32")]
    consumed = batch / meta

    lines = [
        "## Training step (`python bench/train_bench.py`)",
        "",
        f"Training step, batch {batch}, 64 tokens of 832, encoder depth {depth}, decoder depth 4 "
        f"({'quick config' if args.quick else 'paper EuroSAT config'}); {device}, "
        f"{platform.python_version()}, TF {tf.__version__}, Keras {keras.__version__}. "
        f"Median of {args.steps} steps after {args.warmup} warm-up steps."
        + ("" if has_gpu else " XLA rows are measured on GPUs only (on a CPU, compiling the "
                              "second-order graph takes longer than a short run)."),
        "",
        "| model | XLA | precision | ms/step | steps/s | examples/s |",
        "|---|---|---|---:|---:|---:|",
    ]
    for name, jit, precision, seconds in rows:
        lines.append(f"| {name} | {jit} | {precision} | {seconds * 1000:.1f} | "
                     f"{1 / seconds:.2f} | {batch / seconds:.1f} |")
    lines += [
        "",
        f"- MetaMAE (second order) / MAE step time: **{meta / mae:.2f}×** "
        f"(target ≤ 1.5×; the paper reports 1.4×).",
        f"- tf.data reader alone: **{reader:,.0f} examples/s**, "
        f"{reader / consumed:.0f}× what the MetaMAE step consumes ({consumed:.1f} examples/s; "
        f"target ≥ 10×).",
    ]
    replace_section(args.output, "train_bench", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
