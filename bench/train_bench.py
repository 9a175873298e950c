"""Training-step throughput: MAE vs MetaMAE (first/second order) vs the DABS baselines (DABS-2.0
MAE, e-Mix, ShED, Capri), XLA, float32 vs bfloat16, and the tf.data reader alone. Writes its section of BENCHMARKS.md.

    python bench/train_bench.py                 # the paper's EuroSAT config (slow on a CPU)
    python bench/train_bench.py --quick         # batch 16 and a 4-layer encoder, for a laptop
    python bench/train_bench.py --config mscoco # the largest sequence: 196 + 32 tokens, batch 64

`--config mscoco` is the paper's vision-language setup (Table 16; Table 8 mscoco row): one
sequence of 196 image tokens of 768 values (224 x 224, 16 x 16 patches) and 32 WordPiece
tokens (vocabulary 30,522), batch 64, 12-layer encoder, 2-layer decoder. It prints ms/step
and the peak memory (GPU: the allocator's peak; CPU: the process's peak RSS) and writes its
own BENCHMARKS.md section only with `--publish`.

Paper EuroSAT config: batch 64, 64 tokens of 832 values, 12-layer encoder (d=256), 4-layer
decoder (d=128). Steps are timed after warm-up (tracing, XLA compilation) with `fit`'s train
function on in-memory synthetic tokens, so the number is the model's step alone. The variants
run in turns (one step of each, again and again: `bench/step_timing.py`), so that the load of
a shared machine weighs on all of them alike; the load average is given with the figures.
`--xla` adds the XLA rows on a CPU (their first-step column is the compile time).
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

from bench import step_timing  # noqa: E402
from bench.markdown_section import replace_section  # noqa: E402
from keras_metamae import methods  # noqa: E402

EUROSAT = dict(num_tokens=64, token_grid=[8, 8], token_dim=832, decoder_depth=4,
               inner_lr=0.1, contrast_weight=1.0, mask_ratio=0.85)
MSCOCO_IMAGE, MSCOCO_TEXT, MSCOCO_VOCAB = 196, 32, 30522
MSCOCO = dict(num_tokens=MSCOCO_IMAGE + MSCOCO_TEXT, token_grid=[MSCOCO_IMAGE + MSCOCO_TEXT],
              token_dim=768, decoder_depth=2, inner_lr=0.5, contrast_weight=0.1, mask_ratio=0.5,
              segments=[
                  {"name": "image", "kind": "continuous", "num_tokens": MSCOCO_IMAGE,
                   "token_dim": 768, "token_grid": [14, 14]},
                  {"name": "text", "kind": "discrete", "num_tokens": MSCOCO_TEXT,
                   "vocab_size": MSCOCO_VOCAB, "token_grid": [MSCOCO_TEXT]},
              ])


BASELINES = (("MAE (DABS 2.0)", "dabs-mae"), ("e-Mix", "emix"), ("ShED", "shed"),
             ("Capri", "capri"))


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


def synthetic_tokens(config: dict, batch: int) -> np.ndarray:
    """A packed batch: continuous rows of normal noise, discrete rows an id in column 0."""
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(batch, config["num_tokens"], config["token_dim"])).astype("float32")
    start = 0
    for segment in config.get("segments", []):
        n = segment["num_tokens"]
        if segment["kind"] == "discrete":
            tokens[:, start:start + n, :] = 0.0
            tokens[:, start:start + n, 0] = rng.integers(0, segment["vocab_size"], size=(batch, n))
        start += n
    return tokens


def time_model(method: str, first_order: bool, jit: bool, precision: str, batch: int,
               depth: int, steps: int, warmup: int, config: dict = EUROSAT) -> float:
    keras.mixed_precision.set_global_policy(
        "mixed_bfloat16" if precision == "bfloat16" else "float32")
    keras.utils.set_random_seed(0)
    model = methods.get(method).from_settings(first_order=first_order, encoder_depth=depth,
                                              seed=0, **config)
    model.compile(optimizer=keras.optimizers.AdamW(1e-4, weight_decay=1e-4), jit_compile=jit)
    tokens = synthetic_tokens(config, batch)
    ds = tf.data.Dataset.from_tensors({"tokens": tokens}).repeat()
    timer = StepTimer(warmup)
    model.fit(ds, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[timer])
    keras.mixed_precision.set_global_policy("float32")
    return timer.seconds_per_step()


def time_reader(batch: int, examples_per_class: int) -> float:
    """Examples/s of keras_metamae.data on a synthetic EuroSAT-format dataset."""
    return reader_rates(batch, examples_per_class)[0]


def reader_rates(batch: int, examples_per_class: int) -> tuple[float, float]:
    """(examples/s, examples per CPU-second) of the training reader on a synthetic
    EuroSAT-format dataset (the measurement of bench/reader_bench.py)."""
    from bench.reader_bench import reader_rate
    from pipeline import preprocess
    from tests.fixtures import make_eurosat

    with tempfile.TemporaryDirectory() as root:
        raw = make_eurosat.make_raw(root, per_class=examples_per_class)
        out = os.path.join(root, "out")
        result = preprocess.run(["--dataset", "eurosat", "--raw_data_dir", raw, "--data_dir", out])
        # The split pretraining reads (EuroSAT's protocol names it "pretrain").
        split = result.spec.protocol_splits("pretrain")
        return reader_rate(result.spec, result.version_dir, split, batch)


def peak_memory_bytes() -> tuple[str, int]:
    """(what was measured, bytes): the GPU allocator's peak, else this process's peak RSS."""
    if tf.config.list_physical_devices("GPU"):
        return "GPU peak", int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
    import resource

    return "process peak RSS", int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def run_mscoco(args) -> None:
    """MetaMAE (second order) and MAE on the 196 + 32-token sequence at batch 64."""
    batch, depth = 64, 12
    lines = [
        "## Training step, vision-language (`python bench/train_bench.py --config mscoco`)",
        "",
        f"Batch {batch}, one sequence of {MSCOCO_IMAGE} image tokens of 768 + {MSCOCO_TEXT} "
        f"WordPiece tokens (vocabulary {MSCOCO_VOCAB:,}), encoder depth {depth}, decoder "
        f"depth 2 (paper Table 16, Table 8 mscoco row); {device_name()}, TF {tf.__version__}. "
        f"Median of {args.steps} steps after {args.warmup} warm-up steps.",
        "",
        "| model | ms/step | examples/s | peak memory (GiB) |",
        "|---|---:|---:|---:|",
    ]
    for name, method in (("MetaMAE second-order", "metamae"), ("MAE", "mae")):
        if tf.config.list_physical_devices("GPU"):
            tf.config.experimental.reset_memory_stats("GPU:0")
        seconds = time_model(method, False, False, "float32", batch, depth, args.steps,
                             args.warmup, MSCOCO)
        what, peak = peak_memory_bytes()
        print(f"{name:<22} {seconds * 1000:8.1f} ms/step {batch / seconds:8.1f} examples/s "
              f"{what} {peak / 2**30:.2f} GiB", flush=True)
        lines.append(f"| {name} | {seconds * 1000:.1f} | {batch / seconds:.1f} | "
                     f"{peak / 2**30:.2f} ({what}) |")
    if args.publish:
        replace_section(args.output, "train_bench_mscoco", "\n".join(lines))
    print("\n".join(lines))


def device_name() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return "GPU: " + tf.config.experimental.get_device_details(gpus[0]).get("device_name", "?")
    return f"CPU ({os.cpu_count()} cores)"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="batch 16, 4-layer encoder")
    parser.add_argument("--config", choices=("eurosat", "mscoco"), default="eurosat",
                        help="eurosat: the paper's EuroSAT table (default); mscoco: the "
                             "196 + 32-token batch-64 step, ms/step and peak memory")
    parser.add_argument("--publish", action="store_true",
                        help="--config mscoco: also write its BENCHMARKS.md section")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--xla", action="store_true",
                        help="XLA rows on a CPU too (on a GPU they always run)")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "..",
                                                         "BENCHMARKS.md"))
    args = parser.parse_args()
    if args.config == "mscoco":
        run_mscoco(args)
        return
    malloc = step_timing.keep_freed_memory()
    batch, depth = (16, 4) if args.quick else (64, 12)
    device = "GPU: " + tf.config.experimental.get_device_details(
        tf.config.list_physical_devices("GPU")[0]).get("device_name", "?") \
        if tf.config.list_physical_devices("GPU") else f"CPU ({os.cpu_count()} cores)"
    has_gpu = bool(tf.config.list_physical_devices("GPU"))

    runs = [("MAE", "mae", False, False, "float32"),
            ("MetaMAE first-order", "metamae", True, False, "float32"),
            ("MetaMAE second-order", "metamae", False, False, "float32"),
            ("MetaMAE second-order", "metamae", False, False, "bfloat16")]
    # The paper's other columns (the DABS baselines), in the same turns.
    runs += [(name, method, False, False, "float32") for name, method in BASELINES]
    if has_gpu or args.xla:  # on a CPU, XLA compiles the second-order graph for minutes
        runs += [("MAE", "mae", False, True, "float32"),
                 ("MetaMAE second-order", "metamae", False, True, "float32")]
    config = dict(step_timing.paper_config("eurosat"), batch=batch, encoder_depth=depth)
    steps, first_step = {}, {}
    for name, method, first_order, jit, precision in runs:
        key = (name, jit, precision)
        steps[key] = step_timing.build_step(config, method, first_order, precision, jit)
        first_step[key] = step_timing.time_call(steps[key])  # tracing (+ XLA compilation)
    flops = {key: step_timing.step_flops(step) for key, step in steps.items()
             if key[2] == "float32" and not key[1]}
    load_start = os.getloadavg()
    step_of = step_timing.interleaved_medians(steps, rounds=args.steps, warmup=args.warmup)
    rows = []
    for name, method, first_order, jit, precision in runs:
        seconds = step_of[(name, jit, precision)]
        rows.append((name, "on" if jit else "off", precision, seconds,
                     first_step[(name, jit, precision)]))
        print(f"{name:<22} xla={jit!s:<5} {precision:<8} {seconds * 1000:8.1f} ms/step "
              f"{batch / seconds:8.1f} examples/s", flush=True)
    reader, reader_per_cpu = reader_rates(batch, 40)
    mae = step_of[("MAE", False, "float32")]
    meta = step_of[("MetaMAE second-order", False, "float32")]
    consumed = batch / meta

    lines = [
        "## Training step (`python bench/train_bench.py`)",
        "",
        f"Training step, batch {batch}, 64 tokens of 832, encoder depth {depth}, decoder depth 4 "
        f"({'quick config' if args.quick else 'paper EuroSAT config'}); {device}, "
        f"{platform.python_version()}, TF {tf.__version__}, Keras {keras.__version__}. "
        f"Median of {args.steps} steps after {args.warmup} warm-up steps, the variants timed "
        f"in turns; load average {'/'.join(f'{x:.2f}' for x in load_start)} at the start, "
        f"{'/'.join(f'{x:.2f}' for x in os.getloadavg())} at the end (1/5/15 min). "
        "XLA: the whole step compiled (`jit_compile`); the attention core is XLA-compiled in "
        f"every row (`MultiHeadSelfAttention(xla_core=True)`); {malloc}."
        + ("" if has_gpu or args.xla else
           " XLA rows are measured on GPUs only (on a CPU, compiling the second-order graph "
           "takes longer than a short run; `--xla` adds them)."),
        "",
        "| model | XLA | precision | first step s | ms/step | steps/s | examples/s | "
        "GFLOP/step | GFLOP/s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, jit, precision, seconds, first in rows:
        gflop = flops.get((name, jit == "on", precision), 0.0) / 1e9
        rate = f"{gflop:.1f} | {gflop / seconds:.0f}" if gflop else "| "
        lines.append(f"| {name} | {jit} | {precision} | {first:.1f} | {seconds * 1000:.1f} | "
                     f"{1 / seconds:.2f} | {batch / seconds:.1f} | {rate} |")
    work = flops[("MetaMAE second-order", False, "float32")] / flops[("MAE", False, "float32")]
    lines += [
        "",
        f"- MetaMAE (second order) / MAE step time: **{meta / mae:.2f}×** "
        f"(target ≤ 1.5×; the paper reports 1.4×); the step's arithmetic alone is "
        f"{work:.2f}× MAE's (GFLOP: TensorFlow's static count of the traced step).",
        f"- tf.data reader alone: **{reader:,.0f} examples/s** ({reader_per_cpu:,.0f} per "
        f"CPU-second: `python -m bench.reader_bench` compares shard formats), "
        f"{reader / consumed:.0f}× what the MetaMAE step consumes ({consumed:.1f} examples/s; "
        f"target ≥ 10×).",
        "- The DABS baselines against MAE: " + ", ".join(
            f"{name} {step_of[(name, False, 'float32')] / mae:.2f}×" for name, _ in BASELINES)
        + ". They encode all 64 tokens (the masked ones zeroed, shuffled or mixed), where MAE "
        "and MetaMAE encode the visible 15% and decode; e-Mix encodes two views.",
    ]
    replace_section(args.output, "train_bench", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
