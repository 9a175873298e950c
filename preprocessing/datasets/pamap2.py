"""`pamap2`: DABS time-series domain, PAMAP2 physical activity monitoring (UCI 00231).

Raw format under `--raw_data_dir`: the official `PAMAP2_Dataset.zip` (members
`PAMAP2_Dataset/Protocol/subject10N.dat`), or that archive extracted (`Protocol/subject10N.dat`
at any depth). Each `.dat` line is 54 space-separated numbers: timestamp (s), activity id,
heart rate (bpm), then 3 IMUs (hand, chest, ankle) x 17 values (temperature, 3-D acceleration
+-16 g, 3-D acceleration +-6 g, 3-D gyroscope, 3-D magnetometer, 4 orientation values).
Missing readings are `NaN` (the heart-rate monitor runs at ~9 Hz, the IMUs at 100 Hz).

Example = 320 consecutive rows within one *activity run* (maximal stretch of consecutive lines
of one subject with the same activity id), with the 52 channels after timestamp and activity:
input float32 `[320, 52]`, tokens of 5 steps -> 64 tokens of 260 values. As in the reference
(reference/dabs_datasets.md, "Corrections"), windows are drawn, not cut:
- train (subjects 101-104, 107-109): every activity run is stored whole as a series record
  (preprocessing/series_records.py; a run longer than `max_series_rows` is stored as pieces
  overlapping by 319 rows, so every window lies in exactly one piece) and
  keras_metamae/data/windows.py draws each window when it is needed: a subject x activity pair
  uniformly (as the reference, which picks a subject and an activity, not a window), then an
  offset uniformly among that pair's windows. One pass is `windows_per_epoch` windows
  (50,000, the reference's TRAIN_EXAMPLES_PER_EPOCH); the probe's features come from one
  such pass, as the reference collects them once.
- test (subjects 105, 106): a fixed set of `test_windows` (10,000) windows drawn the same way
  with NumPy seeded by `test_seed`, stored as ordinary token examples, so every evaluation
  scores the same windows.
- There is no val split (the reference has none); the probe reports on test.
- A malformed line (wrong column count, non-numeric) becomes a BadRecord `<file>:<line>` and
  ends the current run, so no window straddles the gap it leaves.
- NaNs are linearly interpolated per channel within the run (edges take the nearest reading);
  a run in which some channel has no reading at all becomes one BadRecord.
- Activity 0 (transient), the ids outside the 12 protocol activities and runs shorter than 320
  rows are dropped.
Normalization: none (identity, source "none"): the reference feeds raw sensor values, and the
MSE scale sets the inner step.
Reader options (`--reader_option KEY=VALUE`): windows_per_epoch, test_windows, test_seed,
max_series_rows.
"""

from __future__ import annotations

import dataclasses
import glob
import io
import os
import re
import zipfile
from typing import Any, Iterable, Iterator

import numpy as np

from preprocessing.datasets.base import BadRecord, DatasetReader, RawDataMissing, RawExample
from preprocessing.series_records import RawSeries
from preprocessing.spec import DatasetSpec

ARCHIVE_NAME = "PAMAP2_Dataset.zip"
ARCHIVE_URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/00231/PAMAP2_Dataset.zip"
NUM_COLUMNS = 54
NUM_CHANNELS = 52
WINDOW = 320
PATCH = 5
# Protocol activity ids in label order; the label is the position in this tuple.
ACTIVITY_IDS = (1, 2, 3, 4, 5, 6, 7, 12, 13, 16, 17, 24)
ACTIVITY_NAMES = (
    "lying", "sitting", "standing", "walking", "running", "cycling", "Nordic walking",
    "ascending stairs", "descending stairs", "vacuum cleaning", "ironing", "rope jumping",
)
TRAIN_SUBJECTS = (101, 102, 103, 104, 107, 108, 109)
TEST_SUBJECTS = (105, 106)
# The reference's epoch of randomly drawn training windows, and its test set size.
WINDOWS_PER_EPOCH = 50_000
TEST_WINDOWS = 10_000
# Longer runs are stored as overlapping pieces, keeping a record under ~2 MB (8192 x 52 x 4 B).
MAX_SERIES_ROWS = 8192

_SUBJECT_RE = re.compile(r"(?:^|/)Protocol/subject(?P<subject>\d{3})\.dat$")


def subject_of(path: str) -> int | None:
    """The subject number of a `Protocol/subject10N.dat` path, else None."""
    m = _SUBJECT_RE.search(path.replace(os.sep, "/"))
    return int(m["subject"]) if m else None


def interpolate_nans(run: np.ndarray) -> np.ndarray | None:
    """Linear interpolation of NaNs along time, per channel; None if a channel is all NaN."""
    out = run.copy()
    steps = np.arange(run.shape[0])
    for c in range(run.shape[1]):
        column = out[:, c]
        missing = np.isnan(column)
        if not missing.any():
            continue
        if missing.all():
            return None
        # np.interp holds the first/last reading constant beyond the edges.
        column[missing] = np.interp(steps[missing], steps[~missing], column[~missing])
    return out


@dataclasses.dataclass
class ActivityRun:
    """A maximal run of consecutive lines of one subject with one protocol activity, NaNs
    interpolated: float32 `[rows, 52]` starting at line `first_line` of its file."""

    subject: int
    label: int
    first_line: int
    values: np.ndarray

    def window_id(self, offset: int) -> str:
        return f"subject{self.subject}-line{self.first_line + offset:07d}"


class PAMAP2Reader(DatasetReader):
    name = "pamap2"
    # Only the split names (and their order) matter here: the source decides by subject.
    split_fractions = (("train", 1.0), ("test", 0.0))
    fixed_normalization = {"mean": [0.0] * NUM_CHANNELS, "std": [1.0] * NUM_CHANNELS,
                           "source": "none"}
    protocol = {"pretrain": ["train"], "probe_train": ["train"], "probe_val": [],
                "probe_test": ["test"]}

    def __init__(self, data_dir: str | None = None, windows_per_epoch: int = WINDOWS_PER_EPOCH,
                 test_windows: int = TEST_WINDOWS, test_seed: int = 0,
                 max_series_rows: int = MAX_SERIES_ROWS, **options: Any):
        super().__init__(data_dir, **options)
        self.windows_per_epoch = _int_option("windows_per_epoch", windows_per_epoch, 1)
        self.test_windows = _int_option("test_windows", test_windows, 1)
        self.test_seed = _int_option("test_seed", test_seed, 0)
        self.max_series_rows = _int_option("max_series_rows", max_series_rows, WINDOW)

    def spec_template(self) -> DatasetSpec:
        return DatasetSpec(
            name=self.name,
            modality="time_series",
            input_shape=[WINDOW, NUM_CHANNELS],
            tokenizer="patch1d",
            patch_shape=[PATCH],
            num_tokens=WINDOW // PATCH,
            token_dim=PATCH * NUM_CHANNELS,
            token_grid=[WINDOW // PATCH],
            input_dtype="float32",
            task="multiclass",
            metric="accuracy",
            num_classes=len(ACTIVITY_IDS),
            label_names=list(ACTIVITY_NAMES),
            label_shape=[],
            label_dtype="int64",
            windows={"length": WINDOW, "sampling": "group_label",
                     "splits": {"train": {"windows_per_epoch": self.windows_per_epoch}}},
            extra={"raw_url": ARCHIVE_URL, "activity_ids": list(ACTIVITY_IDS),
                   "train_subjects": list(TRAIN_SUBJECTS), "test_subjects": list(TEST_SUBJECTS),
                   "test_windows": self.test_windows, "test_seed": self.test_seed,
                   "max_series_rows": self.max_series_rows},
        )

    def expected_files(self) -> list[str]:
        return [f"{ARCHIVE_NAME} (or its extracted Protocol/subject101.dat ... subject109.dat)"]

    # === locating the raw data ===
    def _data_dir(self) -> str:
        return self.data_dir or self.default_data_dir()

    def _archives(self) -> list[str]:
        d = self._data_dir()
        return sorted(glob.glob(os.path.join(d, "*.zip"))) if os.path.isdir(d) else []

    def _dat_files(self) -> list[str]:
        d = self._data_dir()
        if not os.path.isdir(d):
            return []
        found = []
        for root, dirs, files in os.walk(d):
            dirs.sort()
            found += [os.path.join(root, f) for f in sorted(files)
                      if subject_of(os.path.join(root, f)) is not None]
        return found

    def _missing(self, detail: str) -> RawDataMissing:
        d = os.path.abspath(self._data_dir())
        return RawDataMissing(
            f"pamap2: {detail}. Download {ARCHIVE_NAME} (about 650 MB) from {ARCHIVE_URL} and "
            f"put it in {d}/ (zipped or extracted so that Protocol/subject101.dat exists), or "
            f"pass --raw_data_dir to the folder that holds it."
        )

    def check_raw(self) -> None:
        if not self.list_sources():
            raise self._missing(f"no {ARCHIVE_NAME} and no Protocol/subject10N.dat files in "
                                f"{os.path.abspath(self._data_dir())}")

    def _subject_files(self) -> list[tuple[str, ...]]:
        """One locator per subject file: ("zip", archive, member) or ("file", path)."""
        files: list[tuple[str, ...]] = []
        for archive in self._archives():
            try:
                with zipfile.ZipFile(archive) as zf:
                    members = sorted(m for m in zf.namelist() if subject_of(m) is not None)
            except zipfile.BadZipFile as e:
                raise self._missing(f"{archive} is not a readable zip archive ({e})") from None
            files += [("zip", archive, m) for m in members]
        return files or [("file", path) for path in self._dat_files()]

    # === reading ===
    def list_sources(self) -> list[tuple[Any, ...]]:
        """("train", locator) per train subject file, and ONE ("test", locator, ...) for the
        test subjects: the fixed test windows are drawn over all test subject x activity pairs."""
        files = self._subject_files()
        test = tuple(f for f in files if subject_of(f[-1]) in TEST_SUBJECTS)
        sources: list[tuple[Any, ...]] = [("train", f) for f in files
                                          if subject_of(f[-1]) not in TEST_SUBJECTS]
        return sources + ([("test", *test)] if test else [])

    def read_source(self, source: tuple[Any, ...]) -> Iterator[RawExample | BadRecord]:
        kind, locators = source[0], source[1:]
        if kind == "train":
            for run in self._runs(locators[0]):
                if isinstance(run, BadRecord):
                    yield run
                else:
                    yield from self._series(run)
        elif kind == "test":
            runs = []
            for locator in locators:
                for run in self._runs(locator):
                    if isinstance(run, BadRecord):
                        yield run
                    else:
                        runs.append(run)
            yield from self.test_windows_of(runs)
        else:
            raise ValueError(f"pamap2: unknown source kind {kind!r}")

    def _runs(self, locator: tuple[str, ...]) -> Iterator[ActivityRun | BadRecord]:
        if locator[0] == "zip":
            _, archive, member = locator
            with zipfile.ZipFile(archive) as zf, zf.open(member) as raw:
                yield from self._read_lines(io.TextIOWrapper(raw, encoding="ascii",
                                                             errors="replace"),
                                            f"{archive}:{member}", subject_of(member))
        elif locator[0] == "file":
            path = locator[1]
            with open(path, encoding="ascii", errors="replace") as f:
                yield from self._read_lines(f, path, subject_of(path))
        else:
            raise ValueError(f"pamap2: unknown file locator {locator!r}")

    def _read_lines(self, lines: Iterable[str], where: str,
                    subject: int) -> Iterator[ActivityRun | BadRecord]:
        """Streams one subject file, yielding each activity run as it ends."""
        run_rows: list[np.ndarray] = []
        run_activity, run_start = None, 0
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            fields = line.split()
            row = None
            if len(fields) == NUM_COLUMNS:
                try:
                    row = np.array(fields, dtype=np.float64)
                except ValueError:
                    row = None
            if row is None or not np.isfinite(row[1]):
                yield from self._finish_run(run_rows, run_activity, run_start, where, subject)
                run_rows, run_activity = [], None
                yield BadRecord(path=f"{where}:{number}",
                                reason=f"expected {NUM_COLUMNS} space-separated numbers "
                                       f"(timestamp, activity id, 52 channels), got "
                                       f"{len(fields)} fields: {line.strip()[:80]!r}")
                continue
            activity = int(row[1])
            if activity != run_activity:
                yield from self._finish_run(run_rows, run_activity, run_start, where, subject)
                run_rows, run_activity, run_start = [], activity, number
            run_rows.append(row[2:])
        yield from self._finish_run(run_rows, run_activity, run_start, where, subject)

    def _finish_run(self, rows: list[np.ndarray], activity: int | None, first_line: int,
                    where: str, subject: int) -> Iterator[ActivityRun | BadRecord]:
        if activity not in ACTIVITY_IDS or len(rows) < WINDOW:
            return
        run = interpolate_nans(np.stack(rows))
        if run is None:
            yield BadRecord(path=f"{where}:{first_line}-{first_line + len(rows) - 1}",
                            reason=f"activity {activity} run has a channel without any "
                                   f"reading (all NaN); cannot interpolate")
            return
        yield ActivityRun(subject=subject, label=ACTIVITY_IDS.index(activity),
                          first_line=first_line, values=run.astype(np.float32))

    def _series(self, run: ActivityRun) -> Iterator[RawSeries]:
        """The run as series records of at most `max_series_rows` rows; consecutive pieces
        overlap by WINDOW - 1 rows, so each window start belongs to exactly one piece."""
        rows = run.values.shape[0]
        starts_per_piece = self.max_series_rows - WINDOW + 1
        for start in range(0, rows - WINDOW + 1, starts_per_piece):
            yield RawSeries(id=run.window_id(start),
                            input=run.values[start:start + self.max_series_rows],
                            label=run.label, split="train", group=f"subject{run.subject}")

    def test_windows_of(self, runs: list[ActivityRun]) -> Iterator[RawExample]:
        """`test_windows` windows, each: a subject x activity pair uniformly, then one of its
        windows uniformly (the sampling keras_metamae/data/windows.py uses for train), from NumPy
        seeded by `test_seed`; the same runs and options give the same windows."""
        if not runs:
            return
        pairs: dict[tuple[int, int], list[ActivityRun]] = {}
        for run in runs:
            pairs.setdefault((run.subject, run.label), []).append(run)
        keys = sorted(pairs)
        rng = np.random.default_rng(self.test_seed)
        pair_index = rng.integers(len(keys), size=self.test_windows)
        totals = np.array([sum(r.values.shape[0] - WINDOW + 1 for r in pairs[k]) for k in keys])
        slots = rng.integers(totals[pair_index])
        for draw, (p, slot) in enumerate(zip(pair_index, slots)):
            for run in pairs[keys[p]]:
                starts = run.values.shape[0] - WINDOW + 1
                if slot < starts:
                    break
                slot -= starts
            offset = int(slot)
            yield RawExample(id=f"{run.window_id(offset)}-draw{draw:05d}",
                             input=run.values[offset:offset + WINDOW], label=run.label,
                             split="test", group=f"subject{run.subject}")

    def split_of(self, example: RawExample, seed: int) -> str:
        subject = int(example.group.removeprefix("subject"))
        if subject not in TRAIN_SUBJECTS + TEST_SUBJECTS:
            raise ValueError(f"pamap2: subject {subject} is in neither the train subjects "
                             f"{TRAIN_SUBJECTS} nor the test subjects {TEST_SUBJECTS}")
        return example.split


def _int_option(name: str, value: Any, minimum: int) -> int:
    """A reader option given as an int or a `--reader_option` string."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or number < minimum:
        raise ValueError(f"pamap2: --reader_option {name}={value!r}, expected an integer "
                         f">= {minimum}")
    return number


READERS = {"pamap2": PAMAP2Reader}
