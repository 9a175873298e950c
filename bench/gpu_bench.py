"""GPU training-step benchmark: `make bench-gpu` (or `python bench/gpu_bench.py`).

Times MAE, MetaMAE second order, MetaMAE first order and the DABS baselines (DABS-2.0 MAE,
e-Mix, ShED, Capri) at three paper configs (EuroSAT:
batch 64, 64 tokens of 832; LibriSpeech: batch 64, 196 tokens of 256; PAMAP2: batch 256, 64
tokens of 260), float32 vs mixed bfloat16, whole-step XLA off and on (one GPU; the attention
core is XLA-compiled in both), and MirroredStrategy over all visible GPUs (whole-step XLA off:
it is never forced under a strategy). Each cell reports steps/s,
examples/s, the compile (first-step) time and the peak GPU memory
(`tf.config.experimental.get_memory_info`); the tf.data reader's examples/s on a synthetic
EuroSAT dataset is given next to them, with how many times what each step consumes it is.

Built to run unattended in under 8 minutes on one GPU: every cell gets at most `--cell_cap_s`
seconds (a cell whose first step alone takes longer is skipped with its compile time), cells
are skipped once `--budget_s` is spent, a watchdog ends the run at `--hard_limit_s` with what
it has, and the table is rewritten after every cell. Exits 2 on a machine without a GPU;
`--allow_cpu --tiny` runs a tiny version on the CPU as a smoke test.

    make bench-gpu                                   # writes the gpu_bench section of BENCHMARKS.md
    python bench/gpu_bench.py --configs eurosat --kinds mae,meta2 --precisions float32 --xla on
    python bench/gpu_bench.py --allow_cpu --tiny --output /tmp/gpu_bench.md
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SECTION = "gpu_bench"
KIND_KEYS = {"mae": ("MAE", "mae", False), "meta2": ("MetaMAE 2nd order", "metamae", False),
             "meta1": ("MetaMAE 1st order", "metamae", True),
             # The paper's baselines from DABS (keras_metamae/methods/).
             "dabs-mae": ("MAE (DABS 2.0)", "dabs-mae", False), "emix": ("e-Mix", "emix", False),
             "shed": ("ShED", "shed", False), "capri": ("Capri", "capri", False)}


def gpu_names() -> list[str]:
    import tensorflow as tf

    names = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        names.append(details.get("device_name", device.name))
    return names


def plan_cells(args, num_gpus: int) -> list[dict]:
    """Cells in the order they run: the most asked-for first, so a budget cut drops the rest."""
    cells = []
    variants = [(precision, xla) for xla in args.xla for precision in args.precisions]
    for precision, xla in variants:
        for config in args.configs:
            for kind in args.kinds:
                cells.append(dict(config=config, kind=kind, precision=precision, xla=xla,
                                  replicas=1))
    if num_gpus > 1:
        for precision in args.precisions:
            for config in args.configs:
                for kind in args.kinds:
                    cells.append(dict(config=config, kind=kind, precision=precision,
                                      xla=False, replicas=num_gpus))
    return cells


def memory_device(on_gpu: bool) -> str | None:
    return "GPU:0" if on_gpu else None


def run_cell(cell: dict, args, on_gpu: bool) -> dict:
    """Builds, compiles (first step, timed) and times one cell; frees it afterwards."""
    import keras
    import tensorflow as tf

    from bench import step_timing

    _, method, first_order = KIND_KEYS[cell["kind"]]
    config = step_timing.paper_config(cell["config"], tiny=args.tiny)
    strategy = None
    if cell["replicas"] > 1:
        strategy = tf.distribute.MirroredStrategy()  # the paper's batch is the global one
    device = memory_device(on_gpu)
    if device:
        tf.config.experimental.reset_memory_stats(device)
    result = dict(cell, batch=config["batch"])
    try:
        step = step_timing.build_step(config, method, first_order, cell["precision"],
                                      jit_compile=cell["xla"], strategy=strategy)
        result["compile_s"] = step_timing.time_call(step)
        if result["compile_s"] > args.cell_cap_s:
            result["skipped"] = (f"first step (tracing/compilation) took "
                                 f"{result['compile_s']:.0f} s > cap {args.cell_cap_s:.0f} s")
            return result
        step()  # one more untimed step: allocator and autotuning settle
        times, cell_start = [], time.perf_counter()
        while len(times) < args.steps and (
                time.perf_counter() - cell_start + result["compile_s"] < args.cell_cap_s):
            times.append(step_timing.time_call(step))
        times.sort()
        seconds = times[len(times) // 2]
        result.update(steps=len(times), seconds=seconds, steps_per_s=1 / seconds,
                      examples_per_s=config["batch"] / seconds)
        if device:
            result["peak_mb"] = tf.config.experimental.get_memory_info(device)["peak"] / 2**20
    except Exception as error:  # noqa: BLE001 - an OOM or an XLA failure is a result too
        result["skipped"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
    finally:
        keras.backend.clear_session()
        gc.collect()
    return result


def reader_rate(args) -> float | None:
    """Examples/s of the tf.data reader on a synthetic EuroSAT dataset (train_bench's)."""
    from bench.train_bench import time_reader

    batch = 8 if args.tiny else 64
    return time_reader(batch, 2 if args.tiny else 40)


def render(results: list[dict], args, devices: str, reader: float | None, started: float,
           note: str = "") -> str:
    import keras
    import tensorflow as tf

    from bench import step_timing

    lines = [
        "## GPU training step (`make bench-gpu`, `python bench/gpu_bench.py`)",
        "",
        f"{devices}; TF {tf.__version__}, Keras {keras.__version__}; "
        f"{step_timing.machine_line()}; {args.malloc}. Median of up to {args.steps} steps per cell after the "
        f"first (compile) step and one more untimed step; cells are capped at "
        f"{args.cell_cap_s:.0f} s each and {args.budget_s:.0f} s in all "
        f"({time.perf_counter() - started:.0f} s used)."
        + (" **Tiny smoke-test config, not the paper's.**" if args.tiny else ""),
        "",
    ]
    if reader is not None:
        lines += [f"tf.data reader alone (synthetic EuroSAT, `keras_metamae.data`): "
                  f"**{reader:,.0f} examples/s**; the last column is that rate over what the "
                  f"step consumes (EuroSAT rows; target ≥ 10×).", ""]
    lines += [
        "| config | batch | step | precision | XLA | replicas | compile s | ms/step | "
        "steps/s | examples/s | peak GPU MB | reader ÷ step |",
        "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        head = (f"| {r['config']} | {r['batch']} | {KIND_KEYS[r['kind']][0]} | {r['precision']} "
                f"| {'on' if r['xla'] else 'off'} | {r['replicas']} | "
                f"{r['compile_s']:.1f} |" if "compile_s" in r else
                f"| {r['config']} | {r['batch']} | {KIND_KEYS[r['kind']][0]} | {r['precision']} "
                f"| {'on' if r['xla'] else 'off'} | {r['replicas']} | – |")
        if "seconds" in r:
            peak = f"{r['peak_mb']:,.0f}" if "peak_mb" in r else "–"
            ratio = (f"{reader / r['examples_per_s']:.1f}×"
                     if reader and r["config"] == "eurosat" else "–")
            lines.append(f"{head} {r['seconds'] * 1000:.1f} | {r['steps_per_s']:.2f} | "
                         f"{r['examples_per_s']:,.0f} | {peak} | {ratio} |")
        else:
            lines.append(f"{head} skipped: {r.get('skipped', '?')} | | | | |")
    if note:
        lines += ["", note]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="eurosat,librispeech,pamap2")
    parser.add_argument("--kinds", default="mae,meta2,meta1,dabs-mae,emix,shed,capri",
                        help="of: " + ", ".join(KIND_KEYS))
    parser.add_argument("--precisions", default="float32,bfloat16")
    parser.add_argument("--xla", default="off,on", help="off, on or both (one GPU only)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per cell (at most)")
    parser.add_argument("--cell_cap_s", type=float, default=40.0)
    parser.add_argument("--budget_s", type=float, default=400.0,
                        help="no new cell starts after this many seconds")
    parser.add_argument("--hard_limit_s", type=float, default=470.0,
                        help="the watchdog writes what it has and exits after this long")
    parser.add_argument("--skip_reader", action="store_true")
    parser.add_argument("--allow_cpu", action="store_true",
                        help="run without a GPU (a smoke test; use with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="tiny models and batches")
    parser.add_argument("--output", default=None,
                        help="markdown file whose gpu_bench section is rewritten (default: "
                             "BENCHMARKS.md on a GPU, nothing with --allow_cpu)")
    args = parser.parse_args(argv)
    args.configs = [c for c in args.configs.split(",") if c]
    args.kinds = [k for k in args.kinds.split(",") if k]
    args.precisions = [p for p in args.precisions.split(",") if p]
    args.xla = [{"off": False, "on": True}[x] for x in args.xla.split(",") if x]
    started = time.perf_counter()

    import tensorflow as tf

    from bench import step_timing
    from bench.markdown_section import replace_section

    args.malloc = step_timing.keep_freed_memory()

    for config in args.configs:
        if config not in step_timing.PAPER_CONFIGS:
            parser.error(f"unknown config {config!r}; expected {list(step_timing.PAPER_CONFIGS)}")
    for kind in args.kinds:
        if kind not in KIND_KEYS:
            parser.error(f"unknown kind {kind!r}; expected {list(KIND_KEYS)}")
    names = gpu_names()
    if not names and not args.allow_cpu:
        print("gpu_bench: no GPU visible to TensorFlow "
              f"(tf.config.list_physical_devices('GPU') is empty; TF {tf.__version__}). "
              "Install the GPU build (BUILD.md: tensorflow[and-cuda]) on a machine with an "
              "NVIDIA GPU, or pass --allow_cpu --tiny for a CPU smoke test.", file=sys.stderr)
        return 2
    for device in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(device, True)  # honest peak figures
    output = args.output or (None if not names else os.path.join(ROOT, "BENCHMARKS.md"))
    devices = (f"{len(names)} GPU(s): {', '.join(sorted(set(names)))}" if names
               else f"CPU only ({os.cpu_count()} cores)")

    results, reader = [], None
    lock = threading.Lock()

    def write(note=""):
        text = render(results, args, devices, reader, started, note)
        if output:
            replace_section(output, SECTION, text)
        return text

    def watchdog():
        with lock:
            print(write(f"The run was stopped by the watchdog after {args.hard_limit_s:.0f} s; "
                        f"the cells missing above did not run."), flush=True)
        os._exit(3)

    timer = threading.Timer(args.hard_limit_s, watchdog)
    timer.daemon = True
    timer.start()

    if not args.skip_reader:
        reader = reader_rate(args)
        print(f"reader: {reader:,.0f} examples/s", flush=True)
    for cell in plan_cells(args, len(names)):
        if time.perf_counter() - started > args.budget_s:
            result = dict(cell, batch=step_timing.paper_config(cell["config"], args.tiny)["batch"],
                          skipped=f"budget of {args.budget_s:.0f} s spent")
        else:
            result = run_cell(cell, args, on_gpu=bool(names))
        with lock:
            results.append(result)
            write()
        shown = (f"{result['seconds'] * 1000:.1f} ms/step" if "seconds" in result
                 else "skipped: " + result["skipped"])
        print(f"{cell['config']:<12} {cell['kind']:<6} {cell['precision']:<9} "
              f"xla={'on' if cell['xla'] else 'off':<3} replicas={cell['replicas']} {shown}",
              flush=True)
    timer.cancel()
    with lock:
        print(write())
    return 0


if __name__ == "__main__":
    sys.exit(main())
