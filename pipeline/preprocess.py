"""`python -m pipeline.preprocess`: raw dataset -> tokenized, sharded TFRecords + spec.json.

    python -m pipeline.preprocess --dataset digits
    python -m pipeline.preprocess --dataset eurosat --data_dir data/raw/eurosat --num_shards 16
    python -m pipeline.preprocess --list
    python -m pipeline.preprocess --dataset eurosat --runner=DataflowRunner --project=... --region=...

Flags this module does not know are handed to Beam's PipelineOptions unchanged (`--runner`,
`--direct_num_workers`, `--direct_running_mode`, Dataflow flags, ...). Without `--runner`, and
with `--runner=DirectRunner`, the job runs on Beam's FnApiRunner, the batch engine behind the
DirectRunner, so nothing is downloaded (the DirectRunner would first try to fetch Prism).
`--runner=PrismRunner` still selects Prism explicitly. `--runner=DaskRunner
--dask_client_address=tcp://HOST:PORT` runs it on a dask.distributed cluster, after checking that
the scheduler and every worker can import this project (pipeline/runners.py).

Graph: (unless the reader has fixed DABS statistics or discrete tokens) a first pass reads the
sources for the per-channel mean/std of the train split; the main pass reads each source again,
splits, tokenizes with the statistics (joined to each source) and spills id-sorted runs of
tf.train.Examples, which are merged into GZIP TFRecord shards sorted by id. Only file names
pass between the stages, so memory stays bounded on the local runner too (pipeline/transforms.py).
The graph's one final leaf writes `_manifest/manifest.json` (statistics, bad records, shards),
which the driver reads after the run; it avoids what only some runners support (see
pipeline/transforms.py), so it runs unchanged on any of them.

Output: `<output_dir>/<dataset>/<pipeline_version>/{spec.json,<split>/data-SSSSS-of-NNNNN.tfrecord.gz}`.
The version is built in `<output_dir>/<dataset>/.tmp-<uuid>` and renamed into place only after
every check passed, so an interrupted or failed run never leaves a partial version behind.
Only a local (or mounted) output_dir gets this atomic rename.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shlex
import shutil
import sys
import time
import uuid
from typing import Any

from pipeline import runners
from preprocessing import download, registry
from preprocessing.datasets.base import RawDataMissing
from preprocessing.official_files import official_files
from preprocessing.spec import PIPELINE_VERSION, SPEC_FILENAME, DatasetSpec, SpecError, SplitInfo

DEFAULT_DATASET = "digits"
DEFAULT_RAW_ROOT = os.path.join("data", "raw")
OUTPUT_DIR_ENV = "KERAS_METAMAE_DATA"
DOWNLOAD_ENV = "KERAS_METAMAE_DOWNLOAD"  # default of --download (e.g. `never` on offline nodes)
_MANIFEST_DIR = "_manifest"  # driver-only side files inside the temp dir; removed before rename
_MANIFEST_FILE = "manifest.json"  # {"stats": [..], "bad": [..], "shards": [..]}
_LIST_BAD_PATHS = 50


class PreprocessError(RuntimeError):
    """The job ran but its result must not be published (e.g. too many bad records)."""


@dataclasses.dataclass
class PreprocessResult:
    spec: DatasetSpec
    version_dir: str
    seconds: float
    bad_records: list[dict[str, str]]

    @property
    def num_examples(self) -> int:
        return sum(s.num_examples for s in self.spec.splits.values())


def default_output_dir() -> str:
    return os.environ.get(OUTPUT_DIR_ENV) or os.path.join("data", "processed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.preprocess",
        description="Tokenize a raw dataset into TFRecord shards and spec.json. "
                    "Unknown flags are passed to Beam's PipelineOptions.",
    )
    parser.add_argument("--dataset", default=DEFAULT_DATASET,
                        help=f"registered dataset name (default {DEFAULT_DATASET}; see --list)")
    parser.add_argument("--data_dir", default=None,
                        help="folder holding the raw files (default data/raw/<dataset>; datasets "
                             "made from the same files share one, e.g. vqa -> data/raw/mscoco)")
    parser.add_argument("--output_dir", default=None,
                        help=f"root of processed datasets (default ${OUTPUT_DIR_ENV} or data/processed)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the split hash")
    parser.add_argument("--num_shards", type=int, default=4, help="shards per split")
    parser.add_argument("--max_bad_fraction", type=float, default=0.0,
                        help="fail when more than this fraction of raw records is unreadable")
    parser.add_argument("--list", action="store_true",
                        help="list the registered datasets and whether their raw files are present")
    parser.add_argument("--download", choices=("auto", "never"),
                        default=os.environ.get(DOWNLOAD_ENV) or "auto",
                        help="auto: when the raw files are missing, download the official ones "
                             "(resumable, checksummed) into --data_dir; never: only report what "
                             f"is missing (default ${DOWNLOAD_ENV} or auto)")
    parser.add_argument("--download_mirror", default=None, metavar="URL",
                        help="fetch the official files by name from this mirror instead "
                             "(checksums are still verified)")
    parser.add_argument("--download_timeout", type=float, default=30.0,
                        help="seconds to wait for the download server")
    custom = parser.add_argument_group(
        "reader options", "forwarded to the dataset reader (e.g. --dataset custom)")
    for flag, help_text in READER_FLAGS.items():
        custom.add_argument(f"--{flag}", default=None, help=help_text)
    custom.add_argument("--reader_option", action="append", default=[], metavar="KEY=VALUE",
                        help="any other reader option (repeatable)")
    return parser


# Reader options with a flag of their own; values reach the reader as strings.
READER_FLAGS = {
    "format": "custom data format: npy, csv, text, image_folder, audio_folder",
    "input_shape": "example shape, comma-separated (custom npy; image size for image_folder)",
    "patch_shape": "token size along the leading axes, comma-separated",
    "label_column": "label column of a custom csv (default: label)",
    "vocab": "characters of a custom text vocabulary (the first one pads)",
    "seq_len": "custom text sequence length",
    "vocab_size": "vocabulary size of integer custom npy sequences",
    "task": "custom task: multiclass (default) or regression",
    "name": "dataset name written to spec.json and used as the output folder (custom)",
}
# `--dataset custom --format F` for the folder formats is served by its own reader.
FOLDER_FORMATS = {"image_folder": "custom_image_folder", "audio_folder": "custom_audio_folder"}


def reader_options(args: argparse.Namespace) -> dict[str, str]:
    options = {flag: getattr(args, flag) for flag in READER_FLAGS if getattr(args, flag) is not None}
    for item in args.reader_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--reader_option={item!r}: expected KEY=VALUE")
        options[key] = value
    return options


def resolve_dataset(args: argparse.Namespace, options: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The registered reader name and its options (routes custom folder formats)."""
    if args.dataset == "custom" and options.get("format") in FOLDER_FORMATS:
        options = dict(options)
        return FOLDER_FORMATS[options.pop("format")], options
    return args.dataset, options


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    args, beam_args = build_parser().parse_known_args(argv)
    if args.num_shards < 1:
        raise SystemExit(f"--num_shards={args.num_shards}: expected at least 1")
    if not 0.0 <= args.max_bad_fraction <= 1.0:
        raise SystemExit(f"--max_bad_fraction={args.max_bad_fraction}: expected a value in [0, 1]")
    if args.download not in ("auto", "never"):  # a bad $KERAS_METAMAE_DOWNLOAD
        raise SystemExit(f"${DOWNLOAD_ENV}={args.download!r}: expected auto or never")
    if args.download_timeout <= 0:
        raise SystemExit(f"--download_timeout={args.download_timeout}: expected a positive number")
    return args, beam_args


# === --list ===
def _token_shape(spec: DatasetSpec) -> str:
    if spec.is_discrete:
        return f"{spec.num_tokens} ids (vocab {spec.vocab_size})"
    return f"{spec.num_tokens} x {spec.token_dim}"


def list_datasets(raw_root: str = DEFAULT_RAW_ROOT) -> str:
    """A table of every registered dataset; a reader that fails to load gets an error row."""
    header = ("dataset", "modality", "tokens", "classes", "metric", "raw present", "expected raw files")
    rows = []
    for name in registry.names():
        data_dir = os.path.join(raw_root, registry.raw_folder(name))
        try:
            reader = registry.get_reader(name, data_dir=data_dir)
            spec = reader.spec_template()
            try:
                reader.check_raw()
                present = "yes"
            except RawDataMissing:
                present = f"no ({data_dir}); {_download_note(name)}"
            rows.append((name, spec.modality, _token_shape(spec), str(spec.num_classes), spec.metric,
                         present, "; ".join(reader.expected_files())))
        except ValueError as e:  # a reader that needs flags (custom): say which
            rows.append((name, "any", "by flags", "-", "-", "-", str(e)))
        except Exception as e:  # one broken reader must not hide the others
            rows.append((name, "?", "?", "?", "?", "?", f"reader error: {type(e).__name__}: {e}"))
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header) - 1)]
    lines = []
    for row in [header] + rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    return "\n".join(lines)


def _download_note(dataset: str) -> str:
    files = official_files(dataset)
    if not files:
        return "place by hand"
    sizes = [f.size for f in files]
    total = f" {download.human_bytes(sum(sizes))}" if all(sizes) else ""
    return f"auto-download{total}"


# === raw files ===
def ensure_raw(reader, dataset: str, data_dir: str, args: argparse.Namespace) -> None:
    """Returns once the reader finds its raw files, downloading the official ones if allowed.

    Raises RawDataMissing (nothing to read and no download possible; the message names the
    files, URLs and folder) or download.DownloadError (what arrived is not the official file).
    """
    try:
        reader.check_raw()
        return
    except RawDataMissing as missing:
        files = official_files(dataset)
        if args.download == "never" or not files:
            raise
        logging.info("%s: raw files missing in %s; downloading %s", dataset, data_dir,
                     ", ".join(f.describe() for f in files))
        try:
            download.ensure_raw_files(list(files), data_dir, mirror=args.download_mirror,
                                      timeout=args.download_timeout)
        except download.NetworkUnavailable as e:
            raise RawDataMissing(f"{missing}\nThe automatic download failed: {e}. Place the "
                                 f"file(s) by hand, or pass --download_mirror URL.") from e
    reader.check_raw()


# === runner ===
def make_pipeline(beam_args: list[str]):
    """A beam.Pipeline from pass-through flags; Direct/unspecified runner -> FnApiRunner."""
    return runners.make_pipeline(beam_args)


def build_graph(p, reader, spec: DatasetSpec, sources: list[Any], work_dir: str, seed: int,
                num_shards: int) -> None:
    import apache_beam as beam

    from pipeline import transforms

    manifest = os.path.join(work_dir, _MANIFEST_DIR)
    indexed_sources = (p
                       | "Sources" >> beam.Create(list(enumerate(sources)), reshuffle=False)
                       # Spreads the (few, heavy) sources over the local runner's workers (on
                       # Dask, --dask_npartitions does; see pipeline/runners.py).
                       | "Spread" >> beam.Reshuffle())
    if spec.is_discrete:
        stats = p | "NoStats" >> beam.Create([None])
    elif reader.fixed_normalization is not None:
        stats = p | "FixedStats" >> beam.Create([dict(reader.fixed_normalization)])
    else:  # a first pass over the raw data; its bad records are reported by the main pass
        stats = indexed_sources | "ComputeStats" >> transforms.ComputeStats(
            reader, seed, int(spec.input_shape[-1]))
    spill_dir = os.path.join(manifest, "spill")
    spilled = (indexed_sources
               | "TokenizeAndSpill" >> transforms.TokenizeAndSpill(
                   reader, spec, seed, num_shards, spill_dir, stats, num_sources=len(sources)))
    bad = (spilled[transforms.BAD_TAG]
           | "BadToDict" >> beam.Map(lambda b: {"path": b.path, "reason": b.reason}))
    shards = (spilled[transforms.RUNS_TAG]
              | "MergeShards" >> transforms.MergeShards(work_dir, num_shards, spill_dir))
    # The one final leaf (some runners, e.g. Dask, compute only the last one).
    ({"stats": stats, "bad": bad, "shards": shards}
     | "WriteManifest" >> transforms.WriteManifest(os.path.join(manifest, _MANIFEST_FILE)))


# === publishing ===
def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def _read_manifest(work_dir: str) -> dict[str, list[Any]]:
    manifest = _read_json(os.path.join(work_dir, _MANIFEST_DIR, _MANIFEST_FILE))
    return {kind: manifest.get(kind, []) for kind in ("stats", "bad", "shards")}


def _finish_spec(reader, spec: DatasetSpec, work_dir: str, num_shards: int, command: str) -> DatasetSpec:
    from pipeline import transforms

    manifest = _read_manifest(work_dir)
    shards = manifest["shards"]
    written = {(s["split"], s["shard"]): s for s in shards}
    split_names = [name for name, _ in reader.split_fractions]
    split_names += sorted({s["split"] for s in shards} - set(split_names))
    lines, splits = [], {}
    for split in split_names:
        count = 0
        for shard in range(num_shards):
            entry = written.get((split, shard))
            if entry is None:  # no example hashed here: an empty shard keeps the pattern complete
                rel = transforms.shard_path(split, shard, num_shards)
                entry = {"path": rel, "num_examples": 0,
                         "sha256": transforms.write_records(os.path.join(work_dir, rel), [])}
            count += entry["num_examples"]
            lines.append(f"{entry['path']} {entry['sha256']}\n")
        splits[split] = SplitInfo(num_examples=count, num_shards=num_shards,
                                  file_pattern=transforms.shard_pattern(split, num_shards))
    windows = _count_windows(spec, splits)
    if spec.is_discrete:
        normalization = {}
    elif reader.fixed_normalization is not None:
        # "dabs": published statistics; "none": the reference feeds raw values / [0, 1] pixels.
        normalization = {"mean": list(reader.fixed_normalization["mean"]),
                         "std": list(reader.fixed_normalization["std"]),
                         "source": reader.fixed_normalization.get("source", "dabs")}
    else:
        (stats,) = manifest["stats"]
        if not stats["mean"]:
            raise PreprocessError(f"{spec.name}: the train split is empty; cannot compute statistics")
        normalization = {"mean": stats["mean"], "std": stats["std"], "source": "pipeline"}
    content_hash = hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()
    return dataclasses.replace(spec, splits=splits, normalization=normalization,
                               pipeline_version=PIPELINE_VERSION, command=command,
                               content_hash=content_hash,
                               protocol=dict(spec.protocol or reader.protocol or {}),
                               windows=windows)


def _count_windows(spec: DatasetSpec, splits: dict[str, SplitInfo]) -> dict[str, Any]:
    """`spec.windows` with each windowed split's stored series count as `records`; that split's
    `num_examples` becomes what one pass draws (`windows_per_epoch`; 0 without any series)."""
    windows = json.loads(json.dumps(spec.windows))
    for split, entry in windows.get("splits", {}).items():
        if split in splits:
            entry["records"] = splits[split].num_examples
            splits[split].num_examples = int(entry["windows_per_epoch"]) if entry["records"] else 0
    return windows


def _check_bad_records(name: str, bad: list[dict[str, str]], num_good: int, max_fraction: float):
    total = num_good + len(bad)
    fraction = len(bad) / total if total else 0.0
    if bad and fraction > max_fraction:
        listed = "\n".join(f"  {b['path']}: {b['reason']}" for b in bad[:_LIST_BAD_PATHS])
        more = f"\n  ... and {len(bad) - _LIST_BAD_PATHS} more" if len(bad) > _LIST_BAD_PATHS else ""
        raise PreprocessError(
            f"{name}: {len(bad)} of {total} raw records are unreadable or malformed "
            f"({fraction:.2%} > --max_bad_fraction={max_fraction}); nothing was written:\n"
            f"{listed}{more}"
        )


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def recover_interrupted(dataset_dir: str, version_dir: str) -> list[str]:
    """Cleans up after runs that were killed: returns what it removed or restored.

    - `.tmp-<pid>-<hex>`: an unfinished build; removed once its process is gone.
    - `.old-<hex>`: a previous version set aside by `_publish`; put back if the kill landed
      between the two renames (so no version is lost), otherwise removed.
    """
    actions = []
    if not os.path.isdir(dataset_dir):
        return actions
    for name in sorted(os.listdir(dataset_dir)):
        path = os.path.join(dataset_dir, name)
        if name.startswith(".tmp-"):
            pid = name.split("-")[1]
            if pid.isdigit() and _process_alive(int(pid)):
                continue
            shutil.rmtree(path, ignore_errors=True)
            actions.append(f"removed unfinished build {path}")
        elif name.startswith(".old-"):
            if not os.path.exists(version_dir) and os.path.isfile(os.path.join(path, SPEC_FILENAME)):
                os.rename(path, version_dir)
                actions.append(f"restored {version_dir} from {path}")
            else:
                shutil.rmtree(path, ignore_errors=True)
                actions.append(f"removed superseded copy {path}")
    return actions


def _publish(work_dir: str, version_dir: str) -> None:
    """Renames the finished temp dir into place, replacing an older copy of the version."""
    old = None
    if os.path.exists(version_dir):
        old = os.path.join(os.path.dirname(version_dir), f".old-{uuid.uuid4().hex}")
        os.rename(version_dir, old)
    os.rename(work_dir, version_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


# === entry points ===
def run(argv: list[str] | None = None) -> PreprocessResult | None:
    """Runs the job for command-line style `argv` (without the program name).

    Raises RawDataMissing, PreprocessError, KeyError (unknown dataset) on failure;
    returns None for `--list` (after printing the table).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args, beam_args = parse_args(argv)
    if args.list:
        print(list_datasets())
        return None
    start = time.time()
    reader_name, options = resolve_dataset(args, reader_options(args))
    data_dir = args.data_dir or os.path.join(DEFAULT_RAW_ROOT, registry.raw_folder(reader_name))
    output_dir = args.output_dir or default_output_dir()
    reader = registry.get_reader(reader_name, data_dir=data_dir, **options)
    reader.spec_template()  # first: a reader refuses bad flags before looking for data
    ensure_raw(reader, reader_name, data_dir, args)
    reader.prepare()
    spec = reader.spec_template()  # now: label maps may come from downloaded/extracted files
    sources = reader.list_sources()
    if not sources:
        raise RawDataMissing(f"{args.dataset}: no raw records found in {os.path.abspath(data_dir)}; "
                             f"expected {'; '.join(reader.expected_files())}")
    command = "python -m pipeline.preprocess " + shlex.join(argv)
    if runners.is_dask(beam_args):
        beam_args = runners.with_dask_defaults(beam_args, len(sources))
        # Before anything is written: a cluster that cannot run the job is a one-line error.
        runners.check_dask_cluster(beam_args, ["pipeline.transforms", type(reader).__module__])

    # The spec's name, not the flag: `--dataset custom --name mine` lands in <output_dir>/mine.
    dataset_dir = os.path.join(output_dir, spec.name)
    os.makedirs(dataset_dir, exist_ok=True)
    version_dir = os.path.join(dataset_dir, PIPELINE_VERSION)
    for action in recover_interrupted(dataset_dir, version_dir):
        logging.warning("%s (left by an interrupted run)", action)
    # The pid in the name lets a later run tell a dead build from one still in progress.
    work_dir = os.path.join(dataset_dir, f".tmp-{os.getpid()}-{uuid.uuid4().hex}")
    os.makedirs(os.path.join(work_dir, _MANIFEST_DIR))
    published = False
    try:
        logging.info("%s: %d sources from %s -> %s", args.dataset, len(sources), data_dir, version_dir)
        runners.run_graph(beam_args, lambda p: build_graph(
            p, reader, spec, sources, work_dir, args.seed, args.num_shards))
        bad = _read_manifest(work_dir)["bad"]
        final = _finish_spec(reader, spec, work_dir, args.num_shards, command)
        num_good = sum(s.num_examples for s in final.splits.values())
        _check_bad_records(args.dataset, bad, num_good, args.max_bad_fraction)
        if num_good == 0:
            raise PreprocessError(f"{args.dataset}: no readable examples in {data_dir}")
        shutil.rmtree(os.path.join(work_dir, _MANIFEST_DIR))
        final.save(work_dir)
        _publish(work_dir, version_dir)
        published = True
    finally:
        if not published:
            shutil.rmtree(work_dir, ignore_errors=True)
    result = PreprocessResult(spec=final, version_dir=version_dir, seconds=time.time() - start,
                              bad_records=bad)
    print(summary(result))
    return result


def summary(result: PreprocessResult) -> str:
    per_split = ", ".join(f"{k} {v.num_examples}" for k, v in result.spec.splits.items())
    rate = result.num_examples / max(result.seconds, 1e-9)
    skipped = f"; skipped {len(result.bad_records)} bad records" if result.bad_records else ""
    return (f"{result.spec.name}: wrote {result.num_examples} examples ({per_split}) to "
            f"{result.version_dir} in {result.seconds:.1f} s ({rate:.1f} examples/s){skipped}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # Beam's own INFO logging drowns the job's progress lines.
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    try:
        run(argv)
    except (RawDataMissing, PreprocessError, SpecError, KeyError, download.DownloadError,
            runners.RunnerError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {message}", file=sys.stderr)
        return 2 if isinstance(e, (RawDataMissing, runners.RunnerError)) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
