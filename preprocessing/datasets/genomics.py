"""`genomics`, `genomics-id`, `genomics-ood`: DABS genomics domain (Ren et al. 2019, genomics_ood).

Raw format under `--raw_data_dir`: the three CSV files DABS produces from the TFDS `genomics_ood`
splits with `tfds.as_dataframe(...).to_csv(path)`:

    genomicsPretrain.csv     TFDS split `train`          (in-distribution, 10 classes) -> genomics
    genomicsTransferID.csv   TFDS split `validation`     (in-distribution, 10 classes) -> genomics-id
    genomicsTransferOOD.csv  TFDS split `validation_ood` (60 OOD classes, ids 10..69)  -> genomics-ood

Layout (pandas `to_csv` with its index column; TFDS text features become Python bytes literals):

    ,domain,label,seq,seq_info
    0,b'in',3,b'ACGT...250 bases...',b'...'

Columns are looked up by header name (`label`, `seq`); a header without those names falls back
to DABS's positions (label = column 2, sequence = column 3). The sequence is characters 2..251
of the field (DABS's `seq[2:252]`, i.e. the bases inside `b'...'`); a field that is a bare
sequence (no `b'` prefix) is used from character 0, so a plain CSV export works too. Bases map
A,C,G,T -> 0,1,2,3 (vocab 4), 250 tokens. A row whose sequence is not exactly 250 bases of
A/C/G/T, or whose label is out of range, becomes a BadRecord `<file>:<line>`.

Labels: in-distribution classes 0..9; `genomics-ood` subtracts the offset 10 from its raw
labels 10..69 to give classes 0..59. Splits: 90/10 train/test by a seeded hash of the line
(DABS shuffles with seed 42 and takes 90/10). Files are read in ranges of `rows_per_source` lines.
Linear probe (paper Table 16, spec `protocol`): on train, reported on test, batch 64 for
`genomics-id` and 32 for `genomics-ood` (pretraining batch 32).

When a reader's CSV is absent, a prepared TFDS `genomics_ood` dataset
(`genomics_ood/<version>/dataset_info.json`, nothing downloaded) is read instead: the same TFDS
split the CSV was written from (`train`, `validation`, `validation_ood`), `seq` and the
ClassLabel `label` (the same ids 0..129 the CSV holds), `rows_per_source` examples per source.
The record at TFDS index i is the CSV's line i + 2 (the CSV is the split written in TFDS order
after a header line), so it gets the same id `<name>-<line>` and lands in the same split.
"""

from __future__ import annotations

import csv
import os
from typing import Any, Iterator

import numpy as np

from preprocessing.datasets import _line_ranges, _tfds
from preprocessing.datasets.base import BadRecord, DatasetReader, RawDataMissing, RawExample
from preprocessing.spec import DatasetSpec

SEQ_LEN = 250
BASES = "ACGT"
SEQUENCE_START = 2  # DABS: seq[2:252], skipping the `b'` of the bytes literal
NUM_ID_CLASSES = 10
NUM_OOD_CLASSES = 60
OOD_LABEL_OFFSET = 10
DEFAULT_LABEL_COLUMN, DEFAULT_SEQUENCE_COLUMN = 2, 3
ROWS_PER_SOURCE = 200_000
TFDS_URL = "https://www.tensorflow.org/datasets/catalog/genomics_ood"
ORIGINAL_URL = "https://github.com/google-research/google-research/tree/master/genomics_ood"

_BASE_TO_ID = np.full(256, -1, dtype=np.int64)
for _i, _b in enumerate(BASES):
    _BASE_TO_ID[ord(_b)] = _i


def encode_bases(sequence: str) -> np.ndarray:
    """`ACGT...` -> int64 ids 0..3; raises ValueError naming the first other character."""
    codes = np.frombuffer(sequence.encode("latin-1", errors="replace"), dtype=np.uint8)
    ids = _BASE_TO_ID[codes]
    if (ids < 0).any():
        bad = sequence[int(np.argmax(ids < 0))]
        raise ValueError(f"base {bad!r} is not one of A, C, G, T")
    return ids


def sequence_of_field(field: str) -> str:
    """The bases of a CSV `seq` field: inside `b'...'` (DABS's characters 2..251) or bare.

    Longer sequences are cut to 250 as DABS's `seq[2:252]` does; shorter ones are returned
    whole so the caller can report their length.
    """
    if field[:2] in ("b'", 'b"'):
        field = field[2:-1] if len(field) > 2 and field[-1] == field[1] else field[2:]
    return field[:SEQ_LEN]


class GenomicsReader(_tfds.PreparedTfds, DatasetReader):
    """In-distribution pretraining set (genomicsPretrain.csv)."""
    raw_folder = "genomics"

    name = "genomics"
    file_name = "genomicsPretrain.csv"
    tfds_split = "train"
    num_classes = NUM_ID_CLASSES
    label_offset = 0
    pretrain_dataset = ""
    split_fractions = (("train", 0.9), ("test", 0.1))
    tfds_builder = "genomics_ood"

    def __init__(self, data_dir: str | None = None, rows_per_source: int = ROWS_PER_SOURCE,
                 **options: Any):
        super().__init__(data_dir, **options)
        self.rows_per_source = int(rows_per_source)
        self.tfds_splits = {self.tfds_split: None}
        self.tfds_examples_per_source = self.rows_per_source

    def spec_template(self) -> DatasetSpec:
        return DatasetSpec(
            name=self.name,
            modality="token",
            input_shape=[SEQ_LEN],
            tokenizer="discrete",
            patch_shape=[1],
            num_tokens=SEQ_LEN,
            vocab_size=len(BASES),
            token_grid=[SEQ_LEN],
            input_dtype="int64",
            task="multiclass",
            metric="accuracy",
            num_classes=self.num_classes,
            label_names=[str(self.label_offset + i) for i in range(self.num_classes)],
            label_shape=[],
            label_dtype="int64",
            pretrain_dataset=self.pretrain_dataset,
            extra={"vocab": list(BASES), "raw_file": self.file_name,
                   "tfds_split": self.tfds_split, "raw_label_offset": self.label_offset},
        )

    def raw_expected_files(self) -> list[str]:
        return [self.file_name]

    def _data_dir(self) -> str:
        return self.data_dir or self.default_data_dir()

    def raw_file(self) -> str:
        return os.path.join(self._data_dir(), self.file_name)

    def check_raw_files(self) -> None:
        path = self.raw_file()
        if not os.path.isfile(path):
            d = os.path.abspath(self._data_dir())
            raise RawDataMissing(
                f"{self.name}: {path} not found. It is the TFDS genomics_ood split "
                f"{self.tfds_split!r} ({TFDS_URL}; original data {ORIGINAL_URL}) written as CSV "
                f"with `tfds.as_dataframe(tfds.load('genomics_ood', split='{self.tfds_split}'))"
                f".to_csv('{self.file_name}')` as DABS does; put {self.file_name} in {d}/ or "
                f"pass --raw_data_dir to the folder that holds it."
            )

    def list_raw_sources(self) -> list[_line_ranges.LineRange]:
        self.check_raw()
        return _line_ranges.plan_line_ranges(self.raw_file(), self.rows_per_source)

    def _columns(self, path: str) -> tuple[int, int]:
        header = next(csv.reader([_line_ranges.read_first_line(path)]), [])
        if "label" in header and "seq" in header:
            return header.index("label"), header.index("seq")
        return DEFAULT_LABEL_COLUMN, DEFAULT_SEQUENCE_COLUMN

    def read_raw_source(self, source: _line_ranges.LineRange) -> Iterator[RawExample | BadRecord]:
        label_col, seq_col = self._columns(source.path)
        for number, line in _line_ranges.iter_lines(source):
            if number == 1 or not line.strip():  # header
                continue
            where = f"{source.path}:{number}"
            try:
                fields = next(csv.reader([line]))
                if len(fields) <= max(label_col, seq_col):
                    raise ValueError(f"expected at least {max(label_col, seq_col) + 1} "
                                     f"columns, got {len(fields)}")
                example = self._example(number, sequence_of_field(fields[seq_col]),
                                        fields[label_col])
            except (ValueError, csv.Error) as e:
                yield BadRecord(path=where, reason=str(e))
                continue
            yield example

    def _example(self, line_number: int, sequence: str, raw_label: str | int) -> RawExample:
        if len(sequence) != SEQ_LEN:
            raise ValueError(f"sequence has {len(sequence)} bases, expected {SEQ_LEN}")
        tokens = encode_bases(sequence)
        label = int(raw_label) - self.label_offset
        if not 0 <= label < self.num_classes:
            raise ValueError(f"label {raw_label} outside {self.label_offset}.."
                             f"{self.label_offset + self.num_classes - 1}")
        return RawExample(id=f"{self.name}-{line_number:08d}", input=tokens, label=label)

    def tfds_example(self, record: dict[str, Any], index: int, split: str, info: Any) -> RawExample:
        # TFDS index i is line i + 2 of the CSV written from the split (line 1: the header).
        return self._example(index + 2, sequence_of_field(_tfds.text(record["seq"])),
                             int(record["label"]))


class GenomicsTransferIDReader(GenomicsReader):
    """In-distribution transfer set (genomicsTransferID.csv, same 10 classes)."""

    name = "genomics-id"
    file_name = "genomicsTransferID.csv"
    tfds_split = "validation"
    pretrain_dataset = "genomics"
    # Table 16: the in-distribution probe runs with batch 64 (pretraining: 32).
    protocol = {"probe_batch_size": 64}


class GenomicsTransferOODReader(GenomicsReader):
    """Out-of-distribution transfer set (genomicsTransferOOD.csv, 60 classes, raw ids 10..69)."""

    name = "genomics-ood"
    file_name = "genomicsTransferOOD.csv"
    tfds_split = "validation_ood"
    num_classes = NUM_OOD_CLASSES
    label_offset = OOD_LABEL_OFFSET
    pretrain_dataset = "genomics"
    # Table 16: batch 32 for the OOD probe, the pretraining batch; stated so it does not follow
    # a pretraining run with another batch.
    protocol = {"probe_batch_size": 32}


READERS = {
    "genomics": GenomicsReader,
    "genomics-id": GenomicsTransferIDReader,
    "genomics-ood": GenomicsTransferOODReader,
}
