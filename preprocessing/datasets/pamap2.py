"""`pamap2`: DABS time-series domain, PAMAP2 physical activity monitoring (UCI 00231).

Raw format under `--data_dir`: the official `PAMAP2_Dataset.zip` (members
`PAMAP2_Dataset/Protocol/subject10N.dat`), or that archive extracted (`Protocol/subject10N.dat`
at any depth). Each `.dat` line is 54 space-separated numbers: timestamp (s), activity id,
heart rate (bpm), then 3 IMUs (hand, chest, ankle) x 17 values (temperature, 3-D acceleration
+-16 g, 3-D acceleration +-6 g, 3-D gyroscope, 3-D magnetometer, 4 orientation values).
Missing readings are `NaN` (the heart-rate monitor runs at ~9 Hz, the IMUs at 100 Hz).

Example = 320 consecutive rows within one *activity run* (maximal stretch of consecutive lines
with the same activity id), with the 52 channels after timestamp and activity:
input float32 `[320, 52]`, tokens of 5 steps -> 64 tokens of 260 values.
- Windows do not overlap (stride 320, `window_stride` option) and a run's remainder shorter than
  320 rows is dropped. A malformed line (wrong column count, non-numeric) becomes a BadRecord
  `<file>:<line>` and ends the current run, so no window straddles the gap it leaves.
- NaNs are linearly interpolated per channel within the run (edges take the nearest reading);
  a run in which some channel has no reading at all becomes one BadRecord.
- Activity 0 (transient) and the ids outside the 12 protocol activities are dropped.

Splits by subject (DABS): train 101-104, 107-109; test 105, 106. `val` is a deterministic 10 %
of the train subjects' windows (seeded hash of the window id): it is for monitoring training, so
it shares subjects with train; the subject-disjoint test split is the one to report.
Normalization: per-channel mean/std computed by the pipeline on the train split.
"""

from __future__ import annotations

import glob
import io
import os
import re
import zipfile
from typing import Any, Iterable, Iterator

import numpy as np

from preprocessing.datasets.base import (BadRecord, DatasetReader, RawDataMissing, RawExample,
                                         split_by_fractions)
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
VAL_FRACTION_OF_TRAIN = 0.1

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


class PAMAP2Reader(DatasetReader):
    name = "pamap2"
    # Only the split names (and their order) matter here: `split_of` decides by subject.
    split_fractions = (("train", 0.9), ("val", 0.1), ("test", 0.0))

    def __init__(self, data_dir: str | None = None, window_stride: int = WINDOW, **options: Any):
        super().__init__(data_dir, **options)
        self.window_stride = int(window_stride)
        if self.window_stride < 1:
            raise ValueError(f"pamap2: window_stride={window_stride}, expected >= 1")

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
            extra={"raw_url": ARCHIVE_URL, "activity_ids": list(ACTIVITY_IDS),
                   "window_stride": self.window_stride,
                   "train_subjects": list(TRAIN_SUBJECTS), "test_subjects": list(TEST_SUBJECTS)},
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
            f"pass --data_dir to the folder that holds it."
        )

    def check_raw(self) -> None:
        if not self.list_sources():
            raise self._missing(f"no {ARCHIVE_NAME} and no Protocol/subject10N.dat files in "
                                f"{os.path.abspath(self._data_dir())}")

    # === reading ===
    def list_sources(self) -> list[tuple[str, ...]]:
        """One source per subject file: ("zip", archive, member) or ("file", path)."""
        sources: list[tuple[str, ...]] = []
        for archive in self._archives():
            try:
                with zipfile.ZipFile(archive) as zf:
                    members = sorted(m for m in zf.namelist() if subject_of(m) is not None)
            except zipfile.BadZipFile as e:
                raise self._missing(f"{archive} is not a readable zip archive ({e})") from None
            sources += [("zip", archive, m) for m in members]
        if sources:
            return sources
        return [("file", path) for path in self._dat_files()]

    def read_source(self, source: tuple[str, ...]) -> Iterator[RawExample | BadRecord]:
        if source[0] == "zip":
            _, archive, member = source
            where = f"{archive}:{member}"
            with zipfile.ZipFile(archive) as zf, zf.open(member) as raw:
                yield from self._read_lines(io.TextIOWrapper(raw, encoding="ascii",
                                                             errors="replace"),
                                            where, subject_of(member))
        elif source[0] == "file":
            path = source[1]
            with open(path, encoding="ascii", errors="replace") as f:
                yield from self._read_lines(f, path, subject_of(path))
        else:
            raise ValueError(f"pamap2: unknown source kind {source[0]!r}")

    def _read_lines(self, lines: Iterable[str], where: str,
                    subject: int) -> Iterator[RawExample | BadRecord]:
        """Streams one subject file: collects each activity run, then windows it."""
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
                yield from self._windows(run_rows, run_activity, run_start, where, subject)
                run_rows, run_activity = [], None
                yield BadRecord(path=f"{where}:{number}",
                                reason=f"expected {NUM_COLUMNS} space-separated numbers "
                                       f"(timestamp, activity id, 52 channels), got "
                                       f"{len(fields)} fields: {line.strip()[:80]!r}")
                continue
            activity = int(row[1])
            if activity != run_activity:
                yield from self._windows(run_rows, run_activity, run_start, where, subject)
                run_rows, run_activity, run_start = [], activity, number
            run_rows.append(row[2:])
        yield from self._windows(run_rows, run_activity, run_start, where, subject)

    def _windows(self, rows: list[np.ndarray], activity: int | None, first_line: int,
                 where: str, subject: int) -> Iterator[RawExample | BadRecord]:
        if activity not in ACTIVITY_IDS or len(rows) < WINDOW:
            return
        run = interpolate_nans(np.stack(rows))
        if run is None:
            yield BadRecord(path=f"{where}:{first_line}-{first_line + len(rows) - 1}",
                            reason=f"activity {activity} run has a channel without any "
                                   f"reading (all NaN); cannot interpolate")
            return
        label = ACTIVITY_IDS.index(activity)
        for start in range(0, len(rows) - WINDOW + 1, self.window_stride):
            yield RawExample(
                id=f"subject{subject}-line{first_line + start:07d}",
                input=run[start:start + WINDOW].astype(np.float32),
                label=label,
                group=f"subject{subject}",
            )

    def split_of(self, example: RawExample, seed: int) -> str:
        subject = int(example.group.removeprefix("subject"))
        if subject in TEST_SUBJECTS:
            return "test"
        if subject not in TRAIN_SUBJECTS:
            raise ValueError(f"pamap2: subject {subject} is in neither the train subjects "
                             f"{TRAIN_SUBJECTS} nor the test subjects {TEST_SUBJECTS}")
        return split_by_fractions(example.id, seed, (("train", 1 - VAL_FRACTION_OF_TRAIN),
                                                     ("val", VAL_FRACTION_OF_TRAIN)))


READERS = {"pamap2": PAMAP2Reader}
