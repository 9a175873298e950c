"""tf.data reader throughput on EuroSAT shards: examples/s and examples per CPU core-second.

    python -m bench.reader_bench                     # 2,000 synthetic tiles, batch 64, 3 rounds
    python -m bench.reader_bench --images 500 --rounds 5

The shards of a synthetic EuroSAT folder (13-band 64x64 uint16 GeoTIFFs,
bench/preprocess_bench.py) are written once by the preprocessing job (cached under
bench/out/reader), and copied into the layout of pipeline version 2 (normalized float32
tokens in a float_list, GZIP shards), which the reader still reads. Both are read the way
training reads them (`keras_metamae.data.make_dataset`: shuffled, repeated, batch 64, parsed
and normalized), in turns (A B A B ...), so a shared machine's load weighs on both alike.
Reported per variant, the median over rounds of:
- examples/s, wall clock, with every core tf.data uses;
- examples per CPU-second of this process (user + system time): the per-core rate, which is
  what the target (>= 5,000 EuroSAT examples/s per core) is about, and which other jobs on a
  shared machine do not change the way they change the wall clock.
Results go to BENCHMARKS.md between this benchmark's markers.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import platform
import resource
import shutil
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench.markdown_section import replace_section  # noqa: E402

SECTION = "reader_bench"


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class ReaderTimer:
    """`make_dataset` batches timed `batches` at a time, each stretch on a fresh iterator after
    an untimed warm-up. Only the timed variant's iterator exists while it is timed: a live
    iterator keeps prefetching in the background, and that work would be charged to whichever
    variant is being timed meanwhile."""

    def __init__(self, spec, version_dir: str, split, batch_size: int, warmup: int = 5):
        from keras_metamae import data

        self.batch_size = batch_size
        self._warmup = warmup
        self._dataset = data.make_dataset(spec, version_dir, split, batch_size, seed=0)

    def time(self, batches: int) -> tuple[float, float]:
        """(examples/s wall clock, examples per CPU-second) over `batches` batches."""
        iterator = iter(self._dataset)
        for _ in range(self._warmup):  # tracing, XLA compilation, filling the shuffle buffer
            next(iterator)
        wall, cpu = time.perf_counter(), _cpu_seconds()
        for _ in range(batches):
            next(iterator)
        wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
        del iterator  # stops its prefetching before anything else is timed
        gc.collect()
        examples = batches * self.batch_size
        return examples / wall, examples / max(cpu, 1e-9)


def time_in_turns(timers: dict, rounds: int, batches: int) -> dict[str, list[tuple[float, float]]]:
    """{variant: [(examples/s, examples per CPU-second) per round]}, the variants timed in
    turns (A B A B ...) so that a shared machine's load weighs on all of them alike."""
    measured: dict[str, list[tuple[float, float]]] = {name: [] for name in timers}
    for r in range(rounds):
        for name, timer in timers.items():
            measured[name].append(timer.time(batches))
            print(f"round {r + 1}: {name}: {measured[name][-1][0]:,.0f} examples/s, "
                  f"{measured[name][-1][1]:,.0f} per CPU-second", flush=True)
    return measured


def reader_rate(spec, version_dir: str, split, batch_size: int, batches: int = 50) -> tuple[float, float]:
    """(examples/s, examples per CPU-second) of one timed stretch of the training reader."""
    return ReaderTimer(spec, version_dir, split, batch_size).time(batches)


def write_version_2_copy(spec, version_dir: str, out_dir: str) -> str:
    """A copy of `version_dir` in the layout pipeline version 2 wrote: the normalized float32
    tokens (as the reader gives them) in a float_list, GZIP shards, a spec without `storage`."""
    import numpy as np
    import tensorflow as tf

    from keras_metamae import data
    from pipeline import transforms
    from preprocessing.spec import SplitInfo

    if os.path.isfile(os.path.join(out_dir, "spec.json")):
        return out_dir
    tmp = out_dir + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    splits = {}
    for split, info in spec.splits.items():
        records = []
        if info.num_examples:
            for batch in data.make_dataset(spec, version_dir, split, 64, shuffle=False, repeat=False,
                                           drop_remainder=False).as_numpy_iterator():
                for tokens, label, example_id in zip(batch["tokens"], batch["label"], batch["id"]):
                    records.append(tf.train.Example(features=tf.train.Features(feature={
                        "tokens": tf.train.Feature(float_list=tf.train.FloatList(value=np.ravel(tokens))),
                        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                        "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[example_id])),
                    })).SerializeToString())
        for shard in range(info.num_shards):
            transforms.write_records(
                os.path.join(tmp, transforms.shard_path(split, shard, info.num_shards, "GZIP")),
                records[shard::info.num_shards], "GZIP")
        splits[split] = SplitInfo(info.num_examples,
                                  transforms.shard_pattern(split, info.num_shards, "GZIP"),
                                  info.num_shards)
    dataclasses.replace(spec, storage={}, splits=splits, pipeline_version="2").save(tmp)
    os.rename(tmp, out_dir)
    return out_dir


def eurosat_versions(out: str, images: int) -> dict[str, tuple]:
    """{variant: (spec, version_dir)}: the current shards and their version-2 copy."""
    from bench.preprocess_bench import preprocess_argv, synthetic_eurosat_folder
    from keras_metamae import data
    from pipeline import preprocess
    from preprocessing.spec import load_spec

    raw_dir = synthetic_eurosat_folder(out, images)
    processed = os.path.join(out, f"eurosat-processed-{images}")
    try:
        current = data.find_dataset_dir(processed, "eurosat")
        if load_spec(current).pipeline_version != preprocess.PIPELINE_VERSION:
            raise data.DataError("an older version")
    except data.DataError:
        shutil.rmtree(processed, ignore_errors=True)
        current = preprocess.run(preprocess_argv("eurosat", raw_dir, processed)).version_dir
    spec = load_spec(current)
    old_dir = write_version_2_copy(spec, current, os.path.join(out, f"eurosat-v2-{images}"))
    return {f"version {spec.pipeline_version}: {spec.storage_dtype}, uncompressed": (spec, current),
            "version 2: normalized float32, GZIP": (load_spec(old_dir), old_dir)}


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def render(rows: list[dict], args, load_start: str, load_end: str, malloc: str) -> str:
    import tensorflow as tf

    lines = [
        "## tf.data reader (`python -m bench.reader_bench`)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python "
        f"{platform.python_version()}, TF {tf.__version__}; {time.strftime('%Y-%m-%d')}. Command: "
        f"`python -m bench.reader_bench --images {args.images} --batch {args.batch} "
        f"--rounds {args.rounds}`. Synthetic EuroSAT tiles (13 bands, 64x64, uint16), the "
        f"pretraining split read as training reads it (shuffled, batch {args.batch}, tokens "
        f"normalized); the variants timed in turns, {args.batches} batches each per round, "
        f"median of {args.rounds} rounds; {malloc}. Load average {load_start} at the start, "
        f"{load_end} at the end (1/5/15 min).",
        "",
        "| shards | examples/s (all cores) | examples per CPU-second |",
        "|---|---:|---:|",
    ]
    lines += [f"| {r['variant']} | {r['wall']:,.0f} | {r['cpu']:,.0f} |" for r in rows]
    lines += ["", "Examples per CPU-second is the per-core rate (the target is >= 5,000 "
              "EuroSAT examples/s per core): the process's user + system CPU time, which other "
              "jobs on a shared machine do not add to."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="synthetic EuroSAT tiles")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=40, help="timed batches per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "out", "reader"))
    parser.add_argument("--benchmarks_md", default=os.path.join(REPO, "BENCHMARKS.md"))
    args = parser.parse_args(argv)

    from bench import step_timing

    malloc = step_timing.keep_freed_memory()  # as in a training process
    versions = eurosat_versions(args.out, args.images)
    timers = {name: ReaderTimer(spec, version_dir, spec.protocol_splits("pretrain"), args.batch)
              for name, (spec, version_dir) in versions.items()}
    load_start = load()
    measured = time_in_turns(timers, args.rounds, args.batches)
    rows = [{"variant": name, "wall": statistics.median(w for w, _ in values),
             "cpu": statistics.median(c for _, c in values)} for name, values in measured.items()]
    table = render(rows, args, load_start, load(), malloc)
    replace_section(args.benchmarks_md, SECTION, table)
    print(table)


if __name__ == "__main__":
    main()
