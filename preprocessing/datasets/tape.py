"""TAPE downstream tasks, the DABS protein transfer sets (pretrain_dataset "pfam").

Raw format under `--raw_data_dir` (or its `<task>/` subfolder), one split per file stem below, in
either of TAPE's releases:
- LMDB, TAPE's official distribution (`http://s3.amazonaws.com/songlabdata/proteindata/
  data_pytorch/<task>.tar.gz`): folders `<task>/<stem>.lmdb/` (`data.mdb`, `lock.mdb`) holding
  `num_examples` and pickled record dicts under keys `0`, `1`, ... (numpy arrays for `ss3`, and
  one-element arrays for the regression targets). When only the tarball `<data_dir>/<task>.tar.gz`
  is there, its `.lmdb` folders are extracted ONCE into `<data_dir>/<task>/` (into a hidden temp
  folder beside the tarball, then renamed into place, so an interrupted extraction leaves nothing
  half-written) when the sources are listed; the next run finds them and does not extract again.
  `data_dir` must be writable for it (or extract the tarball yourself).
- raw JSON (`http://s3.amazonaws.com/proteindata/data_raw/<task>.tar.gz`, extracted): one JSON
  array of records per split file `<stem>.json`; JSON Lines / CSV files with the same stems work
  too. A split file is preferred over an LMDB folder of the same stem (see `_protein.py`).
An LMDB split is read in ranges of 5,000 records, `(split, lmdb_dir, start, stop)`, each opening
the environment read-only on its own; a JSON file is one source.

| dataset             | TAPE task           | label field        | files (split)                                   |
|---------------------|---------------------|--------------------|-------------------------------------------------|
| scop                | remote_homology     | `fold_label` 0..1194 | `remote_homology_train` (train), `_valid` (val), `_test_fold_holdout` (test), `_test_superfamily_holdout`, `_test_family_holdout` |
| secondary-structure | secondary_structure | `ss3` per residue 0..2 | `secondary_structure_train` (train), `_valid` (val), `_cb513` (test), `_casp12`, `_ts115` |
| stability           | stability           | `stability_score`  | `stability_train`, `_valid`, `_test`            |
| fluorescence        | fluorescence        | `log_fluorescence` | `fluorescence_train`, `_valid`, `_test`         |

The extra TAPE test sets become splits of their own (`test_superfamily`, `test_casp12`, ...).

Linear probe (spec `protocol`): as the MetaMAE/DABS reference, the probe trains on `train` and
reports on `val` (TAPE's `_valid` file), with no split to select on. TAPE's own test sets stay
available: `python -m pipeline.preprocess --dataset scop --reader_option test_split=test` (or
any other split above, e.g. `test_split=test_superfamily`, one per run as TAPE reports each
separately) makes the probe report on it and select on `val`. Reader options reach the reader as strings
through `--reader_option KEY=VALUE` (pipeline/preprocess.py); the split files read are the same
either way, only spec.json's `protocol` differs.
Inputs are encoded like Pfam (128 residues, vocab of 26, padded with X). Labels:
- scop: one class id, 1,195 folds, accuracy.
- secondary-structure: per-residue ss3 (0 helix, 1 strand, 2 coil) truncated to 128 and padded
  with class 3 (`pad`) where the sequence is padded: `label_shape [128]`, 4 classes.
- stability / fluorescence: one float32, regression, Spearman. TAPE stores these as one-element
  lists (`[0.37]`); a bare number is accepted too.
A record with a missing/ill-typed label, an ss3 whose length differs from the sequence's, a
residue outside the vocabulary, or that does not parse / unpickle becomes a BadRecord
`<file>[<record>]` (`<lmdb dir>[<key>]` for LMDB). An LMDB folder without `num_examples` is an
error naming the folder.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterator

import numpy as np

from preprocessing.datasets import _protein
from preprocessing.datasets.base import BadRecord, DatasetReader, RawDataMissing, RawExample
from preprocessing.datasets.pfam import protein_spec
from preprocessing.spec import DatasetSpec

TAPE_RAW_URL = "http://s3.amazonaws.com/proteindata/data_raw/{task}.tar.gz"
TAPE_LMDB_URL = _protein.TAPE_LMDB_URL  # .format(task=...)
NUM_FOLDS = 1195
SS3_NAMES = ("helix", "strand", "coil", "pad")
SS3_PAD = 3
DEFAULT_TEST_SPLIT = "val"  # the reference probes on train and tests on TAPE's `_valid` file


class TapeTaskReader(DatasetReader):
    """One TAPE task; subclasses set the class attributes and `parse_label`."""

    tape_task = ""
    label_field = ""
    # (split name, file stem) in split order; the first is the train file.
    split_files: tuple[tuple[str, str], ...] = ()

    def spec_fields(self) -> dict[str, Any]:
        raise NotImplementedError

    def parse_label(self, value: Any, tokens: np.ndarray, primary: str) -> Any:
        """The example's label from the record's label field; raises ValueError."""
        raise NotImplementedError

    @property
    def split_fractions(self):  # names and order only: the split comes from the file
        return tuple((split, 0.0) for split, _ in self.split_files)

    def test_split(self) -> str:
        """The split the probe reports on: `--reader_option test_split=NAME`, by default `val`
        (the reference tests on TAPE's `_valid` file); raises ValueError for another name."""
        name = str(self.options.get("test_split", DEFAULT_TEST_SPLIT)).strip()
        allowed = [split for split, _ in self.split_files if split != "train"]
        if name not in allowed:
            raise ValueError(f"{self.name}: --reader_option test_split={name!r} is not a split of "
                             f"this dataset; expected one of {', '.join(allowed)}")
        return name

    @property
    def protocol(self) -> dict[str, list[str]]:
        """The probe trains on TAPE's train file; it reports on `test_split()` (by default the
        `_valid` file, as the reference, so nothing is left to select on); when TAPE's own test
        files are chosen, `val` is there to select on."""
        test = self.test_split()
        return {"pretrain": ["train"], "probe_train": ["train"],
                "probe_val": [] if test == "val" else ["val"], "probe_test": [test]}

    def spec_template(self) -> DatasetSpec:
        self.test_split()  # a bad --reader_option test_split fails before any data is read
        fields = self.spec_fields()
        extra = {"raw_url": TAPE_RAW_URL.format(task=self.tape_task),
                 "lmdb_url": TAPE_LMDB_URL.format(task=self.tape_task),
                 "tape_task": self.tape_task, "label_field": self.label_field}
        return protein_spec(self.name, pretrain_dataset="pfam", extra=extra, **fields)

    def expected_files(self) -> list[str]:
        task = self.tape_task
        return ([f"{task}.tar.gz (TAPE LMDB release {TAPE_LMDB_URL.format(task=task)}; "
                 f"extracted into {task}/ on first use)"]
                + [f"{task}/{stem}.lmdb/" for _, stem in self.split_files]
                + [f"{stem}.json" for _, stem in self.split_files])

    def _data_dir(self) -> str:
        return self.data_dir or self.default_data_dir()

    def check_raw(self) -> None:
        train_stem = self.split_files[0][1]
        task, d = self.tape_task, self._data_dir()
        if (_protein.find_split_file(d, task, train_stem) is None
                and not os.path.isfile(_protein.tarball_path(d, task))):
            d = os.path.abspath(d)
            raise RawDataMissing(
                f"{self.name}: neither {task}/{train_stem}.lmdb/ nor {train_stem}.json found in "
                f"{d} (or {d}/{task}), and no {task}.tar.gz to extract them from. Download "
                f"TAPE's LMDB release {TAPE_LMDB_URL.format(task=task)} into {d}/ (it is "
                f"extracted into {d}/{task}/{task}_*.lmdb/ on the first run), or TAPE's raw "
                f"JSON data {TAPE_RAW_URL.format(task=task)}, extracted, with the {task}_*.json "
                f"files in {d}/; or pass --raw_data_dir to that folder."
            )

    def list_sources(self) -> list[tuple]:
        self.check_raw()
        _protein.ensure_extracted(self._data_dir(), self.tape_task, self.split_files[0][1])
        sources = []
        for split, stem in self.split_files:
            path = _protein.find_split_file(self._data_dir(), self.tape_task, stem)
            if path:
                sources.extend(_protein.split_sources(split, path))
        return sources

    def read_source(self, source: tuple) -> Iterator[RawExample | BadRecord]:
        split = source[0]
        for where, record in _protein.iter_source(source):
            if isinstance(record, str):
                yield BadRecord(path=where, reason=record)
                continue
            try:
                primary = record.get("primary")
                tokens = _protein.encode_protein(primary)
                if self.label_field not in record:
                    raise ValueError(f"record has no `{self.label_field}` field")
                label = self.parse_label(record[self.label_field], tokens, primary)
            except (ValueError, TypeError) as e:
                yield BadRecord(path=where, reason=str(e))
                continue
            record_id = record.get("id")
            if record_id in (None, ""):
                record_id = where.rsplit(os.sep, 1)[-1]
            yield RawExample(id=f"{split}/{record_id}", input=tokens, label=label, split=split)


class ScopReader(TapeTaskReader):
    name = "scop"
    tape_task = "remote_homology"
    label_field = "fold_label"
    split_files = (("train", "remote_homology_train"), ("val", "remote_homology_valid"),
                   ("test", "remote_homology_test_fold_holdout"),
                   ("test_superfamily", "remote_homology_test_superfamily_holdout"),
                   ("test_family", "remote_homology_test_family_holdout"))

    def spec_fields(self):
        return dict(task="multiclass", metric="accuracy", num_classes=NUM_FOLDS,
                    label_names=[], label_shape=[], label_dtype="int64")

    def parse_label(self, value, tokens, primary):
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"fold_label must be an integer, got {value!r:.40}")
        label = int(value)
        if not 0 <= label < NUM_FOLDS:
            raise ValueError(f"fold_label {label} outside 0..{NUM_FOLDS - 1}")
        return label


class SecondaryStructureReader(TapeTaskReader):
    name = "secondary-structure"
    tape_task = "secondary_structure"
    label_field = "ss3"
    split_files = (("train", "secondary_structure_train"), ("val", "secondary_structure_valid"),
                   ("test", "secondary_structure_cb513"),
                   ("test_casp12", "secondary_structure_casp12"),
                   ("test_ts115", "secondary_structure_ts115"))

    def spec_fields(self):
        return dict(task="per_token_multiclass", metric="accuracy", num_classes=len(SS3_NAMES),
                    label_names=list(SS3_NAMES), label_shape=[_protein.SEQ_LEN],
                    label_dtype="int64")

    def parse_label(self, value, tokens, primary):
        if isinstance(value, str):  # CSV exports: "0 1 2 ..." or "012..."
            value = value.split() if " " in value.strip() else list(value.strip())
        if not isinstance(value, list):
            raise ValueError(f"ss3 must be a list of per-residue classes, got {value!r:.40}")
        ss3 = np.array([int(v) for v in value], dtype=np.int64)
        if len(ss3) != len(primary):
            raise ValueError(f"ss3 has {len(ss3)} labels for {len(primary)} residues")
        if ((ss3 < 0) | (ss3 > 2)).any():
            raise ValueError(f"ss3 label {int(ss3[(ss3 < 0) | (ss3 > 2)][0])} outside 0..2")
        labels = np.full(_protein.SEQ_LEN, SS3_PAD, dtype=np.int64)
        kept = ss3[:_protein.SEQ_LEN]
        labels[:len(kept)] = kept
        return labels


class _RegressionReader(TapeTaskReader):
    def spec_fields(self):
        return dict(task="regression", metric="spearman", num_classes=0, label_names=[],
                    label_shape=[], label_dtype="float32")

    def parse_label(self, value, tokens, primary):
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"{self.label_field} must be a number, got {value!r:.40}")
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"{self.label_field} is not finite ({number})")
        return np.float32(number)


class StabilityReader(_RegressionReader):
    name = "stability"
    tape_task = "stability"
    label_field = "stability_score"
    split_files = (("train", "stability_train"), ("val", "stability_valid"),
                   ("test", "stability_test"))


class FluorescenceReader(_RegressionReader):
    name = "fluorescence"
    tape_task = "fluorescence"
    label_field = "log_fluorescence"
    split_files = (("train", "fluorescence_train"), ("val", "fluorescence_valid"),
                   ("test", "fluorescence_test"))


READERS = {
    "scop": ScopReader,
    "secondary-structure": SecondaryStructureReader,
    "stability": StabilityReader,
    "fluorescence": FluorescenceReader,
}
