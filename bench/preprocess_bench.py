"""Preprocessing throughput: examples/s of `pipeline.preprocess` for digits and for a synthetic
EuroSAT-format folder (13-band 64x64 uint16 GeoTIFFs), with 1 and 2 Beam workers.

    python -m bench.preprocess_bench                       # 5,000 EuroSAT tiles, 1 and 2 workers
    python -m bench.preprocess_bench --eurosat_images 500  # quicker

1 worker = the default in-process FnApiRunner; N > 1 workers = `--direct_running_mode=multi_processing
--direct_num_workers=N`. Times are wall-clock for the whole job (Beam start-up, reading, statistics,
tokenizing, sorting and writing the GZIP shards, spec.json) and include worker start-up, which
dominates at small sizes. Results go to BENCHMARKS.md between this benchmark's markers; other
benchmarks own the rest of the file.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.markdown_section import markers, replace_section  # noqa: E402
from pipeline import preprocess  # noqa: E402
from preprocessing.datasets import eurosat  # noqa: E402

START_MARKER, END_MARKER = markers("preprocess_bench")


def write_eurosat_folder(data_dir: str, num_images: int, seed: int = 0) -> None:
    """`<Class>/<Class>_<n>.tif` tiles, spread over the 10 classes, values around the DABS means."""
    import tifffile

    rng = np.random.default_rng(seed)
    mean, std = np.array(eurosat.DABS_MEAN), np.array(eurosat.DABS_STD)
    for i in range(num_images):
        cls = eurosat.CLASSES[i % len(eurosat.CLASSES)]
        folder = os.path.join(data_dir, cls)
        os.makedirs(folder, exist_ok=True)
        tile = np.clip(rng.normal(mean, std, size=(64, 64, 13)), 0, 65535).astype(np.uint16)
        tifffile.imwrite(os.path.join(folder, f"{cls}_{i // len(eurosat.CLASSES) + 1}.tif"), tile,
                         photometric="minisblack", planarconfig="contig")


def bench_one(dataset: str, data_dir: str | None, workers: int, out_root: str) -> dict:
    output_dir = os.path.join(out_root, f"{dataset}-w{workers}")
    shutil.rmtree(output_dir, ignore_errors=True)
    argv = ["--dataset", dataset, "--data_dir", output_dir, "--num_shards", "4"]
    if data_dir:
        argv += ["--raw_data_dir", data_dir]
    if workers > 1:
        argv += ["--", "--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
    start = time.time()
    result = preprocess.run(argv)
    seconds = time.time() - start
    shutil.rmtree(output_dir, ignore_errors=True)
    return {"dataset": dataset, "workers": workers, "examples": result.num_examples,
            "seconds": seconds, "rate": result.num_examples / seconds}


def render(rows: list[dict], args) -> str:
    lines = [
        START_MARKER,
        "## Preprocessing throughput (`python -m bench.preprocess_bench`)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared), Python "
        f"{platform.python_version()}; {time.strftime('%Y-%m-%d')}. Command: "
        f"`python -m bench.preprocess_bench --eurosat_images {args.eurosat_images} "
        f"--workers {','.join(map(str, args.workers))}`.",
        "Wall-clock of the whole job including Beam and worker start-up (which dominates at "
        "these sizes); EuroSAT = synthetic 13-band 64x64 uint16 GeoTIFF folder. Each extra worker "
        "is a process that imports TensorFlow, so on a small shared machine 2 workers can be slower.",
        "",
        "| dataset | examples | Beam workers | seconds | examples/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['examples']} | {r['workers']} | {r['seconds']:.1f} | {r['rate']:.1f} |")
    lines.append(END_MARKER)
    return "\n".join(lines) + "\n"


def workers_benchmark_parser(description: str, eurosat_images: int, out: str):
    """The flags the preprocessing benchmarks share (this one and bench/dask_bench.py)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--eurosat_images", type=int, default=eurosat_images)
    parser.add_argument("--workers", type=lambda s: [int(w) for w in s.split(",")], default=[1, 2])
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "out", out))
    parser.add_argument("--benchmarks_md", default=os.path.join(REPO, "BENCHMARKS.md"))
    return parser


def synthetic_eurosat_folder(out: str, images: int) -> str:
    """`<out>/eurosat-raw-<images>`: the synthetic tiles, written once (renamed into place)."""
    raw_dir = os.path.join(out, f"eurosat-raw-{images}")
    if not os.path.isdir(raw_dir):
        print(f"writing {images} synthetic EuroSAT tiles to {raw_dir}")
        write_eurosat_folder(raw_dir + ".partial", images)
        os.rename(raw_dir + ".partial", raw_dir)
    return raw_dir


def run_workers_benchmark(args, bench_one, render, section: str) -> None:
    """digits and the synthetic EuroSAT folder at each worker count, then the table into
    BENCHMARKS.md between `section`'s markers (this benchmark and bench/dask_bench.py)."""
    start_marker, end_marker = markers(section)
    raw_dir = synthetic_eurosat_folder(args.out, args.eurosat_images)
    rows = []
    for dataset, data_dir in (("digits", None), ("eurosat", raw_dir)):
        for workers in args.workers:
            rows.append(bench_one(dataset, data_dir, workers, args.out))
            print(rows[-1], flush=True)
    table = render(rows, args)
    replace_section(args.benchmarks_md, section,
                    table.replace(start_marker, "").replace(end_marker, ""))
    print(table)


def main(argv: list[str] | None = None) -> None:
    parser = workers_benchmark_parser(__doc__.splitlines()[0], 5000, "preprocess")
    run_workers_benchmark(parser.parse_args(argv), bench_one, render, "preprocess_bench")


if __name__ == "__main__":
    main()
