"""`higgs` and `higgs-transfer`: DABS tabular domain, the UCI HIGGS data set (UCI 00280).

Raw format under `--raw_data_dir`: the official `HIGGS.csv.gz` (or the decompressed `HIGGS.csv`):
11,000,000 lines, no header, 29 comma-separated numbers per line: column 0 the class label
(1.0 = signal, 0.0 = background), then 21 low-level kinematic features and 7 high-level
features derived from them. Example: input float32 `[28]`, one token per feature (28 tokens of 1).

Pretrain/transfer partition as DABS (`PRETRAIN_PROPORTION = 0.9` of the 11,000,000 rows, its
head `math.ceil` and tail `math.floor`): the first 9,900,000 rows are `higgs` (pretraining) and
the last 1,100,000 are `higgs-transfer`. (UCI's own test set is only the last 500,000; DABS
does not use it.) The boundary is the `pretrain_rows` reader option (so miniature files can be
cut anywhere). Within each, examples are split 90/10 train/test by a seeded hash of the line
number (`--seed`, default 42; DABS shuffles with seed 42 and cuts 90/10): the same line lands
in the same split on every run, runner and machine. The probe trains on `higgs-transfer`'s
train split (~990,000 rows) and reports on its test split (~110,000).

Input scale: the raw feature values, as the reference feeds them (identity normalization,
source "none"; no per-feature z-score).

A prepared TFDS `higgs` dataset (`higgs/<version>/dataset_info.json`; one `train` split of
11,000,000 examples: `class_label` float32 and the 28 features as float64, named as in
TFDS_FEATURE_NAMES) is read instead when the CSV is absent, `rows_per_source` examples per
source, nothing downloaded. TFDS stores the rows in its own (hashed) order and not the line
numbers, so the boundary counts TFDS examples: the first `pretrain_rows` are `higgs`, the rest
`higgs-transfer` - exactly DABS's partition, which DABS cut from the same TFDS order. Example ids are
`higgs-tfds-<index>` and split 90/10 by the same seeded hash. A record with a non-finite value
or a label other than 0/1 becomes a BadRecord `tfds:<dir>:train[<index>]`.

The 11M-line file is never loaded whole. The Beam job reads `rows_per_source` lines per source
(the driver counts lines once to plan them); by default a source has at least
MIN_ROWS_PER_SOURCE lines, and a .gz file is cut into at most MAX_GZIP_SOURCES sources planned
from an estimate of its line count, the last one open-ended, so the driver decompresses only a
sample (`_line_ranges.plan_gzip_line_ranges`; a worker resumes the stream from its
checkpoints). Lines are read in blocks of ROWS_PER_BATCH, parsed at once by pyarrow's CSV
parser (a dependency of Apache Beam): per-line Python parsing cost more than everything else
the job does per row. A block that parser does not take whole (any malformed line) is parsed
again line by line, as `read_source` always does, so the same lines are accepted with the same
values. Malformed lines (wrong column count, non-numeric or non-finite values, a label other
than 0/1) become BadRecords `<file>:<line>`.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np

from preprocessing.datasets import _line_ranges, _tfds
from preprocessing.datasets.base import BadRecord, DatasetReader, RawBatch, RawDataMissing, RawExample
from preprocessing.spec import DatasetSpec

FILE_NAMES = ("HIGGS.csv.gz", "HIGGS.csv")
FILE_URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/00280/HIGGS.csv.gz"
NUM_FEATURES = 28
TOTAL_ROWS = 11_000_000
PRETRAIN_ROWS = 9_900_000  # DABS: math.ceil(0.9 * 11,000,000); the rest (1,100,000) is transfer
ROWS_PER_SOURCE = 500_000  # TFDS examples per source
# Without a `rows_per_source` option the CSV is cut into sources of at least MIN_ROWS_PER_SOURCE
# lines (so 2 workers share a 200k-row file), a .gz file into at most MAX_GZIP_SOURCES (a worker
# that reads several resumes the stream from its checkpoints, but each worker decompresses up to
# its furthest source).
MIN_ROWS_PER_SOURCE = 100_000
MAX_GZIP_SOURCES = 8
ROWS_PER_BATCH = 8192  # lines parsed at once
FEATURE_NAMES = (
    "lepton_pT", "lepton_eta", "lepton_phi", "missing_energy_magnitude", "missing_energy_phi",
    "jet1_pt", "jet1_eta", "jet1_phi", "jet1_b_tag",
    "jet2_pt", "jet2_eta", "jet2_phi", "jet2_b_tag",
    "jet3_pt", "jet3_eta", "jet3_phi", "jet3_b_tag",
    "jet4_pt", "jet4_eta", "jet4_phi", "jet4_b_tag",
    "m_jj", "m_jjj", "m_lv", "m_jlv", "m_bb", "m_wbb", "m_wwbb",
)
LABEL_NAMES = ("background", "signal")
# The same 28 features as named by the TFDS `higgs` builder (its CSV field names).
TFDS_FEATURE_NAMES = (
    "lepton_pT", "lepton_eta", "lepton_phi", "missing_energy_magnitude", "missing_energy_phi",
    "jet_1_pt", "jet_1_eta", "jet_1_phi", "jet_1_b-tag",
    "jet_2_pt", "jet_2_eta", "jet_2_phi", "jet_2_b-tag",
    "jet_3_pt", "jet_3_eta", "jet_3_phi", "jet_3_b-tag",
    "jet_4_pt", "jet_4_eta", "jet_4_phi", "jet_4_b-tag",
    "m_jj", "m_jjj", "m_lv", "m_jlv", "m_bb", "m_wbb", "m_wwbb",
)


def parse_row(line: str) -> tuple[int, np.ndarray]:
    """`(label, features[28])` of one HIGGS line; raises ValueError describing what is wrong."""
    fields = line.split(",")
    if len(fields) != NUM_FEATURES + 1:
        raise ValueError(f"expected {NUM_FEATURES + 1} comma-separated numbers (label, "
                         f"{NUM_FEATURES} features), got {len(fields)} fields")
    return check_values(np.array(fields, dtype=np.float64))  # ValueError on non-numeric text


def parse_rows(text: bytes, num_lines: int) -> np.ndarray | None:
    """`[num_lines, 29]` float64 of `num_lines` well-formed HIGGS lines joined by newlines
    (label 0/1, 28 finite numbers), parsed in one call; None when any line is not (the caller
    parses those line by line)."""
    import pyarrow as pa
    from pyarrow import csv

    names = [f"c{i}" for i in range(NUM_FEATURES + 1)]
    try:
        table = csv.read_csv(
            pa.py_buffer(text),
            read_options=csv.ReadOptions(column_names=names, use_threads=False),
            # No quoting and no empty-line skipping: such lines fail here and are judged
            # line by line; no text is a null value.
            parse_options=csv.ParseOptions(quote_char=False, ignore_empty_lines=False),
            convert_options=csv.ConvertOptions(column_types={n: pa.float64() for n in names},
                                               null_values=[], strings_can_be_null=False))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    if table.num_rows != num_lines:
        return None
    values = np.column_stack([column.to_numpy() for column in table.columns])
    if not np.isfinite(values).all() or not np.isin(values[:, 0], (0.0, 1.0)).all():
        return None
    return values


def check_values(values: np.ndarray) -> tuple[int, np.ndarray]:
    """`(label, features[28] float32)` of `[label, 28 features]` as float64; ValueError if bad."""
    if not np.isfinite(values).all():
        raise ValueError("non-finite value (nan/inf)")
    if values[0] not in (0.0, 1.0):
        raise ValueError(f"label {values[0]!r} is not 0 or 1")
    return int(values[0]), values[1:].astype(np.float32)


class HiggsReader(_tfds.PreparedTfds, DatasetReader):
    """The pretraining part: lines 1 .. pretrain_rows."""
    raw_folder = "higgs"

    name = "higgs"
    split_fractions = (("train", 0.9), ("test", 0.1))
    # The reference feeds the raw feature values (no z-score): identity, per feature.
    fixed_normalization = {"mean": [0.0] * NUM_FEATURES, "std": [1.0] * NUM_FEATURES,
                           "source": "none"}
    pretrain_dataset = ""
    tfds_builder = "higgs"
    tfds_splits = {"train": None}

    def __init__(self, data_dir: str | None = None, pretrain_rows: int = PRETRAIN_ROWS,
                 rows_per_source: int | None = None, **options: Any):
        super().__init__(data_dir, **options)
        self.pretrain_rows = int(pretrain_rows)
        self.rows_per_source = None if rows_per_source is None else int(rows_per_source)
        if self.pretrain_rows < 0 or (self.rows_per_source is not None and self.rows_per_source < 1):
            raise ValueError(f"{self.name}: pretrain_rows={pretrain_rows} must be >= 0 and "
                             f"rows_per_source={rows_per_source} >= 1")

    def _line_bounds(self) -> tuple[int, float]:
        """1-based line numbers `[first, last]` that belong to this dataset."""
        return 1, self.pretrain_rows

    def spec_template(self) -> DatasetSpec:
        return DatasetSpec(
            name=self.name,
            modality="tabular",
            input_shape=[NUM_FEATURES],
            tokenizer="tabular",
            patch_shape=[1],
            num_tokens=NUM_FEATURES,
            token_dim=1,
            token_grid=[NUM_FEATURES],
            input_dtype="float32",
            task="binary",
            metric="accuracy",
            num_classes=2,
            label_names=list(LABEL_NAMES),
            label_shape=[],
            label_dtype="int64",
            pretrain_dataset=self.pretrain_dataset,
            extra={"raw_url": FILE_URL, "feature_names": list(FEATURE_NAMES),
                   "pretrain_rows": self.pretrain_rows},
        )

    def raw_expected_files(self) -> list[str]:
        return [f"{FILE_NAMES[0]} (or the decompressed {FILE_NAMES[1]})"]

    def _data_dir(self) -> str:
        return self.data_dir or self.default_data_dir()

    def raw_file(self) -> str | None:
        for name in FILE_NAMES:
            path = os.path.join(self._data_dir(), name)
            if os.path.isfile(path):
                return path
        return None

    def check_raw_files(self) -> None:
        if self.raw_file() is None:
            d = os.path.abspath(self._data_dir())
            raise RawDataMissing(
                f"{self.name}: no {FILE_NAMES[0]} in {d}. Download {FILE_NAMES[0]} (2.8 GB) from "
                f"{FILE_URL} and put it in {d}/ (gzipped or decompressed as {FILE_NAMES[1]}), "
                f"or pass --raw_data_dir to the folder that holds it."
            )

    def list_raw_sources(self) -> list[_line_ranges.LineRange]:
        self.check_raw()
        first, last = self._line_bounds()
        if self.rows_per_source:
            ranges = _line_ranges.plan_line_ranges(self.raw_file(), self.rows_per_source)
        elif _line_ranges.is_gzip(self.raw_file()):
            ranges = _line_ranges.plan_gzip_line_ranges(self.raw_file(), MIN_ROWS_PER_SOURCE,
                                                        MAX_GZIP_SOURCES)
        else:
            ranges = _line_ranges.plan_balanced_line_ranges(self.raw_file(), MIN_ROWS_PER_SOURCE,
                                                            MAX_GZIP_SOURCES)
        return [r for r in ranges
                if r.first_line <= last and r.first_line + r.num_lines - 1 >= first]

    def read_raw_source(self, source: _line_ranges.LineRange) -> Iterator[RawExample | BadRecord]:
        first, last = self._line_bounds()
        for number, line in _line_ranges.iter_lines(source):
            if not first <= number <= last:
                continue
            yield self._parse_line(source, number, line)

    def _parse_line(self, source: _line_ranges.LineRange, number: int,
                    line: str) -> RawExample | BadRecord:
        try:
            label, features = parse_row(line)
        except ValueError as e:
            return BadRecord(path=f"{source.path}:{number}", reason=str(e))
        return RawExample(id=f"higgs-{number:08d}", input=features, label=label)

    def read_source_batches(self, source: Any, batch_size: int) -> Iterator[Any]:
        """Blocks of lines parsed at once (see the module docstring); the same examples and
        bad records as `read_source`."""
        if not isinstance(source, _line_ranges.LineRange):  # a prepared TFDS dataset
            yield from super().read_source_batches(source, batch_size)
            return
        first, last = self._line_bounds()
        for number, text, n in _line_ranges.iter_text_blocks(source, ROWS_PER_BATCH):
            lo, hi = max(0, first - number), min(n, last - number + 1)
            if lo >= hi:
                continue
            if (lo, hi) != (0, n):  # the block runs past this reader's lines: keep its part
                text = b"\n".join(text.split(b"\n")[lo:int(hi)])
            number, n = number + lo, int(hi) - lo
            values = parse_rows(text, n)
            if values is None:  # some line is malformed: judge each one
                lines = text.split(b"\n")
                parsed = [self._parse_line(source, number + i,
                                           line.decode("utf-8", errors="replace").rstrip("\r\n"))
                          for i, line in enumerate(lines)]
                yield from (r for r in parsed if isinstance(r, BadRecord))
                good = [r for r in parsed if isinstance(r, RawExample)]
                if good:
                    yield RawBatch.of(good)
                continue
            yield RawBatch(ids=[f"higgs-{number + i:08d}" for i in range(n)],
                           inputs=values[:, 1:].astype(np.float32),
                           labels=values[:, 0].astype(np.int64), splits=[None] * n,
                           groups=[None] * n)

    # === a prepared TFDS `higgs` dataset ===
    def tfds_sources(self) -> list[_tfds.TfdsSource]:
        first, last = self._line_bounds()  # 1-based line numbers -> 0-based TFDS indices
        return _tfds.plan_sources(self.name, self.tfds_dir(), list(self.tfds_splits),
                                  self.rows_per_source or ROWS_PER_SOURCE, first=first - 1,
                                  last=None if last == float("inf") else int(last))

    def tfds_example(self, record: dict[str, Any], index: int, split: str, info: Any) -> RawExample:
        values = np.array([record["class_label"]] + [record[k] for k in TFDS_FEATURE_NAMES],
                          dtype=np.float64)
        label, features = check_values(values)
        return RawExample(id=f"higgs-tfds-{index:08d}", input=features, label=label)


class HiggsTransferReader(HiggsReader):
    """The transfer part: the lines after pretrain_rows (the last 1,100,000)."""

    name = "higgs-transfer"
    pretrain_dataset = "higgs"

    def _line_bounds(self) -> tuple[int, float]:
        return self.pretrain_rows + 1, float("inf")


READERS = {"higgs": HiggsReader, "higgs-transfer": HiggsTransferReader}
