"""This project's training step next to the reference PyTorch code's, on the same CPU.

    python bench/compare_reference.py --reference_dir ~/src/MetaMAE \\
        --torch_python /tmp/torchvenv/bin/python [--rounds 5] [--output BENCHMARKS.md]

Paper EuroSAT config (batch 64, 64 tokens of 832 = 13 bands of 64x64 in 8x8 patches, encoder
12x256 with 8 heads, decoder 4x128 with 4 heads, MLP ratio 2, mask ratio 0.85, AdamW 1e-4):
MAE, MetaMAE second order and MetaMAE first order. Both implementations run in turns, step by
step (ours, reference, ours, reference, ...), so that a load change on a shared machine hits
both alike; the table gives the median of `--rounds` steps of each after `--warmup` untimed
ones, the versions, the cores and the load average.

Installs nothing. The reference (alinlab/MetaMAE, PyTorch, no licence) is never copied into
this repository: its `models.py` is imported from `--reference_dir` by a worker process run
with `--torch_python` (a Python with `torch` and `timm`; default: this Python). The worker
talks JSON lines over its stdin/stdout and times its own steps. timm's fused attention is
turned off in the reference model, because PyTorch has no double backward for it (the
second-order step needs one); the MAE and first-order rows use the same model for a like
comparison. Exits 2, saying what is missing, without `--reference_dir`/models.py, torch or
timm.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "compare_reference"

# The reference's constructor arguments for the paper EuroSAT config (its `get_model` flags).
REFERENCE_EUROSAT = dict(
    n_modality=1, input_shape=(13, 64, 64), patch_size=(8, 8), embed_dim_enc=256,
    embed_dim_dec=128, num_layer_enc=12, num_layer_dec=4, num_head_enc=8, num_head_dec=4,
    dropout=0.0, mask_ratio=0.85,
)
REFERENCE_META = dict(inner_lr=0.1, reg_weight=1.0, s_ratio=0.1)
BATCH = 64
KINDS = {  # key -> (row label, method, first_order)
    "mae": ("MAE", "mae", False),
    "meta2": ("MetaMAE, second order", "metamae", False),
    "meta1": ("MetaMAE, first order", "metamae", True),
}

_PROBE = ("import importlib.util, json, sys; "
          "print(json.dumps({m: importlib.util.find_spec(m) is not None "
          "for m in ('torch', 'timm')}))")


# === what is missing ===
def missing_requirements(reference_dir: str | None, torch_python: str) -> list[str]:
    """Human-readable list of what this comparison needs and does not have (empty: ready)."""
    missing = []
    if not reference_dir:
        missing.append("--reference_dir: a checkout of the reference code "
                       "(github.com/alinlab/MetaMAE) whose models.py this script imports")
    elif not os.path.isfile(os.path.join(reference_dir, "models.py")):
        missing.append(f"models.py in --reference_dir {reference_dir} (the reference code's "
                       f"model file)")
    try:
        probe = subprocess.run([torch_python, "-c", _PROBE], capture_output=True, text=True,
                               timeout=120)
        found = json.loads(probe.stdout.strip().splitlines()[-1])
    except FileNotFoundError:
        missing.append(f"the Python given by --torch_python: {torch_python} does not exist")
        return missing
    except (subprocess.SubprocessError, ValueError, IndexError):
        missing.append(f"a working --torch_python: {torch_python} did not run the import check")
        return missing
    for module in ("torch", "timm"):
        if not found.get(module):
            missing.append(f"{module} in {torch_python} (e.g. `python -m venv /tmp/torchvenv && "
                           f"/tmp/torchvenv/bin/pip install torch timm==0.6.13`, then "
                           f"--torch_python /tmp/torchvenv/bin/python)")
    return missing


# === the PyTorch side (runs in the worker process; imports no TensorFlow) ===
def _worker(reference_dir: str, threads: int) -> None:
    import timm
    import torch

    import numpy as np

    torch.set_num_threads(threads)
    # The same malloc settings as our side (keras_metamae/training/host_memory.py imports no TensorFlow).
    sys.path.insert(0, ROOT)
    from keras_metamae.training import host_memory

    host_memory.keep_freed_memory()
    # The reference builds its position table with `np.float`, which NumPy 1.24 removed; the
    # alias meant the builtin float.
    if "float" not in np.__dict__:
        np.float = float
    sys.path.insert(0, os.path.abspath(reference_dir))
    import models  # the reference's models.py, from the user's path

    steps = {}

    def build(method, first_order):
        torch.manual_seed(0)
        if method == "mae":
            model = models.MAE(**REFERENCE_EUROSAT)
        else:
            model = models.MetaMAE(**REFERENCE_EUROSAT, **REFERENCE_META,
                                   use_first_order=first_order)
        for module in model.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = False  # no double backward for the fused kernel
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                      lr=1e-4, weight_decay=1e-4)
        images = torch.randn(BATCH, *REFERENCE_EUROSAT["input_shape"])

        def step():
            optimizer.zero_grad(set_to_none=True)
            loss = model((images, None))["loss"]
            loss.backward()
            optimizer.step()

        return step

    out = sys.stdout
    sys.stdout = sys.stderr  # anything the reference prints must not break the protocol
    for line in sys.stdin:
        request = json.loads(line)
        if request["cmd"] == "versions":
            reply = {"torch": torch.__version__, "timm": timm.__version__,
                     "threads": torch.get_num_threads()}
        elif request["cmd"] == "build":
            steps[request["kind"]] = build(*KINDS[request["kind"]][1:])
            reply = {"ok": True}
        elif request["cmd"] == "step":
            start = time.perf_counter()
            steps[request["kind"]]()
            reply = {"seconds": time.perf_counter() - start}
        else:
            break
        out.write(json.dumps(reply) + "\n")
        out.flush()


class ReferenceWorker:
    """The reference implementation in a `--torch_python` process, one request at a time."""

    def __init__(self, torch_python: str, reference_dir: str, threads: int):
        self.process = subprocess.Popen(
            [torch_python, os.path.abspath(__file__), "--worker", "--reference_dir",
             reference_dir, "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the reference worker exited (its error is above)")
        return json.loads(line)

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)


# === the comparison ===
def compare(args) -> tuple[dict, dict, dict, dict]:
    """Medians `{kind: seconds}` of ours and of the reference, the versions, and
    `{kind: FLOPs}` of our step (TensorFlow's static count)."""
    import statistics

    from bench import step_timing

    worker = ReferenceWorker(args.torch_python, args.reference_dir, args.threads)
    try:
        versions = worker.ask(cmd="versions")
        config = step_timing.paper_config("eurosat")
        ours_steps = {}
        for kind in args.kinds:
            _, method, first_order = KINDS[kind]
            ours_steps[kind] = step_timing.build_step(config, method, first_order)
            worker.ask(cmd="build", kind=kind)
        flops = {kind: step_timing.step_flops(ours_steps[kind]) for kind in args.kinds}
        for kind in args.kinds:  # tracing, allocator warm-up
            for _ in range(args.warmup):
                ours_steps[kind]()
                worker.ask(cmd="step", kind=kind)
        ours = {kind: [] for kind in args.kinds}
        reference = {kind: [] for kind in args.kinds}
        for r in range(args.rounds):
            for kind in args.kinds:
                ours[kind].append(step_timing.time_call(ours_steps[kind]))
                reference[kind].append(worker.ask(cmd="step", kind=kind)["seconds"])
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{k}: ours {ours[k][-1]:.3f} s, reference {reference[k][-1]:.3f} s"
                for k in args.kinds), flush=True)
    finally:
        worker.close()
    median = lambda d: {k: statistics.median(v) for k, v in d.items()}  # noqa: E731
    return median(ours), median(reference), versions, flops


def table(ours: dict, reference: dict, versions: dict, args, load_start: str,
          flops: dict | None = None) -> str:
    import keras
    import tensorflow as tf

    from bench import step_timing

    lines = [
        "## This project vs the reference PyTorch code (`python bench/compare_reference.py`)",
        "",
        f"Paper EuroSAT config: batch {BATCH}, 64 tokens of 832, encoder 12x256, decoder "
        f"4x128, mask ratio 0.85; median of {args.rounds} steps each after {args.warmup} "
        f"warm-up steps, the two implementations timed in turns (ours, reference, ours, ...) "
        f"in one run. Ours: `fit`'s train function, TF {tf.__version__}, Keras "
        f"{keras.__version__}, whole-step XLA off (the attention core XLA-compiled, "
        f"`MultiHeadSelfAttention(xla_core=True)`). Reference: alinlab/MetaMAE `models.py`, torch "
        f"{versions['torch']} ({versions['threads']} threads), timm {versions['timm']}, fused "
        f"attention off (no double backward). Both processes: {args.malloc}. "
        f"{step_timing.machine_line()} at the end; {load_start} at the start.",
        "",
        "| step | reference PyTorch | this project | ratio | GFLOP per step | ours GFLOP/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    flops = flops or {}
    for kind in args.kinds:
        gflop = flops.get(kind, 0.0) / 1e9
        lines.append(f"| {KINDS[kind][0]} | {reference[kind]:.3f} s | {ours[kind]:.3f} s | "
                     f"{ours[kind] / reference[kind]:.2f}× | {gflop:.1f} | "
                     f"{gflop / ours[kind]:.0f} |")
    if "mae" in ours:
        lines.append("")
        for kind in args.kinds:
            if kind != "mae":
                work = (f"; the step's FLOPs {flops[kind] / flops['mae']:.2f}× MAE's"
                        if flops.get("mae") else "")
                lines.append(f"- {KINDS[kind][0]} / MAE: this project "
                             f"{ours[kind] / ours['mae']:.2f}×, reference "
                             f"{reference[kind] / reference['mae']:.2f}×{work} "
                             f"(target ≤ 1.5×).")
    lines += ["", "GFLOP per step: TensorFlow's static count over our traced training step "
              "(`step_timing.step_flops`); the reference does the same arithmetic."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference_dir", help="folder holding the reference's models.py")
    parser.add_argument("--torch_python", default=sys.executable,
                        help="a Python with torch and timm (default: this one)")
    parser.add_argument("--rounds", type=int, default=5, help="timed steps of each")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch threads (TensorFlow uses every core by default)")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help="comma-separated subset of: " + ", ".join(
                            f"{key} ({label})" for key, (label, _, _) in KINDS.items()))
    parser.add_argument("--output", default=os.path.join(ROOT, "BENCHMARKS.md"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.reference_dir, args.threads)
        return 0
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in args.kinds if k not in KINDS]
    if unknown:
        parser.error(f"unknown --kinds {unknown}; expected some of {list(KINDS)}")
    missing = missing_requirements(args.reference_dir, args.torch_python)
    if missing:
        print("compare_reference: cannot run, missing:\n" +
              "\n".join(f"  - {m}" for m in missing), file=sys.stderr)
        return 2
    sys.path.insert(0, ROOT)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    load_start = "load average " + "/".join(f"{x:.2f}" for x in os.getloadavg())
    from bench import step_timing

    args.malloc = step_timing.keep_freed_memory()
    ours, reference, versions, flops = compare(args)
    text = table(ours, reference, versions, args, load_start, flops)
    from bench.markdown_section import replace_section

    replace_section(args.output, SECTION, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
