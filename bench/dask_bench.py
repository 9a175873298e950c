"""The preprocessing job on a loopback Dask cluster: throughput and peak memory, 1 vs 2 workers.

    python -m bench.dask_bench                          # digits + 2,000 EuroSAT tiles, 1 and 2 workers
    python -m bench.dask_bench --eurosat_images 500 --workers 1,2,4

For each worker count a fresh `dask scheduler` and N `dask worker --nthreads 1 --no-nanny`
processes start on 127.0.0.1; the job runs as `python -m pipeline.preprocess ... -- --runner
DaskRunner --dask_client_address ...` (default partitioning: one source per task). Reported: wall-clock of
the whole job (including the driver's start-up, the cluster check and the workers' first
imports, which dominate at small sizes), examples/s, and peak RSS (VmHWM) of the driver and of
the largest worker. EuroSAT = the synthetic 13-band 64x64 uint16 GeoTIFF folder of
bench/preprocess_bench.py (stats pass + tokenizing). Results go to BENCHMARKS.md between this
benchmark's markers; other benchmarks own the rest of the file.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.markdown_section import markers  # noqa: E402
from bench.preprocess_bench import run_workers_benchmark, workers_benchmark_parser  # noqa: E402

START_MARKER, END_MARKER = markers("dask_bench")
DASK = os.path.join(os.path.dirname(sys.executable), "dask")
START_TIMEOUT_S = 120
# The child prints its own peak RSS at exit (see bench/memory_bench.py for why VmHWM).
_JOB = ("import atexit, sys; atexit.register(lambda: print('PEAK_KB', next(l for l in "
        "open('/proc/self/status') if l.startswith('VmHWM')).split()[1], flush=True)); "
        "from commandline import cli; from pipeline import preprocess; "
        "cli.run_program(preprocess, sys.argv)")


def _peak_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM")).split()[1])


class LoopbackCluster:
    """A scheduler and `workers` single-threaded worker processes on 127.0.0.1, each in its own
    process group, killed on exit (also after an error)."""

    def __init__(self, workers: int, folder: str):
        self.workers, self.folder = workers, folder
        self.processes: list[subprocess.Popen] = []
        self.address = ""

    def _start(self, cmd: list[str], log: str) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
        with open(os.path.join(self.folder, log), "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                    start_new_session=True)
        self.processes.append(proc)
        return proc

    def __enter__(self) -> "LoopbackCluster":
        import distributed

        shutil.rmtree(self.folder, ignore_errors=True)
        os.makedirs(self.folder)
        scheduler_file = os.path.join(self.folder, "scheduler.json")
        try:
            self._start([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                         "--scheduler-file", scheduler_file], "scheduler.log")
            deadline = time.monotonic() + START_TIMEOUT_S
            while not os.path.exists(scheduler_file):
                if time.monotonic() > deadline or self.processes[0].poll() is not None:
                    raise RuntimeError(f"the scheduler did not start; see {self.folder}/scheduler.log")
                time.sleep(0.2)
            time.sleep(0.2)
            self.address = json.load(open(scheduler_file))["address"]
            for i in range(self.workers):
                self._start([DASK, "worker", self.address, "--nthreads", "1", "--no-nanny",
                             "--no-dashboard", "--local-directory", os.path.join(self.folder, f"w{i}")],
                            f"worker{i}.log")
            with distributed.Client(self.address, timeout=START_TIMEOUT_S, set_as_default=False) as c:
                c.wait_for_workers(self.workers, timeout=START_TIMEOUT_S)
        except BaseException:
            self.__exit__()
            raise
        return self

    def worker_peaks_kb(self) -> list[int]:
        return [_peak_kb(p.pid) for p in self.processes[1:]]

    def __exit__(self, *exc) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def bench_one(dataset: str, data_dir: str | None, workers: int, out_root: str) -> dict:
    output_dir = os.path.join(out_root, f"dask-{dataset}-w{workers}")
    shutil.rmtree(output_dir, ignore_errors=True)
    with LoopbackCluster(workers, os.path.join(out_root, f"dask-cluster-w{workers}")) as cluster:
        argv = ["--dataset", dataset, "--data_dir", output_dir, "--num_shards", "4"]
        if data_dir:
            argv += ["--raw_data_dir", data_dir]
        argv += ["--", "--runner", "DaskRunner", "--dask_client_address", cluster.address]
        start = time.time()
        done = subprocess.run([sys.executable, "-c", _JOB, *argv], cwd=REPO, capture_output=True,
                              text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        seconds = time.time() - start
        if done.returncode != 0:
            raise RuntimeError(f"{dataset} on {workers} Dask workers failed:\n{done.stderr[-3000:]}")
        worker_peaks = cluster.worker_peaks_kb()
    spec = json.load(open(os.path.join(output_dir, dataset, os.listdir(os.path.join(output_dir, dataset))[0],
                                       "spec.json")))
    examples = sum(s["num_examples"] for s in spec["splits"].values())
    driver_kb = int(next(line for line in done.stdout.splitlines() if line.startswith("PEAK_KB")).split()[1])
    shutil.rmtree(output_dir, ignore_errors=True)
    return {"dataset": dataset, "workers": workers, "examples": examples, "seconds": seconds,
            "rate": examples / seconds, "driver_mb": driver_kb / 1024,
            "worker_mb": max(worker_peaks) / 1024}


def render(rows: list[dict], args) -> str:
    lines = [
        START_MARKER,
        "## Preprocessing on a loopback Dask cluster (`python -m bench.dask_bench`)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared), Python "
        f"{platform.python_version()}; {time.strftime('%Y-%m-%d')}. Command: "
        f"`python -m bench.dask_bench --eurosat_images {args.eurosat_images} "
        f"--workers {','.join(map(str, args.workers))}`.",
        "Scheduler and single-threaded workers on 127.0.0.1, `--runner DaskRunner`. Wall-clock of "
        "the whole job (driver start-up, cluster check, workers' first imports included); peak "
        "RSS (VmHWM) of the driver and of the largest worker.",
        "",
        "| dataset | examples | Dask workers | seconds | examples/s | driver peak MB | worker peak MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['examples']} | {r['workers']} | {r['seconds']:.1f} | "
                     f"{r['rate']:.1f} | {r['driver_mb']:.0f} | {r['worker_mb']:.0f} |")
    lines.append(END_MARKER)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = workers_benchmark_parser(__doc__.splitlines()[0], 2000, "dask")
    run_workers_benchmark(parser.parse_args(argv), bench_one, render, "dask_bench")


if __name__ == "__main__":
    main()
