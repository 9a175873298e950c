"""`python -m pipeline.preprocess`: raw dataset -> tokenized, sharded TFRecords + spec.json.

    python -m pipeline.preprocess --dataset digits
    python -m pipeline.preprocess --dataset eurosat --raw_data_dir data/raw/eurosat --num_shards 16
    python -m pipeline.preprocess --list
    python -m pipeline.preprocess --dataset eurosat --dry_run
    python -m pipeline.preprocess --dataset eurosat -- --runner DataflowRunner --project P --region R

`--raw_data_dir` is the raw input (default data/raw/<dataset>), `--data_dir` the root of
processed datasets, the same folder train and evaluate read with `--data_dir` (default
$KERAS_METAMAE_DATA or data/processed). Everything after `--` goes to Beam's PipelineOptions
(`--runner`, `--direct_num_workers`, `--direct_running_mode`, Dataflow flags, ...), and so do
Beam's options given among this program's flags (`--runner=FnApiRunner --dataset digits`, as
Beam's examples take them); after `--` an option Beam does not know is an error, and before it
any flag neither this program nor Beam knows. Without `--runner`, and with
`--runner=DirectRunner`, the job runs on Beam's FnApiRunner, the batch engine behind the
DirectRunner, so nothing is downloaded (the DirectRunner would first try to fetch Prism).
`--runner=PrismRunner` still selects Prism explicitly. `-- --runner=DaskRunner
--dask_client_address=tcp://HOST:PORT` runs it on a dask.distributed cluster, after checking that
the scheduler and every worker can import this project (pipeline/runners.py).

Graph: one pass reads each source, splits, lays the examples out as tokens in the raw data's
own dtype (un-normalized; `DatasetSpec.storage`, e.g. uint16 EuroSAT bands) and spills
id-sorted runs of tf.train.Examples, which are merged into uncompressed TFRecord shards in a
seeded order; unless the reader has fixed DABS statistics or discrete tokens, the same read
gives the per-channel mean/std of the train split, which the tf.data reader applies. Only file
names pass between the stages, so memory stays bounded on the local runner too
(pipeline/transforms.py). The graph's one final leaf writes `_manifest/manifest.json`
(statistics, bad records, shards, stage timings), which the driver reads after the run; it
avoids what only some runners support (see pipeline/transforms.py), so it runs unchanged on any
of them. The summary line gives the seconds per stage (`PreprocessResult.stages`).

Output: `<data_dir>/<dataset>/<pipeline_version>/{spec.json,<split>/data-SSSSS-of-NNNNN.tfrecord}`.
The version is built in `<data_dir>/<dataset>/.tmp-<uuid>` and renamed into place only after
every check passed, so an interrupted or failed run never leaves a partial version behind.
`--data_dir` may be a `gs://` URL (pipeline/object_store.py: how a version is published there);
a `gs://` `--raw_data_dir` is copied to a local folder first (pipeline/raw_staging.py).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import time
import uuid
from typing import Any

from absl import flags

from commandline import cli, filesystem
from pipeline import job_progress, object_store, raw_staging, runners
from preprocessing import download, registry
from preprocessing.datasets.base import RawDataMissing
from preprocessing.official_files import official_files
from preprocessing.spec import PIPELINE_VERSION, SPEC_FILENAME, DatasetSpec, SpecError, SplitInfo

DEFAULT_DATASET = "digits"
PROGRAM_NAME = "python -m pipeline.preprocess"
DEFAULT_RAW_ROOT = os.path.join("data", "raw")
DATA_DIR_ENV = "KERAS_METAMAE_DATA"  # default --data_dir of preprocess, train and evaluate
DOWNLOAD_ENV = "KERAS_METAMAE_DOWNLOAD"  # default of --download (e.g. `never` on offline nodes)
_MANIFEST_DIR = "_manifest"  # driver-only side files inside the temp dir; removed before rename
_MANIFEST_FILE = "manifest.json"  # {"stats": [..], "bad": [..], "shards": [..], "timings": [..]}
_LIST_BAD_PATHS = 50


class PreprocessError(RuntimeError):
    """The job ran but its result must not be published (e.g. too many bad records)."""


@dataclasses.dataclass
class PreprocessResult:
    spec: DatasetSpec
    version_dir: str
    seconds: float
    bad_records: list[dict[str, str]]
    # {stage: {"seconds", ...}} in transforms.STAGES order (transforms.stage_seconds).
    stages: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

    @property
    def num_examples(self) -> int:
        return sum(s.num_examples for s in self.spec.splits.values())


def default_data_dir() -> str:
    """The root of processed datasets when --data_dir is not given (train's default too)."""
    return os.environ.get(DATA_DIR_ENV) or os.path.join("data", "processed")


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
    "numeric_columns": "custom csv: columns read as numbers (continuous tokens), comma-separated; "
                       "default: those whose every non-empty cell is a number",
    "categorical_columns": "custom csv: columns read as categories (discrete tokens, a "
                           "vocabulary per column), comma-separated; default: the others",
    "name": "dataset name written to spec.json and used as the output folder (custom)",
}
# `--dataset custom --format F` for the folder formats is served by its own reader.
FOLDER_FORMATS = {"image_folder": "custom_image_folder", "audio_folder": "custom_audio_folder"}

# Old spellings: an error saying what they became, never silently something else.
RENAMED_FLAGS = {
    "output_dir": "use --data_dir, the root of processed datasets (the same flag as in train and "
                  "evaluate); the raw input folder is now --raw_data_dir",
}
# What follows `--` on the command line (commandline/cli.py).
PASSTHROUGH = "Beam pipeline options"
LIST_ALL = "all"
# --list's table fits a terminal of this many columns.
LIST_WIDTH = 100
# `--list` alone lists every dataset; `--list NAME` describes one.
OPTIONAL_VALUES = {"list": LIST_ALL}


def is_passthrough_option(name: str) -> bool:
    return runners.is_beam_option(name)


def passthrough_takes_value(name: str) -> bool:
    return runners.beam_option_takes_value(name)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    def define(kind, name, default, help_text, **kwargs):
        getattr(flags, f"DEFINE_{kind}")(name, default, help_text, flag_values=flag_values, **kwargs)

    define("string", "dataset", DEFAULT_DATASET,
           f"Registered dataset name (default {DEFAULT_DATASET}; see --list).")
    define("string", "raw_data_dir", None,
           "Folder holding the raw files (default data/raw/<dataset>; datasets made from the same "
           "files share one, e.g. vqa -> data/raw/mscoco). A gs:// folder is copied to "
           "--raw_cache_dir first (what is already there with the same size is kept).")
    define("string", "raw_cache_dir", raw_staging.DEFAULT_CACHE,
           "Where a remote --raw_data_dir is copied before it is read: "
           "<raw_cache_dir>/gs/<bucket>/<folder>.")
    define("string", "data_dir", None,
           f"Root of processed datasets: <data_dir>/<dataset>/<version>/ is written there, where "
           f"train and evaluate --data_dir read it (default ${DATA_DIR_ENV} or data/processed).")
    define("integer", "seed", 42, "Seed of the split hash.")
    define("integer", "num_shards", 4, "Shards per split (at least 1).")
    define("float", "max_bad_fraction", 0.0,
           "Fail when more than this fraction of raw records is unreadable (0 to 1).")
    define("string", "list", None,
           "`--list`: the registered datasets and whether their raw files are present, one "
           "line each; `--list NAME`: that dataset's details (expected raw files, folder, "
           "metric). Then exits.")
    define("string", "download", None,
           "auto: when the raw files are missing, download the official ones (resumable, "
           "checksummed) into --raw_data_dir; never: only report what is missing (default "
           f"${DOWNLOAD_ENV} or auto).")
    define("string", "download_mirror", None,
           "Fetch the official files by name from this mirror URL instead (checksums are still "
           "verified).")
    define("float", "download_timeout", 30.0, "Seconds to wait for the download server.")
    for flag, help_text in READER_FLAGS.items():
        define("string", flag, None, f"Reader option: {help_text}.")
    define("multi_string", "reader_option", [],
           "Any other reader option, KEY=VALUE (repeatable), e.g. image_size=64.")


@dataclasses.dataclass
class JobOptions:
    """A preprocessing job, resolved from its flags (paths absolute)."""

    dataset: str
    reader_name: str  # the registered reader (`custom --format image_folder` has its own)
    reader_options: dict[str, str]
    reader_option_flags: dict[str, str]  # option -> how it was given, for error messages
    raw_data_dir: str  # local: the folder the readers open
    raw_data_dir_given: bool
    data_dir: str
    seed: int
    num_shards: int
    max_bad_fraction: float
    list: str | None  # LIST_ALL, a dataset name, or None
    download: str
    download_mirror: str | None
    download_timeout: float
    dry_run: bool
    beam_args: list[str]
    command: str
    # The remote --raw_data_dir that `raw_data_dir` mirrors (pipeline/raw_staging.py), or None.
    raw_source: str | None = None


def options_from_flags(values: flags.FlagValues, invocation: cli.Invocation) -> JobOptions:
    """Checks the flag values (UserError) and resolves them into a JobOptions."""
    if values.num_shards < 1:
        raise cli.UserError(f"invalid value {values.num_shards}", f"--num_shards {values.num_shards}",
                            "expected at least 1 shard per split")
    if not 0.0 <= values.max_bad_fraction <= 1.0:
        raise cli.UserError(f"invalid value {values.max_bad_fraction}",
                            f"--max_bad_fraction {values.max_bad_fraction}",
                            "expected a fraction from 0 to 1")
    if values.download_timeout <= 0:
        raise cli.UserError(f"invalid value {values.download_timeout}",
                            f"--download_timeout {values.download_timeout}",
                            "expected a positive number of seconds")
    download_mode = values.download or os.environ.get(DOWNLOAD_ENV) or "auto"
    if download_mode not in ("auto", "never"):
        where = f"--download {values.download}" if values.download else f"${DOWNLOAD_ENV}"
        raise cli.UserError(f"invalid value {download_mode!r}", where, "expected auto or never")
    given = {flag: values[flag].value for flag in READER_FLAGS if values[flag].value is not None}
    option_flags = {flag: f"--{flag} {value}" for flag, value in given.items()}
    for item in values.reader_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise cli.UserError("expected KEY=VALUE", f"--reader_option {item}",
                                "write the option as --reader_option KEY=VALUE")
        given[key] = value
        option_flags[key] = f"--reader_option {item}"
    reader_name, given = _reader_name(values.dataset, given)
    raw_data_dir = cli.storage_path(values.raw_data_dir, "--raw_data_dir")
    raw_source = None
    if raw_data_dir is not None and filesystem.is_url(raw_data_dir):
        raw_source = raw_data_dir
        raw_data_dir = raw_staging.local_mirror(
            raw_source, cli.local_path(values.raw_cache_dir, "--raw_cache_dir"))
    if raw_data_dir is None:
        try:
            folder = registry.raw_folder(reader_name)
        except KeyError:
            folder = reader_name  # an unknown --dataset is reported with the reader list
        raw_data_dir = os.path.abspath(os.path.join(DEFAULT_RAW_ROOT, folder))
    data_dir = cli.storage_path(values.data_dir, "--data_dir") or os.path.abspath(default_data_dir())
    try:
        runners.check_beam_options(invocation.passthrough)
    except runners.RunnerError as e:
        raise cli.UserError.wrap(e, "--", "see Beam's pipeline options") from None
    return JobOptions(
        dataset=values.dataset, reader_name=reader_name, reader_options=given,
        reader_option_flags=option_flags, raw_data_dir=raw_data_dir,
        raw_data_dir_given=values.raw_data_dir is not None, raw_source=raw_source,
        data_dir=data_dir, seed=values.seed,
        num_shards=values.num_shards, max_bad_fraction=values.max_bad_fraction, list=values.list,
        download=download_mode, download_mirror=values.download_mirror,
        download_timeout=values.download_timeout, dry_run=values.dry_run,
        beam_args=list(invocation.passthrough), command=invocation.command)


def _reader_name(dataset: str, options: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The registered reader name and its options (routes custom folder formats)."""
    if dataset == "custom" and options.get("format") in FOLDER_FORMATS:
        options = dict(options)
        return FOLDER_FORMATS[options.pop("format")], options
    return dataset, options


def parse_args(argv: list[str]) -> JobOptions:
    """The job of command-line style `argv` (without the program name); raises UserError."""
    values = flags.FlagValues()
    define_flags(values)
    cli.define_common_flags(values)
    invocation = cli.parse_command_line(
        values, argv, program=PROGRAM_NAME, renamed=RENAMED_FLAGS, passthrough=PASSTHROUGH,
        is_passthrough_option=is_passthrough_option, passthrough_takes_value=passthrough_takes_value,
        optional_values=OPTIONAL_VALUES)
    return options_from_flags(values, invocation)


# === --list ===
def _token_shape(spec: DatasetSpec) -> str:
    if spec.is_discrete:
        return f"{spec.num_tokens} ids (vocab {spec.vocab_size})"
    return f"{spec.num_tokens} x {spec.token_dim}"


def _dataset_row(name: str, raw_root: str) -> dict:
    """What --list says of one registered dataset; a reader that fails to load says why."""
    data_dir = os.path.join(raw_root, registry.raw_folder(name))
    row = {"dataset": name, "raw folder": data_dir}
    try:
        reader = registry.get_reader(name, data_dir=data_dir)
        spec = reader.spec_template()
    except ValueError as e:  # a reader that needs flags (custom): say which
        return dict(row, modality="any", tokens="by flags", classes="-", raw="-",
                    metric="-", expected=[str(e)])
    except Exception as e:  # one broken reader must not hide the others
        return dict(row, modality="?", tokens="?", classes="?", raw="reader error", metric="?",
                    expected=[f"reader error: {type(e).__name__}: {e}"])
    try:
        reader.check_raw()
        raw = "yes"
    except RawDataMissing:
        raw = f"no: {_download_note(name)}"
    return dict(row, modality=spec.modality, tokens=_token_shape(spec),
                classes=str(spec.num_classes), raw=raw, metric=spec.metric,
                expected=list(reader.expected_files()))


def list_datasets(raw_root: str = DEFAULT_RAW_ROOT) -> str:
    """A table of every registered dataset, at most LIST_WIDTH columns wide."""
    columns = ("dataset", "modality", "tokens", "classes", "raw")
    rows = [_dataset_row(name, raw_root) for name in registry.names()]
    cells = [list(columns)] + [[row[c] for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    # Only the last column can be long (a reader's error): it is cut at the width.
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
             for line in cells]
    lines = [line if len(line) <= LIST_WIDTH else line[:LIST_WIDTH - 3] + "..." for line in lines]
    lines.append(f"raw folders under {raw_root}/; details (expected files, metric): "
                 f"--list NAME")
    return "\n".join(lines)


def describe_dataset(name: str, raw_root: str = DEFAULT_RAW_ROOT) -> str:
    """--list NAME: one dataset's row, its metric, raw folder and expected raw files."""
    if name not in registry.names():
        raise cli.UserError(f"unknown dataset {name!r}", f"--list {name}",
                            f"expected one of {', '.join(registry.names())}")
    row = _dataset_row(name, raw_root)
    lines = [f"{key:<12} {row[key]}" for key in
             ("dataset", "modality", "tokens", "classes", "metric", "raw folder", "raw")]
    lines.append("expected raw files:")
    lines += [f"  {item}" for item in row["expected"]]
    return "\n".join(lines)


def _download_note(dataset: str) -> str:
    files = official_files(dataset)
    if not files:
        return "place by hand"
    sizes = [f.size for f in files]
    total = f" {download.human_bytes(sum(sizes))}" if all(sizes) else ""
    return f"download{total}"


# === raw files ===
def ensure_raw(reader, dataset: str, data_dir: str, job: JobOptions) -> None:
    """Returns once the reader finds its raw files, downloading the official ones if allowed.

    Raises RawDataMissing (nothing to read and no download possible; the message names the
    files, URLs and folder) or download.DownloadError (what arrived is not the official file).
    """
    try:
        reader.check_raw()
        return
    except RawDataMissing as missing:
        files = official_files(dataset)
        if job.download == "never" or not files:
            raise
        logging.info("%s: raw files missing in %s; downloading %s", dataset, data_dir,
                     ", ".join(f.describe() for f in files))
        try:
            download.ensure_raw_files(list(files), data_dir, mirror=job.download_mirror,
                                      timeout=job.download_timeout)
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
    spec = transforms.with_storage(spec, reader)
    indexed_sources = (p
                       | "Sources" >> beam.Create(list(enumerate(sources)), reshuffle=False)
                       # Spreads the (few, heavy) sources over the local runner's workers (on
                       # Dask, --dask_npartitions does; see pipeline/runners.py).
                       | "Spread" >> beam.Reshuffle())
    compute_stats = not spec.is_discrete and reader.fixed_normalization is None
    spill_dir = os.path.join(manifest, "spill")
    spilled = (indexed_sources
               | "TokenizeAndSpill" >> transforms.TokenizeAndSpill(
                   reader, spec, seed, num_shards, spill_dir, compute_stats))
    if compute_stats:  # from the moments the same read gave
        stats = (spilled[transforms.MOMENTS_TAG]
                 | "MergeStats" >> transforms.MergeStats(int(spec.input_shape[-1])))
    elif spec.is_discrete:
        stats = p | "NoStats" >> beam.Create([None])
    else:
        stats = p | "FixedStats" >> beam.Create([dict(reader.fixed_normalization)])
    bad = (spilled[transforms.BAD_TAG]
           | "BadToDict" >> beam.Map(lambda b: {"path": b.path, "reason": b.reason}))
    merged = (spilled[transforms.RUNS_TAG]
              | "MergeShards" >> transforms.MergeShards(work_dir, num_shards, spill_dir))
    timings = ((spilled[transforms.TIMINGS_TAG], merged[transforms.TIMINGS_TAG])
               | "Timings" >> beam.Flatten())
    # The one final leaf (some runners, e.g. Dask, compute only the last one).
    ({"stats": stats, "bad": bad, "shards": merged["shards"], "timings": timings}
     | "WriteManifest" >> transforms.WriteManifest(os.path.join(manifest, _MANIFEST_FILE)))


# === publishing ===
def _read_json(path: str):
    return json.loads(filesystem.read_text(path))


def _read_manifest(work_dir: str) -> dict[str, list[Any]]:
    manifest = _read_json(os.path.join(work_dir, _MANIFEST_DIR, _MANIFEST_FILE))
    return {kind: manifest.get(kind, []) for kind in ("stats", "bad", "shards", "timings")}


def _finish_spec(reader, spec: DatasetSpec, work_dir: str, num_shards: int, command: str) -> DatasetSpec:
    from pipeline import transforms

    spec = transforms.with_storage(spec, reader)
    manifest = _read_manifest(work_dir)
    shards = manifest["shards"]
    written = {(s["split"], s["shard"]): s for s in shards}
    split_names = [name for name, _ in reader.split_fractions]
    split_names += sorted({s["split"] for s in shards} - set(split_names))
    lines, splits = [], {}
    for split in split_names:
        count, sizes = 0, []
        for shard in range(num_shards):
            entry = written.get((split, shard))
            if entry is None:  # no example hashed here: an empty shard keeps the pattern complete
                rel = transforms.shard_path(split, shard, num_shards)
                entry = {"path": rel, "num_examples": 0,
                         "sha256": transforms.write_records(os.path.join(work_dir, rel), []),
                         "bytes": 0}
            count += entry["num_examples"]
            sizes.append(entry["bytes"])
            lines.append(f"{entry['path']} {entry['sha256']}\n")
        splits[split] = SplitInfo(num_examples=count, num_shards=num_shards,
                                  file_pattern=transforms.shard_pattern(split, num_shards),
                                  shard_bytes=sizes)
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
            f"{name}: {len(bad)} of {total} raw records are unreadable or malformed, "
            f"{fraction:.2%} of them (--max_bad_fraction {max_fraction}): fix or remove them, or "
            f"accept that share with --max_bad_fraction; nothing was written. The bad records:\n"
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
    if filesystem.is_url(dataset_dir):
        return object_store.recover(dataset_dir, version_dir, _process_alive)
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
    if filesystem.is_url(version_dir):  # no atomic rename there: pipeline/object_store.py
        object_store.publish(work_dir, version_dir)
        return
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

    Raises cli.UserError (a bad flag), RawDataMissing, PreprocessError, ... on failure;
    returns None for `--list` and `--dry_run` (after printing).
    """
    return run_job(parse_args(list(sys.argv[1:] if argv is None else argv)))


def _reader(job: JobOptions, data_dir: str):
    """The dataset's reader; a dataset or reader option it refuses is a UserError."""
    options = dict(job.reader_options)
    if job.reader_name == "custom":  # csv vocabularies come from the train split: its seed
        options["split_seed"] = job.seed
    try:
        reader = registry.get_reader(job.reader_name, data_dir=data_dir, **options)
        reader.spec_template()  # a reader refuses bad options here, before looking for data
        return reader
    except KeyError as e:
        raise cli.UserError(f"unknown dataset {job.dataset!r}", f"--dataset {job.dataset}",
                            f"pick one of `{PROGRAM_NAME} --list`: {', '.join(registry.names())}"
                            ) from e
    except (ValueError, TypeError) as e:
        if isinstance(e, cli.UserError):
            raise
        raise cli.UserError.wrap(e, _option_at_fault(str(e), job),
                                 f"see the reader options in `{PROGRAM_NAME} --help`") from e


def _option_at_fault(message: str, job: JobOptions) -> str:
    """The reader option a reader's complaint is about, as the user gave it (or should give
    it): the last flag the message names ("custom --format npy: ... need --patch_shape"), else
    an option whose name it mentions ("image_size=32 is not divisible by patch_size=5")."""
    for name in reversed(re.findall(r"--(\w+)", message)):
        if name in job.reader_option_flags:
            return job.reader_option_flags[name]
        if name in READER_FLAGS:
            return f"--{name}"
    mentioned = [flag for key, flag in job.reader_option_flags.items() if key in message]
    if mentioned:
        return mentioned[-1]
    return next(iter(job.reader_option_flags.values()), f"--dataset {job.dataset}")


def _holds_processed_datasets(folder: str) -> bool:
    return bool(glob.glob(os.path.join(glob.escape(folder), "*", "*", SPEC_FILENAME)))


def _finds_raw_files(job: JobOptions, folder: str) -> bool:
    try:
        _reader(job, folder).check_raw()
    except RawDataMissing:
        return False
    return True


def _check_old_data_dir_meaning(job: JobOptions) -> None:
    """Before the rename, preprocess's --data_dir was the raw input: refuse a --data_dir that
    holds this dataset's raw files instead of silently writing processed data into it."""
    folder = job.data_dir
    if job.raw_data_dir_given or not os.path.isdir(folder) or _holds_processed_datasets(folder):
        return
    # A reader that needs no raw files (digits: embedded) finds them anywhere: no sign.
    nowhere = os.path.join(folder, f".no-such-folder-{uuid.uuid4().hex}")
    if _finds_raw_files(job, folder) and not _finds_raw_files(job, nowhere):
        raise cli.UserError(
            f"--data_dir holds raw {job.dataset} files", f"--data_dir {folder}",
            f"--data_dir is now the root of processed datasets (it was --output_dir); pass the "
            f"raw input as --raw_data_dir {folder}")


def _check_inputs(reader, job: JobOptions) -> None:
    """A reader's checks of its files that need the job's options (custom data: the share of
    rows holding NaN or inf against --max_bad_fraction); before anything is written."""
    check = getattr(reader, "check_inputs", None)
    if check is None:
        return
    try:
        check(job.max_bad_fraction)
    except ValueError as e:
        raise cli.UserError.wrap(e, f"--raw_data_dir {job.raw_data_dir}",
                                 "fix the file it names") from e


def _describe_protocol(spec: DatasetSpec) -> str:
    """Which splits pretraining and the probe read (the spec's protocol, defaults filled)."""
    roles = {role: "+".join(spec.protocol_splits(role)) for role in
             ("pretrain", "probe_train", "probe_val", "probe_test")}
    if spec.is_pretrain_only:
        return f"pretrain on {roles['pretrain']}; no labels, nothing to probe (pretrain-only)"
    # Before the job ran a spec has no splits: the default probe_val is `val` if it gets any.
    val = roles["probe_val"] or ("val" if "probe_val" not in spec.protocol else "-")
    return (f"pretrain on {roles['pretrain']}; probe trains on {roles['probe_train']}, "
            f"selects on {val}, reports on {roles['probe_test']}")


def describe_job(job: JobOptions) -> str:
    """What the job would do (--dry_run): nothing is downloaded, copied or written."""
    dataset_line = (f"dataset      {job.dataset} (reader {job.reader_name}"
                    + (f"; options {job.reader_options}" if job.reader_options else "") + ")")
    if job.raw_source:
        names = filesystem.files_under(job.raw_source)
        total = sum(filesystem.size(f"{job.raw_source.rstrip('/')}/{n}") for n in names)
        raw = f"would be copied from {job.raw_source}: {len(names)} files, {total / 1e6:.1f} MB"
    try:
        reader = _reader(job, job.raw_data_dir)
        spec = reader.spec_template()
    except (cli.UserError, RawDataMissing):
        if not job.raw_source:
            raise
        # A reader that looks at its files (custom data) can say more once they are copied.
        return "\n".join([dataset_line, f"raw input    {job.raw_data_dir} ({raw})",
                          f"output       under {job.data_dir}",
                          "tokens and protocol: known once the raw files are copied",
                          "nothing was written (--dry_run)"])
    if not job.raw_source:
        try:
            reader.check_raw()
            raw = "present"
        except RawDataMissing:
            files = official_files(job.reader_name)
            raw = ("missing; would download " + ", ".join(f.describe() for f in files)
                   if files and job.download == "auto" else "missing (the job would stop there)")
    version_dir = os.path.join(job.data_dir, spec.name, PIPELINE_VERSION)
    runner = runners.runner_name(job.beam_args) if job.beam_args else None
    note = getattr(reader, "input_size_note", lambda: None)() if raw == "present" else None
    columns = getattr(reader, "columns_note", lambda: None)()
    lines = [
        dataset_line,
        f"raw input    {job.raw_data_dir} ({raw})",
        f"tokens       {_token_shape(spec)}, {spec.modality}, task {spec.task}",
        f"protocol     {_describe_protocol(spec)}",
        f"output       {version_dir}"
        + (" (exists; would be replaced)" if filesystem.isdir(version_dir) else " (new)"),
        f"shards       {job.num_shards} per split, split seed {job.seed}, "
        f"--max_bad_fraction {job.max_bad_fraction}",
        f"runner       {runner or 'FnApiRunner (local)'}"
        + (f"; Beam options {' '.join(job.beam_args)}" if job.beam_args else ""),
        *([f"note         {note}"] if note else []),
        *([f"{columns}"] if columns else []),
        "nothing was written (--dry_run)",
    ]
    return "\n".join(lines)


def run_job(job: JobOptions) -> PreprocessResult | None:
    """Runs a resolved job. Raises RawDataMissing, PreprocessError, cli.UserError, ..."""
    if job.list:
        print(list_datasets() if job.list == LIST_ALL else describe_dataset(job.list))
        return None
    if job.dry_run:
        print(describe_job(job))
        return None
    start = time.time()
    _check_old_data_dir_meaning(job)
    data_dir = job.raw_data_dir
    if job.raw_source:
        copied, size = raw_staging.stage(job.raw_source, data_dir)
        print(f"raw files: {copied} copied ({size / 1e6:.1f} MB) from {job.raw_source} to "
              f"{data_dir}" + ("" if copied else " (all there already)"))
    reader = _reader(job, data_dir)
    # Before anything is downloaded or written: the output must be writable.
    cli.check_writable(job.data_dir, "--data_dir")
    ensure_raw(reader, job.reader_name, data_dir, job)
    reader.prepare()
    spec = reader.spec_template()  # now: label maps may come from downloaded/extracted files
    _check_inputs(reader, job)
    sources = reader.list_sources()
    if not sources:
        raise RawDataMissing(f"{job.dataset}: no raw records found in {data_dir}; "
                             f"expected {'; '.join(reader.expected_files())}")
    # e.g. images of several sizes, all resized to the spec's: said once, with a count.
    note = getattr(reader, "input_size_note", lambda: None)()
    if note:
        logging.warning("%s", note)
    columns = getattr(reader, "columns_note", lambda: None)()
    if columns:  # a csv with categorical columns: which columns became which tokens
        print(columns)
    beam_args = job.beam_args
    if runners.is_dask(beam_args):
        beam_args = runners.with_dask_defaults(beam_args, len(sources))
        # Before anything is written: a cluster that cannot run the job is a one-line error.
        runners.check_dask_cluster(beam_args, ["pipeline.transforms", type(reader).__module__])

    # The spec's name, not the flag: `--dataset custom --name mine` lands in <data_dir>/mine.
    dataset_dir = os.path.join(job.data_dir, spec.name)
    created = cli.make_dirs(dataset_dir)
    version_dir = os.path.join(dataset_dir, PIPELINE_VERSION)
    for action in recover_interrupted(dataset_dir, version_dir):
        logging.warning("%s (left by an interrupted run)", action)
    # The pid in the name lets a later run tell a dead build from one still in progress.
    work_dir = os.path.join(dataset_dir, f".tmp-{os.getpid()}-{uuid.uuid4().hex}")
    filesystem.makedirs(os.path.join(work_dir, _MANIFEST_DIR))
    published = False
    try:
        logging.info("%s: %d sources from %s -> %s", job.dataset, len(sources), data_dir, version_dir)
        graph_start = time.time()
        # A progress line on stderr while the graph runs (pipeline/job_progress.py).
        with job_progress.JobProgress(spec.name, beam_args, len(sources), work_dir):
            runners.run_graph(beam_args, lambda p: build_graph(
                p, reader, spec, sources, work_dir, job.seed, job.num_shards))
        graph_end = time.time()
        bad, timings = (_read_manifest(work_dir)[kind] for kind in ("bad", "timings"))
        final = _finish_spec(reader, spec, work_dir, job.num_shards, job.command)
        num_good = sum(s.num_examples for s in final.splits.values())
        _check_bad_records(job.dataset, bad, num_good, job.max_bad_fraction)
        if num_good == 0:
            raise PreprocessError(f"{job.dataset}: no readable examples in {data_dir}")
        filesystem.rmtree(os.path.join(work_dir, _MANIFEST_DIR))
        final.save(work_dir)
        _publish(work_dir, version_dir)
        published = True
    finally:
        if not published:
            filesystem.rmtree(work_dir)
            cli.remove_if_empty(created)  # a failed first run leaves no empty folders behind
    from pipeline import transforms

    end = time.time()
    result = PreprocessResult(spec=final, version_dir=version_dir, seconds=end - start,
                              bad_records=bad, stages=transforms.stage_seconds(
                                  timings, start, graph_start, graph_end, end))
    print(summary(result))
    return result


def summary(result: PreprocessResult) -> str:
    per_split = ", ".join(f"{k} {v.num_examples}" for k, v in result.spec.splits.items())
    rate = result.num_examples / max(result.seconds, 1e-9)
    skipped = f"; skipped {len(result.bad_records)} bad records" if result.bad_records else ""
    if result.spec.is_pretrain_only:  # e.g. a csv whose label column has another name
        skipped += "; no labels found: pretrain-only (see the README on your own data)"
    stages = ""
    if result.stages:
        from pipeline import transforms

        stages = f"\nstages: {transforms.format_stages(result.stages)}"
    return (f"{result.spec.name}: wrote {result.num_examples} examples ({per_split}) to "
            f"{result.version_dir} in {result.seconds:.1f} s ({rate:.1f} examples/s){skipped}"
            f"{stages}")


def _user_error(error: Exception, job: JobOptions) -> cli.UserError:
    """An expected failure of the job as the one-line error the command prints."""
    raw = f"--raw_data_dir {job.raw_data_dir}"
    if isinstance(error, raw_staging.RawStagingError):
        return cli.UserError.wrap(error, raw, "put the raw files there")
    if isinstance(error, RawDataMissing):
        return cli.UserError.wrap(error, raw, "put the raw files there (`--list` names them), or "
                                  "pass the folder that holds them as --raw_data_dir")
    if isinstance(error, download.DownloadError):
        return cli.UserError.wrap(error, raw, "rerun to resume the download, or place the "
                                  "official file there by hand")
    if isinstance(error, PreprocessError):
        return cli.UserError.wrap(error, raw, "fix or remove the bad records, or accept them "
                                  "with --max_bad_fraction")
    if isinstance(error, SpecError):
        return cli.UserError.wrap(error, f"--dataset {job.dataset}",
                                  "check the reader options (`--help`)")
    return cli.UserError.wrap(error, "--", "see the Beam options after `--`")


# The exit status of a job stopped by each signal.
_STOP_STATUS = {"SIGINT": 130, "SIGTERM": 143}


def _raise_interrupt(signum, frame):
    """SIGTERM or Ctrl-C, raised in the main thread as a KeyboardInterrupt that names the
    signal (Beam re-raises a KeyboardInterrupt with a message as one), so the job's `finally`
    removes its unfinished build; a second one acts as the system's default at once."""
    for stop in _STOP_STATUS:
        signal.signal(getattr(signal, stop), signal.default_int_handler if stop == "SIGINT"
                      else signal.SIG_DFL)
    raise KeyboardInterrupt(signal.Signals(signum).name)


class _NoInterruptTracebacks(logging.Filter):
    """Beam logs the KeyboardInterrupt that stops a bundle, with its traceback, before it
    re-raises it; the command says it in one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt))


def interrupted_line(job: JobOptions, error: KeyboardInterrupt) -> tuple[str, int]:
    """(the one line an interrupted job prints, its exit status: 143 SIGTERM, 130 Ctrl-C)."""
    message = str(error.args[0]) if error.args else "SIGINT"  # "SIGTERM [while running ...]"
    received = next((stop for stop in _STOP_STATUS if message.startswith(stop)), "SIGINT")
    name, status = ("Ctrl-C" if received == "SIGINT" else received), _STOP_STATUS[received]
    return (f"interrupted: {name} stopped preprocess {job.dataset}; its unfinished build was "
            f"removed and no version was written or changed under {job.data_dir}; rerun the "
            f"same command to start again: {job.command}", status)


def main(invocation: cli.Invocation) -> int:
    """The command (absl): `cli.run_program` parses the flags into FLAGS first."""
    # Beam's own INFO logging drowns the job's progress lines.
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    job = options_from_flags(flags.FLAGS, invocation)
    previous = {stop: signal.signal(getattr(signal, stop), _raise_interrupt)
                for stop in _STOP_STATUS}
    # On the handlers: a logger's own filters do not see its children's records.
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _NoInterruptTracebacks) for f in handler.filters):
            handler.addFilter(_NoInterruptTracebacks())
    try:
        run_job(job)
    except (RawDataMissing, PreprocessError, SpecError, download.DownloadError,
            runners.RunnerError, raw_staging.RawStagingError) as e:
        raise _user_error(e, job) from e
    except KeyboardInterrupt as e:
        # The build's own `finally` has removed its temporary folder by now.
        line, status = interrupted_line(job, e)
        sys.stdout.flush()
        print(line, file=sys.stderr, flush=True)
        return status
    finally:
        for stop, handler in previous.items():
            if signal.getsignal(getattr(signal, stop)) is _raise_interrupt:
                signal.signal(getattr(signal, stop), handler)
    return 0


if __name__ == "__main__":
    cli.run_program(sys.modules[__name__])
