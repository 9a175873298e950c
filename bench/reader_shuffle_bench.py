"""What exact resumption costs the reader: the training reader as it is (each epoch's files
and blocks permuted by stateless draws seeded with seed + epoch, so a resumed run rebuilds the
stream) against the reader before that change (tf.data's sliding shuffle buffer, reshuffled
each iteration, which a resumed run cannot rebuild after the first epoch).

    python -m bench.reader_shuffle_bench                 # 2,000 synthetic EuroSAT tiles, 5 rounds

Same shards (bench/reader_bench.py's synthetic EuroSAT folder), same batch, the two variants
timed in turns (A B A B ...) on fresh iterators; the median over rounds of examples/s and
examples per CPU-second. Results go to BENCHMARKS.md between this benchmark's markers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench.markdown_section import replace_section  # noqa: E402
from bench.reader_bench import (ReaderTimer, eurosat_versions, load,  # noqa: E402
                                time_in_turns)

SECTION = "reader_shuffle_bench"


def sliding_buffer_dataset(spec, version_dir: str, splits: list[str], batch_size: int):
    """The training reader as it was before exact resumption: files shuffled, interleaved,
    then tf.data's shuffle buffer (reshuffled each iteration), repeated, batched, parsed."""
    import tensorflow as tf

    from keras_metamae.data import records

    files, examples = records._split_contents(spec, version_dir, splits, batch_size, True)
    read_buffer = records._read_buffer_bytes(files, spec)
    ds = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=0)
    ds = ds.interleave(lambda path: records.shards(path, spec, buffer_size=read_buffer),
                       cycle_length=len(files), block_length=1,
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.shuffle(records.shuffle_buffer_size(spec, examples, batch_size), seed=0)
    ds = ds.repeat().batch(batch_size, drop_remainder=True)
    ds = ds.map(lambda serialized: records.parse_batch(serialized, spec),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="synthetic EuroSAT tiles")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=60, help="timed batches per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "out", "reader"))
    parser.add_argument("--benchmarks_md", default=os.path.join(REPO, "BENCHMARKS.md"))
    args = parser.parse_args(argv)

    from bench import step_timing

    malloc = step_timing.keep_freed_memory()  # as in a training process
    name, (spec, version_dir) = next(iter(eurosat_versions(args.out, args.images).items()))
    splits = spec.protocol_splits("pretrain")
    now = ReaderTimer(spec, version_dir, splits, args.batch)
    before = ReaderTimer(spec, version_dir, splits, args.batch)
    before._dataset = sliding_buffer_dataset(spec, version_dir, splits, args.batch)
    timers = {"epoch-seeded block permutation (now; exact resume)": now,
              "sliding shuffle buffer (before)": before}
    load_start = load()
    measured = time_in_turns(timers, args.rounds, args.batches)
    lines = [
        "## Reader shuffle: exact resumption's cost (`python -m bench.reader_shuffle_bench`)",
        "",
        f"{name} shards of {args.images} synthetic EuroSAT tiles, batch {args.batch}, "
        f"{args.batches} batches per variant per round (an epoch end included), in turns, "
        f"median of {args.rounds} rounds; {malloc}. Load average {load_start} at the start, "
        f"{load()} at the end (1/5/15 min).",
        "",
        "| reader | examples/s (all cores) | examples per CPU-second | per CPU-second, each round |",
        "|---|---:|---:|---|",
    ]
    for variant, values in measured.items():
        lines.append(f"| {variant} | {statistics.median(w for w, _ in values):,.0f} | "
                     f"{statistics.median(c for _, c in values):,.0f} | "
                     f"{', '.join(f'{c:,.0f}' for _, c in values)} |")
    table = "\n".join(lines)
    replace_section(args.benchmarks_md, SECTION, table)
    print(table)


if __name__ == "__main__":
    main()
