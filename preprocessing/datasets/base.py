"""What a dataset reader provides to the Beam job. One subclass per file in this folder.

A reader is pure Python + NumPy (no Beam, no Keras). The Beam job calls:
  1. `check_raw(data_dir)` — raises `RawDataMissing` naming the exact file(s) and folder
     when the official raw files are absent (after trying a download where the network allows).
     Then `prepare()` (usually nothing; e.g. a one-time extraction).
  2. `list_sources(data_dir)` — the units of parallel reading (files, zip members, row ranges).
  3. `read_source(source)` — yields `RawExample`s or `BadRecord`s (never raises on one bad
     record: the job counts them, reports their paths, and applies --max_bad_fraction).
     The job reads through `read_source_batches(source)`, which groups them into `RawBatch`es;
     a reader whose per-example Python cost matters (HIGGS: 11M rows) yields whole batches.
  4. `split_of(example, seed)` — deterministic split name for an example (`split_of_batch`
     for a batch).
  5. `spec_template()` — the `DatasetSpec` without splits/counts/statistics.
  6. `storage_dtype`, `storage_scale` — the dtype the raw values are exact in (after
     multiplying by the scale), which the shards store them in (`DatasetSpec.storage`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from preprocessing.spec import DatasetSpec


class RawDataMissing(FileNotFoundError):
    """The official raw files are not where they should be (and could not be downloaded)."""


@dataclasses.dataclass
class RawExample:
    """One raw example, before normalization and tokenization.

    `input` has the spec's `input_shape` and `input_dtype`; `label` matches `label_shape`.
    `group` is what the split is decided on when examples must not leak across splits
    (e.g. a PAMAP2 subject, a LibriSpeech speaker); it defaults to the id.
    `split` may be fixed by the raw format itself (official train/test files).
    """

    id: str
    input: np.ndarray
    label: Any
    split: str | None = None
    group: str | None = None


@dataclasses.dataclass
class RawBatch:
    """Consecutive examples of one source, as the Beam job tokenizes them: one entry per
    example in each list, `inputs` stacked `[N, *input_shape]` (for dict inputs, a dict of
    per-key lists)."""

    ids: list[str]
    inputs: Any
    labels: Any
    splits: list[str | None]
    groups: list[str | None]

    def __len__(self) -> int:
        return len(self.ids)

    def example(self, i: int) -> RawExample:
        inputs = ({k: v[i] for k, v in self.inputs.items()} if isinstance(self.inputs, dict)
                  else self.inputs[i])
        return RawExample(id=self.ids[i], input=inputs, label=self.labels[i],
                          split=self.splits[i], group=self.groups[i])

    def examples(self) -> Iterator[RawExample]:
        return (self.example(i) for i in range(len(self)))

    @classmethod
    def of(cls, examples: Sequence[RawExample]) -> "RawBatch":
        first = examples[0].input
        if isinstance(first, dict):
            inputs = {k: [ex.input[k] for ex in examples] for k in first}
        else:
            inputs = np.stack([np.asarray(ex.input) for ex in examples])
        return cls(ids=[ex.id for ex in examples], inputs=inputs,
                   labels=[ex.label for ex in examples], splits=[ex.split for ex in examples],
                   groups=[ex.group for ex in examples])


@dataclasses.dataclass
class BadRecord:
    """A record that could not be read or has the wrong shape/dtype; `path` names where."""

    path: str
    reason: str


def hash_fraction(key: str, seed: int) -> float:
    """A stable number in [0, 1) from a string key and a seed (same on every machine/run)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_by_fractions(key: str, seed: int, fractions: Sequence[tuple[str, float]]) -> str:
    """Assigns `key` to the split whose cumulative fraction interval holds its hash."""
    u = hash_fraction(key, seed)
    total = 0.0
    for name, frac in fractions:
        total += frac
        if u < total:
            return name
    return fractions[-1][0]


def split_by_fractions_batch(keys: Sequence[str], seed: int,
                             fractions: Sequence[tuple[str, float]]) -> list[str]:
    """`split_by_fractions` of many keys: the same hash and cut points, the lookup vectorized."""
    # `hash_fraction`'s sha256 of f"{seed}:{key}", resumed from the hashed prefix (one copy
    # of its state per key instead of formatting and hashing the whole string again).
    copy_prefix = hashlib.sha256(f"{seed}:".encode()).copy
    digests = []
    for key in keys:
        state = copy_prefix()
        state.update(key.encode())
        digests.append(state.digest()[:8])
    digests = b"".join(digests)
    u = np.frombuffer(digests, ">u8").astype(np.float64) / 2.0**64
    cut, total = [], 0.0
    for _, fraction in fractions:  # summed in the same order as split_by_fractions
        total += fraction
        cut.append(total)
    index = np.minimum(np.searchsorted(np.asarray(cut), u, side="right"), len(fractions) - 1)
    names = [name for name, _ in fractions]
    return [names[i] for i in index.tolist()]


class DatasetReader:
    """Base class; see the module docstring for the contract."""

    name: str = ""
    # Split fractions used by the default `split_of` (by hash of `group or id`).
    split_fractions: tuple[tuple[str, float], ...] = (("train", 0.8), ("val", 0.1), ("test", 0.1))
    # None: per-channel statistics computed by the pipeline on the train split.
    # Otherwise {"mean": [...], "std": [...]} fixed by DABS, optionally with "source": "none"
    # for an identity (mean 0, std 1) where the reference feeds raw values or [0, 1] pixels.
    fixed_normalization: dict[str, Any] | None = None
    # Which splits pretraining and the probe use (DatasetSpec.protocol); None: the defaults
    # train / train / val / test.
    protocol: dict[str, Any] | None = None
    # The shards store continuous raw values as `storage_dtype` after multiplying them by
    # `storage_scale` (DatasetSpec.storage): a reader sets the narrowest dtype its values are
    # exact in (uint8 pixels, uint16 EuroSAT bands; [0, 1] pixels are uint8 with scale 255).
    # The job checks every example and reports one that is not exact as a bad record.
    storage_dtype: str = "float32"
    storage_scale: float = 1.0

    # Folder under data/raw/ that holds the raw files by default; datasets made from the same
    # files share one (higgs-transfer reads data/raw/higgs, vqa reads data/raw/mscoco), so
    # nothing is downloaded or stored twice. Empty: the dataset's own name.
    raw_folder: str = ""

    @classmethod
    def default_data_dir(cls) -> str:
        return os.path.join("data", "raw", cls.raw_folder or cls.name)

    def __init__(self, data_dir: str | None = None, **options: Any):
        self.data_dir = data_dir
        self.options = options

    def spec_template(self) -> DatasetSpec:
        raise NotImplementedError

    def expected_files(self) -> list[str]:
        """Human-readable list of the raw files this reader looks for under data_dir."""
        return []

    def check_raw(self) -> None:
        """Raises RawDataMissing with the file to download and where to put it. No side effects:
        `--list` calls it for every dataset."""

    def prepare(self) -> None:
        """Once the raw files are there: turn them into what `list_sources` reads, when the
        official form cannot be read in place (e.g. LMDB folders inside a tarball). Called by
        the job before the final `spec_template()`, never by `--list`. Default: nothing."""

    def list_sources(self) -> list[Any]:
        raise NotImplementedError

    def read_source(self, source: Any) -> Iterator[RawExample | BadRecord]:
        raise NotImplementedError

    def split_of(self, example: RawExample, seed: int) -> str:
        if example.split is not None:
            return example.split
        return split_by_fractions(example.group or example.id, seed, self.split_fractions)

    def split_of_batch(self, batch: RawBatch, seed: int) -> list[str]:
        """`split_of` of every example of `batch` (without building RawExamples when the
        reader keeps the default rule)."""
        if type(self).split_of is DatasetReader.split_of:
            hashed = split_by_fractions_batch(
                [group or example_id for example_id, group in zip(batch.ids, batch.groups)],
                seed, self.split_fractions)
            return [split if split is not None else by_hash
                    for split, by_hash in zip(batch.splits, hashed)]
        return [self.split_of(example, seed) for example in batch.examples()]

    def read_source_batches(self, source: Any, batch_size: int) -> Iterator[Any]:
        """`read_source` grouped for the Beam job: `RawBatch`es of up to `batch_size`
        consecutive RawExamples; BadRecords and other records (a `RawSeries`) pass through
        one by one, in the order read."""
        batch: list[RawExample] = []
        for record in self.read_source(source):
            if type(record) is not RawExample:
                yield record
                continue
            batch.append(record)
            if len(batch) == batch_size:
                yield RawBatch.of(batch)
                batch = []
        if batch:
            yield RawBatch.of(batch)

    def read_all(self) -> Iterable[RawExample | BadRecord]:
        """Sequential reading, for tests and small local runs."""
        for source in self.list_sources():
            yield from self.read_source(source)
