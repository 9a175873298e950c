"""Which pretraining on real data no one here made: the comparison of `keras_metamae.compare`
on two public sets that install from the package registries, with each set's published
yardstick beside it.

    python bench/compare_real_data.py                       # both sets, 7 columns, seeds 0,1,2
    python bench/compare_real_data.py --datasets basicmotions --steps 300 --seeds 0,1

- basicmotions: UEA BasicMotions (smart-watch accelerometer + gyroscope, 6 channels x 100
  steps, 4 activities, 40 train / 40 test series), read from the `.ts` files inside the `aeon`
  wheel (a zip: read directly, aeon is not imported or installed). `--aeon_wheel` names the
  wheel; without it, `pip download aeon==1.6.0 --no-deps` fetches it into the output folder.
  Tokens: 10 patches of 10 steps x 6 channels (`--patch_shape 10`). Yardstick: ROCKET and most
  UEA classifiers reach 1.00 test accuracy (Dempster et al. 2020, UEA archive results).
- breast-cancer: scikit-learn's Wisconsin diagnostic table (569 rows x 30 features, 2
  classes), shipped inside scikit-learn. Tokens: one per feature. Split 80/10/10 by the
  pipeline's seeded hash. Yardstick: logistic regression on the standardized features,
  ~0.96-0.98 accuracy in the literature; this script also fits one on the same split.

Each set goes through the real Beam job (`pipeline.preprocess --dataset custom --format npy`)
and `keras_metamae.compare` with the digits preset's small model (`--preset digits`), so that it
runs on a CPU; the table goes into BENCHMARKS.md (section `real-data-comparison`).
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time
import zipfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from bench.markdown_section import replace_section  # noqa: E402

AEON_VERSION = "1.6.0"
BASICMOTIONS = "aeon/datasets/data/BasicMotions/BasicMotions_{split}.ts"
YARDSTICKS = {
    "basicmotions": "ROCKET 1.00 test accuracy (Dempster et al. 2020; most UEA classifiers "
                    "reach 1.00 on BasicMotions)",
    "breast-cancer": "logistic regression on standardized features, ~0.96-0.98 accuracy in the "
                     "literature",
}


def parse_ts(text: str) -> tuple[np.ndarray, list[str]]:
    """A UCR/UEA `.ts` file of equal-length series -> (`[N, length, dimensions]` float32,
    the N class labels). Header lines start with `#` (comments) or `@`; after `@data`, one
    series per line: each dimension's comma-separated values, dimensions and the class label
    separated by `:`."""
    lines = [line.strip() for line in text.splitlines()]
    header, data = {}, None
    for i, line in enumerate(lines):
        if not line or line.startswith("#"):
            continue
        if line.lower() == "@data":
            data = [row for row in lines[i + 1:] if row]
            break
        if line.startswith("@"):
            key, _, value = line[1:].partition(" ")
            header[key.lower()] = value.strip()
    if data is None:
        raise ValueError("not a .ts file: no @data line")
    if header.get("equallength", "true").lower() != "true":
        raise ValueError(".ts: only equal-length series are supported (@equalLength true)")
    if header.get("missing", "false").lower() != "false":
        raise ValueError(".ts: series with missing values (@missing true) are not supported")
    series, labels = [], []
    for number, row in enumerate(data, 1):
        *dimensions, label = row.split(":")
        try:
            values = [[float(v) for v in dim.split(",")] for dim in dimensions]
        except ValueError as e:
            raise ValueError(f".ts: series {number}: {e}") from None
        if len({len(v) for v in values}) != 1:
            raise ValueError(f".ts: series {number}: dimensions of different lengths")
        series.append(np.asarray(values, np.float32).T)  # [length, dimensions]
        labels.append(label.strip())
    if len({s.shape for s in series}) != 1:
        raise ValueError(".ts: series of different shapes")
    return np.stack(series), labels


def find_aeon_wheel(out_dir: str, given: str | None) -> str:
    if given:
        if not os.path.isfile(given):
            raise SystemExit(f"error: --aeon_wheel {given}: no such file")
        return given
    found = sorted(glob.glob(os.path.join(out_dir, f"aeon-{AEON_VERSION}-*.whl")))
    if found:
        return found[-1]
    print(f"fetching the aeon {AEON_VERSION} wheel (its .ts files) into {out_dir}")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", out_dir,
                    f"aeon=={AEON_VERSION}"], check=True)
    return sorted(glob.glob(os.path.join(out_dir, f"aeon-{AEON_VERSION}-*.whl")))[-1]


def write_basicmotions(wheel: str, raw_dir: str) -> None:
    """train/ and test/ folders of inputs.npy `[N, 100, 6]` and labels.npy (class indices)."""
    with zipfile.ZipFile(wheel) as archive:
        parsed = {split: parse_ts(archive.read(BASICMOTIONS.format(split=split.upper()))
                                  .decode("utf-8"))
                  for split in ("train", "test")}
    classes = sorted(set(parsed["train"][1]))
    for split, (inputs, labels) in parsed.items():
        os.makedirs(os.path.join(raw_dir, split), exist_ok=True)
        np.save(os.path.join(raw_dir, split, "inputs.npy"), inputs)
        np.save(os.path.join(raw_dir, split, "labels.npy"),
                np.array([classes.index(label) for label in labels], np.int64))


def write_breast_cancer(raw_dir: str) -> None:
    from sklearn.datasets import load_breast_cancer

    table = load_breast_cancer()
    os.makedirs(raw_dir, exist_ok=True)
    np.save(os.path.join(raw_dir, "inputs.npy"), table.data.astype(np.float32))
    np.save(os.path.join(raw_dir, "labels.npy"), table.target.astype(np.int64))


def preprocess(name: str, raw_dir: str, data_dir: str, *options: str) -> None:
    from pipeline import preprocess as job

    argv = ["--dataset", "custom", "--format", "npy", "--raw_data_dir", raw_dir,
            "--data_dir", data_dir, "--name", name, *options]
    if job.run(argv) is None:
        raise SystemExit(f"error: preprocessing {name} failed (see above)")


def raw_logistic_regression(data_dir: str, name: str) -> float:
    """Test accuracy of a logistic regression on the standardized raw inputs (the same splits,
    C chosen on the validation split, else on 10% of train): a linear model without any
    pretraining, the floor a pretrained encoder has to clear."""
    from keras_metamae import data
    from keras_metamae.evaluation.probes import converged_probe
    from preprocessing.spec import load_spec

    version_dir = data.find_dataset_dir(data_dir, name)
    spec = load_spec(version_dir)

    def split(names):
        xs, ys = [], []
        for batch in data.make_dataset(spec, version_dir, names, 256, shuffle=False,
                                       repeat=False, drop_remainder=False):
            xs.append(batch["tokens"].numpy().reshape(len(batch["label"]), -1))
            ys.append(batch["label"].numpy())
        return np.concatenate(xs), np.concatenate(ys)

    roles = {r: spec.protocol_splits(r) for r in ("probe_train", "probe_val", "probe_test")}
    has_val = roles["probe_val"] and all(spec.splits.get(s) and spec.splits[s].num_examples
                                         for s in roles["probe_val"])
    val = split(roles["probe_val"]) if has_val else None
    return converged_probe(spec, split(roles["probe_train"]), val,
                           split(roles["probe_test"]), seed=0)["value"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="basicmotions,breast-cancer")
    parser.add_argument("--methods", default="random,emix,shed,capri,dabs-mae,mae,metamae")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=16,
                        help="BasicMotions has 40 training series: 2 batches of 16 per epoch")
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "out", "real_data"))
    parser.add_argument("--aeon_wheel", default=None)
    parser.add_argument("--output", default=os.path.join(REPO, "BENCHMARKS.md"))
    args = parser.parse_args()

    from keras_metamae.comparison.study import compare_methods

    names = [n for n in args.datasets.split(",") if n]
    unknown = sorted(set(names) - set(YARDSTICKS))
    if unknown:
        raise SystemExit(f"error: --datasets: unknown {unknown}; expected {sorted(YARDSTICKS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    data_dir = os.path.join(args.out, "processed")
    sections = []
    for name in names:
        raw_dir = os.path.join(args.out, "raw", name)
        if not os.path.isdir(raw_dir):
            if name == "basicmotions":
                write_basicmotions(find_aeon_wheel(args.out, args.aeon_wheel), raw_dir)
            else:
                write_breast_cancer(raw_dir)
        if not glob.glob(os.path.join(data_dir, name, "*", "spec.json")):
            preprocess(name, raw_dir, data_dir,
                       *(["--patch_shape", "10"] if name == "basicmotions" else []))
        started = time.time()
        overrides = {"preset": "digits", "batch_size": args.batch_size,
                     "eval_every": max(1, args.steps // 5)}
        results, paths = compare_methods(name, methods, seeds, args.steps,
                                         os.path.join(args.out, f"compare-{name}"), data_dir,
                                         overrides=overrides, verbose=1)
        linear = raw_logistic_regression(data_dir, name)
        table = open(paths["markdown"]).read().split("\n", 2)[2]  # without its title
        sections.append(
            f"### {name}\n\n"
            f"`python bench/compare_real_data.py --datasets {name} --steps {args.steps} "
            f"--seeds {args.seeds}` ({time.time() - started:.0f} s, "
            f"{time.strftime('%Y-%m-%d')}; load average at the end "
            f"{os.getloadavg()[0]:.2f}).\n\n{table}\n"
            f"Yardstick: {YARDSTICKS[name]}. Logistic regression on the raw standardized "
            f"inputs of the same splits (converged probe, no encoder): "
            f"{100 * linear:.1f}.\n")
    replace_section(args.output, "real-data-comparison",
                    "## Which pretraining? Real data (bench/compare_real_data.py)\n\n"
                    + "\n".join(sections))
    print(f"wrote {args.output} (section real-data-comparison)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
