"""The splits the protein, speech and genomics transfer sets are probed on follow the paper's
protocol (Table 16, dabs_datasets.md): Pfam's transfer set is cut from pfam_valid as DABS cuts
it, TAPE tasks test on `_valid`, the speech sets train the probe on train + val, Genomics-ID
probes with batch 64, LibriSpeech dev-clean is split 80/20 per speaker with DABS's seed 42.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from preprocessing import registry
from preprocessing.datasets import _protein, librispeech
from preprocessing.datasets.base import BadRecord
from tests.fixtures import make_librispeech, make_pfam, make_stability

TRANSFER_EXAMPLES = 10  # of the miniature's 12 pfam_valid records: 2 stay `val`


def _splits_by_valid_index(reader) -> dict[int, str]:
    """{index of the record in pfam_valid: split} for the pfam_valid records the reader read."""
    out = {}
    for ex in reader.read_all():
        if isinstance(ex, BadRecord) or ex.split in ("train", "holdout"):
            continue
        stem, index = ex.id.split("/", 1)[1].rsplit("[", 1)
        assert stem.startswith("pfam_valid"), ex.id
        out[int(index.rstrip("]"))] = ex.split
    return out


def _dabs_pfam_transfer(num_valid: int, transfer_examples: int) -> dict[int, str]:
    """DABS's PfamTransfer/PfamPretrain, transcribed: pandas shuffles pfam_valid with
    random_state 42, the tail of NUM_TRANSFER_EXAMPLES rows is the transfer csv, whose head
    ceil(0.9 n) trains and tail floor(0.1 n) tests; the rest is the pretraining val csv."""
    import pandas as pd

    frame = pd.DataFrame({"record": range(num_valid)})
    shuffled = frame.sample(frac=1, random_state=42)  # (DABS resets the index; we keep it)
    transfer = shuffled.tail(transfer_examples)
    out = {int(i): "val" for i in shuffled.head(num_valid - transfer_examples)["record"]}
    out.update({int(i): "transfer_train"
                for i in transfer.head(math.ceil(0.9 * len(transfer)))["record"]})
    out.update({int(i): "transfer_test"
                for i in transfer.tail(math.floor(0.1 * len(transfer)))["record"]})
    return out


@pytest.mark.parametrize("layout", ["json", "lmdb"])
def test_pfam_transfer_set_is_dabs_tail_of_shuffled_pfam_valid(layout, tmp_path, monkeypatch):
    monkeypatch.setattr(_protein, "LMDB_RECORDS_PER_SOURCE", 4)  # pfam_valid in 3 LMDB ranges
    make = make_pfam.make_raw if layout == "json" else make_pfam.make_lmdb
    reader = registry.get_reader("pfam", data_dir=make(str(tmp_path)),
                                 transfer_examples=str(TRANSFER_EXAMPLES))
    num_valid = make_pfam.COUNTS["pfam_valid"]
    assert _splits_by_valid_index(reader) == _dabs_pfam_transfer(num_valid, TRANSFER_EXAMPLES)
    # Not the held-out families, and pretraining only on pfam_train.
    assert reader.protocol["probe_train"] == ["transfer_train"]
    assert reader.protocol["probe_test"] == ["transfer_test"]
    assert reader.protocol["pretrain"] == ["train"]
    # The 200,000 default exceeds the miniature: all of pfam_valid is the transfer set.
    default = registry.get_reader("pfam", data_dir=reader.data_dir)
    assert _splits_by_valid_index(default) == _dabs_pfam_transfer(num_valid, num_valid)


def test_pfam_protocol_reaches_spec_json(tmp_path):
    from pipeline import preprocess

    result = preprocess.run([
        "--dataset", "pfam", "--raw_data_dir", make_pfam.make_raw(str(tmp_path)),
        "--data_dir", str(tmp_path / "out"), "--num_shards", "1", "--max_bad_fraction", "0.5",
        "--reader_option", f"transfer_examples={TRANSFER_EXAMPLES}"])
    with open(os.path.join(result.version_dir, "spec.json")) as f:
        spec = json.load(f)
    counts = {name: s["num_examples"] for name, s in spec["splits"].items()}
    assert counts == {"train": make_pfam.COUNTS["pfam_train"], "val": 2, "transfer_train": 9,
                      "transfer_test": 1, "holdout": make_pfam.COUNTS["pfam_holdout"]}
    assert spec["protocol"] == {"pretrain": ["train"], "probe_train": ["transfer_train"],
                                "probe_val": [], "probe_test": ["transfer_test"]}
    assert result.spec.protocol_splits("probe_test") == ["transfer_test"]


def test_pfam_transfer_examples_option_is_checked(tmp_path):
    reader = registry.get_reader("pfam", data_dir=str(tmp_path), transfer_examples="0")
    with pytest.raises(ValueError, match="transfer_examples='0'.*positive"):
        reader.spec_template()


@pytest.mark.parametrize("name", ["scop", "secondary-structure", "stability", "fluorescence"])
def test_tape_probe_tests_on_valid_unless_test_split_is_given(name):
    reader = registry.get_reader(name)
    assert reader.protocol == {"pretrain": ["train"], "probe_train": ["train"], "probe_val": [],
                               "probe_test": ["val"]}
    on_test = registry.get_reader(name, test_split="test")
    assert on_test.protocol["probe_test"] == ["test"] and on_test.protocol["probe_val"] == ["val"]
    with pytest.raises(ValueError, match="test_split='nope'.*expected one of val, test"):
        registry.get_reader(name, test_split="nope").spec_template()


def test_tape_test_split_option_reaches_spec_json(tmp_path):
    from pipeline import preprocess

    data_dir = make_stability.make_raw(str(tmp_path))
    specs = {}
    for option in ([], ["--reader_option", "test_split=test"]):
        result = preprocess.run(["--dataset", "stability", "--raw_data_dir", data_dir,
                                 "--data_dir", str(tmp_path / f"out{len(option)}"),
                                 "--num_shards", "1", "--max_bad_fraction", "0.5", *option])
        with open(os.path.join(result.version_dir, "spec.json")) as f:
            specs[bool(option)] = json.load(f)
    assert specs[False]["protocol"]["probe_test"] == ["val"]
    assert specs[False]["splits"]["val"]["num_examples"] > 0
    assert specs[True]["protocol"]["probe_test"] == ["test"]
    assert specs[True]["protocol"]["probe_val"] == ["val"]


@pytest.mark.parametrize("name", ["audio-mnist", "fluent-speech-action", "fluent-speech-object",
                                  "fluent-speech-location", "google-speech", "voxceleb1"])
def test_speech_transfer_probes_train_on_train_and_val(name):
    reader = registry.get_reader(name)
    splits = [s for s, _ in reader.split_fractions]
    assert reader.protocol["probe_train"] == ["train", "val"]
    assert reader.protocol["probe_val"] == [] and reader.protocol["probe_test"] == ["test"]
    assert set(sum((v for v in reader.protocol.values() if isinstance(v, list)), [])) <= set(splits)


def test_genomics_probe_batch_sizes_follow_table_16():
    assert registry.get_reader("genomics-id").protocol["probe_batch_size"] == 64
    assert registry.get_reader("genomics-ood").protocol["probe_batch_size"] == 32
    assert not (registry.get_reader("genomics").protocol or {}).get("probe_batch_size")


def _dabs_dev_clean_split(file_stems: list[str]) -> dict[str, str]:
    """DABS's dev-clean split, restated: utterances sorted by file stem; speakers in numeric
    order; for each, one RandomState(42) shared by all speakers permutes the positions of the
    speaker's utterances, and the first int(0.8 n) of them are train."""
    ordered = sorted(file_stems)
    speaker_of = np.array([int(stem.split("-")[0]) for stem in ordered])
    rng = np.random.RandomState(42)
    split = {}
    for speaker in sorted(set(speaker_of.tolist())):
        positions = np.flatnonzero(speaker_of == speaker)
        rng.shuffle(positions)
        cut = int(0.8 * len(positions))
        split.update({ordered[i]: "train" for i in positions[:cut]})
        split.update({ordered[i]: "test" for i in positions[cut:]})
    return split


def test_dev_clean_split_is_dabs_80_20_per_speaker():
    rng = np.random.default_rng(0)
    # Speakers whose numeric and text order differ; chapters of different digit counts.
    stems = [f"{speaker}-{chapter}-{n:04d}"
             for speaker in (84, 174, 251, 1272, 2277, 3000)
             for chapter in (rng.integers(10, 99), rng.integers(1000, 200000))
             for n in range(int(rng.integers(1, 14)))]
    rng.shuffle(stems)  # the order files are found in does not matter
    splits = librispeech.dabs_dev_clean_splits(stems)
    assert splits == _dabs_dev_clean_split(stems)
    for speaker in {s.split("-")[0] for s in stems}:
        mine = [stem for stem in stems if stem.startswith(speaker + "-")]
        assert sum(splits[s] == "train" for s in mine) == int(0.8 * len(mine))


@pytest.mark.parametrize("extracted", [False, True])
def test_dev_clean_reader_uses_the_dabs_split(extracted, tmp_path):
    reader = registry.get_reader("librispeech-dev-clean", data_dir=make_librispeech.make_raw(
        str(tmp_path), extracted=extracted))
    reader.list_sources()
    stems = [f"{speaker}-{chapter}-{n:04d}"
             for speaker, utts in make_librispeech.UTTERANCES["dev-clean"].items()
             for chapter, n, _ in utts]
    assert reader.dabs_splits() == _dabs_dev_clean_split(stems)
    examples = [ex for ex in reader.read_all() if not isinstance(ex, BadRecord)]
    assert {ex.id: reader.split_of(ex, seed=0) for ex in examples} == _dabs_dev_clean_split(stems)
