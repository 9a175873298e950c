"""`pfam`: DABS protein domain, the TAPE Pfam pretraining corpus.

Raw format under `--raw_data_dir` (or its `pfam/` subfolder), one file per stem:

    pfam_train   -> split train           (pretraining)
    pfam_valid   -> splits val, transfer_train, transfer_test  (see "Splits" below)
    pfam_holdout -> split holdout         (TAPE's held-out families; no protocol role)

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

Splits and protocol (paper Table 1 / DABS `PfamTransfer`): pretraining reads `train`
(pfam_train). The linear probe does NOT use the held-out families: its transfer set is
`NUM_TRANSFER_EXAMPLES` = 200,000 records of pfam_valid (same families as pretraining), chosen
exactly as DABS does: pfam_valid in file order is shuffled as pandas'
`sample(frac=1, random_state=42)` (= `numpy.random.RandomState(42).permutation(n)`), the LAST
200,000 rows of the shuffled order are the transfer set (all rows when pfam_valid has fewer),
of which the first ceil(0.9 * 200,000) = 180,000 are `transfer_train` and the remaining 20,000
`transfer_test`; the rows before them are `val` (DABS's pretraining validation set). The seed is
DABS's fixed 42, not `--seed`, so the sets are the reference's. spec.json's `protocol`: pretrain
`train`, probe on `transfer_train`, report on `transfer_test`, no selection split. The size is a
reader option: `--reader_option transfer_examples=N`. A record's position is its index in the
file (JSON array / JSON Lines / CSV record order, LMDB key), so both TAPE releases give the same
sets; this needs pfam_valid's record count on the driver, which the LMDB stores (`num_examples`)
and a JSON/CSV file gives by one streaming pass when the sources are listed.

Each split file is one read source (a JSON array cannot be split without parsing it); an LMDB
split is read in ranges of 5,000 records, `(split, lmdb_dir, start, stop)`, each opening the
environment read-only on its own, so reading is parallel and memory-bounded.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

from preprocessing.datasets import _dabs_shuffle, _protein
from preprocessing.datasets.base import BadRecord, DatasetReader, RawDataMissing, RawExample
from preprocessing.spec import DatasetSpec

TAPE_RAW_URL = "http://s3.amazonaws.com/proteindata/data_raw/pfam.tar.gz"
TAPE_LMDB_URL = _protein.TAPE_LMDB_URL.format(task="pfam")
# (split, or the splits the file is cut into, file stem); the first is the train file.
SPLIT_FILES = (("train", "pfam_train"), ("valid", "pfam_valid"), ("holdout", "pfam_holdout"))
NUM_CLANS_TAPE = 623  # used in the spec only when the train file is not there to count
NUM_TRANSFER_EXAMPLES = 200_000  # DABS Pfam.NUM_TRANSFER_EXAMPLES (rows of pfam_valid)
TRANSFER_TRAIN_PROPORTION = 0.9  # DABS: head(ceil(0.9 * n)) train, the rest test
DABS_SHUFFLE_SEED = _dabs_shuffle.DABS_SEED  # DABS Pfam.RANDOM_SEED: pandas sample(frac=1, random_state=42)


def valid_split_of(index: int, count: int, transfer_examples: int) -> str:
    """The split of record `index` of a pfam_valid holding `count` records (module docstring)."""
    transfer = min(transfer_examples, count)
    # The row in the transfer frame (see _dabs_shuffle.py for the shuffle).
    row = int(_dabs_shuffle.shuffled_positions(count, DABS_SHUFFLE_SEED)[index]) - (count - transfer)
    if row < 0:
        return "val"
    return ("transfer_train" if row < _dabs_shuffle.head_rows(TRANSFER_TRAIN_PROPORTION, transfer)
            else "transfer_test")


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
    # Only the names and their order matter: the split comes from the file (and, in
    # pfam_valid, from the record's position; see the module docstring).
    split_fractions = (("train", 0.0), ("val", 0.0), ("transfer_train", 0.0),
                       ("transfer_test", 0.0), ("holdout", 0.0))
    protocol = {"pretrain": ["train"], "probe_train": ["transfer_train"], "probe_val": [],
                "probe_test": ["transfer_test"]}

    def __init__(self, data_dir: str | None = None, **options: Any):
        super().__init__(data_dir, **options)
        self._clans: list[str] | None = None  # the label map, computed once on the driver
        self._valid_count: int | None = None  # pfam_valid's records, counted once on the driver

    def transfer_examples(self) -> int:
        """`--reader_option transfer_examples=N` (default 200,000); raises ValueError."""
        value = self.options.get("transfer_examples", NUM_TRANSFER_EXAMPLES)
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = 0
        if number < 1:
            raise ValueError(f"pfam: --reader_option transfer_examples={value!r}: expected a "
                             f"positive number of pfam_valid records (default "
                             f"{NUM_TRANSFER_EXAMPLES})")
        return number

    def valid_count(self) -> int:
        """pfam_valid's record count (LMDB `num_examples`, or one pass over the file)."""
        if self._valid_count is None:
            path = _protein.find_split_file(self._data_dir(), "pfam", "pfam_valid")
            if path is None:
                self._valid_count = 0
            elif _protein.is_lmdb(path):
                self._valid_count = _protein.lmdb_num_examples(path)
            else:
                self._valid_count = sum(1 for _ in _protein.iter_records(path))
        return self._valid_count

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
        transfer = self.transfer_examples()  # a bad option fails before any data is read
        if self._train_file() is not None:
            clans = self.clans()
            num_classes, names = len(clans), list(clans)
        else:  # e.g. `--list` without the raw data: the published count, names unknown
            num_classes, names = NUM_CLANS_TAPE, []
        return protein_spec(
            self.name, task="multiclass", metric="accuracy", num_classes=num_classes,
            label_names=names, label_shape=[], label_dtype="int64",
            extra={"raw_url": TAPE_RAW_URL, "lmdb_url": TAPE_LMDB_URL,
                   "label": "index of clan in the sorted clans of pfam_train",
                   "transfer": f"the last {transfer} rows of pfam_valid shuffled as pandas "
                               f"sample(frac=1, random_state={DABS_SHUFFLE_SEED}); first "
                               f"{TRANSFER_TRAIN_PROPORTION:.0%} transfer_train, rest "
                               f"transfer_test; earlier rows val"},
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
                f"pfam_holdout.json in {d}/; or pass --raw_data_dir to the folder that holds them."
            )

    def list_sources(self) -> list[tuple]:
        self.clans()  # computed here on the driver, so workers receive it with the reader
        self.valid_count()  # likewise: a record's split in pfam_valid depends on the count
        sources = []
        for split, path in self._split_files():
            sources.extend(_protein.split_sources(split, path))
        return sources

    def read_source(self, source: tuple) -> Iterator[RawExample | BadRecord]:
        split = source[0]
        label_of = {clan: i for i, clan in enumerate(self.clans())}
        first_index = source[2] if len(source) == 4 else 0  # an LMDB range starts at its key
        for offset, (where, record) in enumerate(_protein.iter_source(source)):
            if split == "valid":
                split_here = valid_split_of(first_index + offset, self.valid_count(),
                                            self.transfer_examples())
            else:
                split_here = split
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
            yield RawExample(id=f"{split_here}/{record_id}", input=tokens, label=label_of[clan],
                             split=split_here)


READERS = {"pfam": PfamReader}
