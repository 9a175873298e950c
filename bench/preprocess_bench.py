"""Preprocessing throughput: examples/s of `pipeline.preprocess` and its seconds per stage, for
digits, a synthetic EuroSAT folder (13-band 64x64 uint16 GeoTIFFs) and a synthetic HIGGS.csv.gz,
with 1 and 2 Beam workers.

    python -m bench.preprocess_bench                      # 12,000 tiles, 1,000,000 rows, 1 and 2 workers
    python -m bench.preprocess_bench --eurosat_images 2000 --higgs_rows 50000 --rounds 2

1 worker = the default in-process FnApiRunner; N > 1 workers = `--direct_running_mode=multi_processing
--direct_num_workers=N`. The variants (dataset x workers) run in turns, `--rounds` times, and each
row is the round with the median job time. Seconds are wall-clock for the whole job and per
stage (`pipeline.transforms.STAGES`): `prepare` (the driver: reader, raw files, sources),
`read_tokenize_spill` and `merge_write` (first start to last end of the Beam stage's work, with
the CPU seconds of its workers summed), `beam_other` (the rest of the Beam run: worker start-up,
grouping, the manifest) and `finish` (spec, publishing). TensorFlow is imported before the first
job, so no in-process job pays for it; a worker process pays for its own imports (in its
stages). Results go to BENCHMARKS.md between this benchmark's markers; other benchmarks own the
rest of the file.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.markdown_section import markers, replace_section  # noqa: E402
from pipeline import preprocess  # noqa: E402
from preprocessing.datasets import eurosat  # noqa: E402

START_MARKER, END_MARKER = markers("preprocess_bench")
STAGE_COLUMNS = (("prepare", "prepare"), ("read_tokenize_spill", "read+tokenize+spill"),
                 ("merge_write", "merge+write"), ("beam_other", "other Beam"),
                 ("finish", "finish"))


def preprocess_argv(dataset: str, raw_dir: str | None, out_dir: str, *options: str,
                    beam: list[str] | tuple[str, ...] = ()) -> list[str]:
    """`pipeline.preprocess` arguments: `raw_dir` the raw input, `out_dir` the processed root,
    `beam` Beam's own options."""
    argv = ["--dataset", dataset, "--data_dir", out_dir, "--download", "never", *options]
    if raw_dir:
        argv += ["--raw_data_dir", raw_dir]
    return argv + (["--", *beam] if beam else [])


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
    beam = []
    if workers > 1:
        beam = ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
    start = time.time()
    result = preprocess.run(preprocess_argv(dataset, data_dir, output_dir, "--num_shards", "4",
                                            beam=beam))
    seconds = time.time() - start
    shutil.rmtree(output_dir, ignore_errors=True)
    return {"dataset": dataset, "workers": workers, "examples": result.num_examples,
            "seconds": seconds, "rate": result.num_examples / seconds, "stages": result.stages}


def _stage(row: dict, stage: str) -> str:
    s = row["stages"].get(stage, {})
    if "cpu_seconds" in s:
        return f"{s['seconds']:.1f} (CPU {s['cpu_seconds']:.1f})"
    return f"{s.get('seconds', 0.0):.1f}"


def render(rows: list[dict], args) -> str:
    lines = [
        START_MARKER,
        "## Preprocessing throughput (`python -m bench.preprocess_bench`)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python "
        f"{platform.python_version()}; {time.strftime('%Y-%m-%d')}. Command: "
        f"`python -m bench.preprocess_bench --eurosat_images {args.eurosat_images} "
        f"--higgs_rows {args.higgs_rows} --workers {','.join(map(str, args.workers))} "
        f"--datasets {','.join(args.datasets)} --rounds {args.rounds}`. Load average {args.load_start} at the start, "
        f"{args.load_end} at the end (1/5/15 min).",
        "EuroSAT = synthetic 13-band 64x64 uint16 GeoTIFF folder; HIGGS = synthetic HIGGS.csv.gz "
        "(label + 28 features per line). Seconds: the whole job, and per stage (wall clock; the "
        "Beam stages' CPU seconds summed over their workers in brackets; see the module "
        "docstring). The variants ran in turns; each row is the median-time round.",
        "",
        "| dataset | examples | Beam workers | seconds | examples/s | "
        + " | ".join(title for _, title in STAGE_COLUMNS) + " |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(STAGE_COLUMNS),
    ]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['examples']} | {r['workers']} | {r['seconds']:.1f} | "
                     f"{r['rate']:,.0f} | " + " | ".join(_stage(r, s) for s, _ in STAGE_COLUMNS)
                     + " |")
    lines.append(END_MARKER)
    return "\n".join(lines) + "\n"


def workers_benchmark_parser(description: str, eurosat_images: int, out: str):
    """The flags the preprocessing benchmarks share (this one and bench/dask_bench.py)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--eurosat_images", type=int, default=eurosat_images)
    parser.add_argument("--higgs_rows", type=int, default=0,
                        help="rows of a synthetic HIGGS.csv.gz (0: no HIGGS rows)")
    parser.add_argument("--datasets", type=lambda s: s.split(","), default=["digits", "eurosat", "higgs"],
                        help="which of digits, eurosat, higgs to run (higgs needs --higgs_rows)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="times each variant runs, the variants in turns (median reported)")
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


def synthetic_higgs_folder(out: str, rows: int) -> str:
    """`<out>/higgs-raw-<rows>/HIGGS.csv.gz`, written once (bench/memory_bench.py's generator)."""
    from bench.memory_bench import write_higgs

    raw_dir = os.path.join(out, f"higgs-raw-{rows}")
    if not os.path.isfile(os.path.join(raw_dir, "HIGGS.csv.gz")):
        print(f"writing {rows} synthetic HIGGS rows to {raw_dir}")
        os.makedirs(raw_dir, exist_ok=True)
        write_higgs(os.path.join(raw_dir, "HIGGS.csv.gz"), rows)
    return raw_dir


def run_workers_benchmark(args, bench_one, render, section: str) -> None:
    """digits, the synthetic EuroSAT folder (and HIGGS file) at each worker count, in turns for
    `args.rounds` rounds, then the table (the median-time round of each) into BENCHMARKS.md
    between `section`'s markers (this benchmark and bench/dask_bench.py)."""
    import tensorflow  # noqa: F401  (imported once here, not inside the first in-process job)

    start_marker, end_marker = markers(section)
    wanted = getattr(args, "datasets", ["digits", "eurosat"])
    datasets = [("digits", None)] if "digits" in wanted else []
    if "eurosat" in wanted:
        datasets.append(("eurosat", synthetic_eurosat_folder(args.out, args.eurosat_images)))
    if "higgs" in wanted and getattr(args, "higgs_rows", 0):
        datasets.append(("higgs", synthetic_higgs_folder(args.out, args.higgs_rows)))
    variants = [(dataset, data_dir, workers) for dataset, data_dir in datasets
                for workers in args.workers]
    args.load_start = "/".join(f"{x:.2f}" for x in os.getloadavg())
    runs: dict[tuple, list[dict]] = {(d, w): [] for d, _, w in variants}
    for _ in range(getattr(args, "rounds", 1)):
        for dataset, data_dir, workers in variants:
            runs[(dataset, workers)].append(bench_one(dataset, data_dir, workers, args.out))
            print(runs[(dataset, workers)][-1], flush=True)
    args.load_end = "/".join(f"{x:.2f}" for x in os.getloadavg())
    rows = []
    for key, done in runs.items():
        median = statistics.median_low([r["seconds"] for r in done])
        rows.append(next(r for r in done if r["seconds"] == median))
    table = render(rows, args)
    replace_section(args.benchmarks_md, section,
                    table.replace(start_marker, "").replace(end_marker, ""))
    print(table)


def main(argv: list[str] | None = None) -> None:
    parser = workers_benchmark_parser(__doc__.splitlines()[0], 12_000, "preprocess")
    parser.set_defaults(higgs_rows=1_000_000)
    run_workers_benchmark(parser.parse_args(argv), bench_one, render, "preprocess_bench")


if __name__ == "__main__":
    main()
