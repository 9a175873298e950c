"""`pfam`: DABS protein domain, the TAPE Pfam pretraining corpus.

Raw format under `--data_dir` (or its `pfam/` subfolder), one split per stem,

    pfam_train   -> split train
    pfam_valid   -> split val
    pfam_holdout -> split test  (TAPE's held-out families)

in either of TAPE's releases:
- LMDB, TAPE's official distribution (`http://s3.amazonaws.com/songlabdata/proteindata/
  data_pytorch/pfam.tar.gz`): folders `pfam/pfam_<split>.lmdb/` (`data.mdb`, `lock.mdb`), key
  `num_examples` -> pickled count, keys `0`, `1`, ... -> pickled record dicts. When only the
  tarball `<data_dir>/pfam.tar.gz` is there, its `.lmdb` folders are extracted ONCE into
  `<data_dir>/pfam/` (into a hidden temp folder beside the tarball, then renamed into place, so
  an interrupted extraction leaves nothing half-written); the next run finds the folders and
  does not extract again. This happens in the job's `prepare()` step (or when the sources are
  listed), before the final spec, as the label map needs the train split; `--list` never extracts. `data_dir` must be writable for it (or extract the
  tarball yourself).
- raw JSON (`http://s3.amazonaws.com/proteindata/data_raw/pfam.tar.gz`, extracted):
  `pfam_<split>.json`, each a JSON array of records. JSON Lines (`.jsonl`) and CSV (`.csv`,
  header naming `primary` and `clan`) files with the same stems are read too.
A split file is preferred over an LMDB folder of the same stem (see `_protein.py`).
Records are `{"primary": "<amino acids>", "clan": ..., "family": ..., "protein_length": ...}`.

Example: `primary` truncated/padded with X to 128 residues, ids in `XARNDCQEGHILKMFPSTWYVUOBZJ`
(26), one token per residue. Label: index of the record's `clan` in the sorted distinct clans of
the TRAIN file (623 in TAPE's Pfam). The label map is deterministic: the driver streams
`pfam_train` once (only the clan field is kept) the first time the spec or the sources are asked
for, and the map travels with the reader to the Beam workers. Clans that are all integers are
sorted numerically (TAPE stores clan ids as ints), otherwise as strings. A record whose clan is
not in the train map, whose `primary` has a character outside the vocabulary, that lacks a
field, or that is not valid JSON / does not unpickle becomes a BadRecord naming `<file>[<record>]`
(`<file>:<line>`, or `<pfam_train.lmdb dir>[<key>]`). An LMDB folder without `num_examples` is
an error naming the folder.

Each split file is one read source (a JSON array cannot be split without parsing it); an LMDB
split is read in ranges of 5,000 records, `(split, lmdb_dir, start, stop)`, each opening the
environment read-only on its own, so reading is parallel and memory-bounded.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

from preprocessing.datasets import _protein
from preprocessing.datasets.base import BadRecord, DatasetReader, RawDataMissing, RawExample
from preprocessing.spec import DatasetSpec

TAPE_RAW_URL = "http://s3.amazonaws.com/proteindata/data_raw/pfam.tar.gz"
TAPE_LMDB_URL = _protein.TAPE_LMDB_URL.format(task="pfam")
SPLIT_FILES = (("train", "pfam_train"), ("val", "pfam_valid"), ("test", "pfam_holdout"))
NUM_CLANS_TAPE = 623  # used in the spec only when the train file is not there to count


def _clan_key(value: Any) -> str:
    """Clans compared as text: JSON ints and CSV digit strings of the same clan agree."""
    return str(value).strip()


def sorted_clans(values: set[str]) -> list[str]:
    if values and all(v.lstrip("-").isdigit() for v in values):
        return sorted(values, key=int)
    return sorted(values)


def protein_spec(name: str, **fields: Any) -> DatasetSpec:
    """The token layout every DABS protein set shares; task/label fields come as `fields`."""
    extra = fields.pop("extra", {})
    return DatasetSpec(
        name=name,
        modality="token",
        input_shape=[_protein.SEQ_LEN],
        tokenizer="discrete",
        patch_shape=[1],
        num_tokens=_protein.SEQ_LEN,
        vocab_size=len(_protein.VOCAB),
        token_grid=[_protein.SEQ_LEN],
        input_dtype="int64",
        extra={"vocab": _protein.VOCAB, "pad_token": _protein.PAD, **extra},
        **fields,
    )


class PfamReader(DatasetReader):
    name = "pfam"
    # Only the names and their order matter: the split comes from the file.
    split_fractions = (("train", 0.8), ("val", 0.1), ("test", 0.1))

    def __init__(self, data_dir: str | None = None, **options: Any):
        super().__init__(data_dir, **options)
        self._clans: list[str] | None = None  # the label map, computed once on the driver

    def _data_dir(self) -> str:
        return self.data_dir or self.default_data_dir()

    def _split_files(self) -> list[tuple[str, str]]:
        found = []
        for split, stem in SPLIT_FILES:
            path = _protein.find_split_file(self._data_dir(), "pfam", stem)
            if path:
                found.append((split, path))
        return found

    def _train_file(self) -> str | None:
        return _protein.find_split_file(self._data_dir(), "pfam", "pfam_train")

    def _ensure_extracted(self) -> None:
        """Extracts `<data_dir>/pfam.tar.gz` once when no train split is there yet."""
        _protein.ensure_extracted(self._data_dir(), "pfam", "pfam_train")

    def clans(self) -> list[str]:
        """Sorted distinct clans of the train file (the label map); raises RawDataMissing."""
        if self._clans is None:
            self.check_raw()
            self._ensure_extracted()
            values = set()
            for _, record in _protein.iter_records(self._train_file()):
                if isinstance(record, dict) and "clan" in record:
                    values.add(_clan_key(record["clan"]))
            if not values:
                raise RawDataMissing(f"pfam: {self._train_file()} holds no record with a "
                                     f"`clan` field; expected TAPE's pfam_train.lmdb or "
                                     f"pfam_train.json")
            self._clans = sorted_clans(values)
        return self._clans

    def prepare(self) -> None:
        self._ensure_extracted()  # before the spec: the label map comes from the train split

    def spec_template(self) -> DatasetSpec:
        if self._train_file() is not None:
            clans = self.clans()
            num_classes, names = len(clans), list(clans)
        else:  # e.g. `--list` without the raw data: the published count, names unknown
            num_classes, names = NUM_CLANS_TAPE, []
        return protein_spec(
            self.name, task="multiclass", metric="accuracy", num_classes=num_classes,
            label_names=names, label_shape=[], label_dtype="int64",
            extra={"raw_url": TAPE_RAW_URL, "lmdb_url": TAPE_LMDB_URL,
                   "label": "index of clan in the sorted clans of pfam_train"},
        )

    def expected_files(self) -> list[str]:
        return ([f"pfam.tar.gz (TAPE LMDB release {TAPE_LMDB_URL}; extracted into pfam/ on "
                 f"first use)"]
                + [f"pfam/{stem}.lmdb/" for _, stem in SPLIT_FILES]
                + [f"{stem}.json" for _, stem in SPLIT_FILES])

    def check_raw(self) -> None:
        d = self._data_dir()
        if self._train_file() is None and not os.path.isfile(_protein.tarball_path(d, "pfam")):
            d = os.path.abspath(d)
            raise RawDataMissing(
                f"pfam: neither pfam/pfam_train.lmdb/ nor pfam_train.json found in {d} (or "
                f"{d}/pfam), and no pfam.tar.gz to extract them from. Download TAPE's LMDB "
                f"release {TAPE_LMDB_URL} into {d}/ (it is extracted into {d}/pfam/"
                f"pfam_{{train,valid,holdout}}.lmdb/ on the first run), or TAPE's raw JSON "
                f"corpus {TAPE_RAW_URL} and put pfam_train.json, pfam_valid.json and "
                f"pfam_holdout.json in {d}/; or pass --data_dir to the folder that holds them."
            )

    def list_sources(self) -> list[tuple]:
        self.clans()  # computed here on the driver, so workers receive it with the reader
        sources = []
        for split, path in self._split_files():
            sources.extend(_protein.split_sources(split, path))
        return sources

    def read_source(self, source: tuple) -> Iterator[RawExample | BadRecord]:
        split = source[0]
        label_of = {clan: i for i, clan in enumerate(self.clans())}
        for where, record in _protein.iter_source(source):
            if isinstance(record, str):
                yield BadRecord(path=where, reason=record)
                continue
            try:
                tokens = _protein.encode_protein(record.get("primary"))
                if "clan" not in record:
                    raise ValueError("record has no `clan` field")
                clan = _clan_key(record["clan"])
                if clan not in label_of:
                    raise ValueError(f"clan {clan!r} does not occur in the train split "
                                     f"(label map of {len(label_of)} clans)")
            except ValueError as e:
                yield BadRecord(path=where, reason=str(e))
                continue
            record_id = record.get("id")
            if record_id in (None, ""):
                record_id = where.rsplit(os.sep, 1)[-1]
            yield RawExample(id=f"{split}/{record_id}", input=tokens, label=label_of[clan],
                             split=split)


READERS = {"pfam": PfamReader}
