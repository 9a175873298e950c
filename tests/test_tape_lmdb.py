"""pfam and the TAPE transfer sets read from TAPE's official LMDB release (`data_pytorch/<task>
.tar.gz` -> `<task>/<task>_<split>.lmdb/`), checked against the JSON path on the same records.

The fixtures write the same miniature records in both formats; in the LMDB copy the malformed
record is a value that does not unpickle (so both paths have exactly one bad record, at the same
index, and the same good records).
"""

from __future__ import annotations

import glob
import os
import pickle
import re

import numpy as np
import pytest

from preprocessing import registry
from preprocessing.datasets import _protein
from preprocessing.datasets.base import BadRecord, RawDataMissing
from tests.fixtures import (make_fluorescence, make_pfam, make_scop, make_secondary_structure,
                            make_stability)

FIXTURES = {"pfam": make_pfam, "scop": make_scop, "secondary-structure": make_secondary_structure,
            "stability": make_stability, "fluorescence": make_fluorescence}
# Small read ranges, so every LMDB train split is several Beam sources.
RECORDS_PER_SOURCE = 4


def _run(name: str, data_dir: str, out: str):
    from pipeline import preprocess

    return preprocess.run(["--dataset", name, "--raw_data_dir", data_dir, "--data_dir", out,
                           "--num_shards", "1", "--max_bad_fraction", "0.5"])


def _examples(result) -> dict[str, dict[str, tuple[list, list]]]:
    """{split: {id without the .json/.lmdb suffix: (tokens, label)}} read back from the shards."""
    import tensorflow as tf

    spec = result.spec
    label_type = tf.int64 if spec.label_dtype == "int64" else tf.float32
    features = {"tokens": tf.io.VarLenFeature(tf.int64), "label": tf.io.VarLenFeature(label_type),
                "id": tf.io.FixedLenFeature([], tf.string)}
    out = {}
    for split, info in spec.splits.items():
        files = sorted(glob.glob(os.path.join(result.version_dir, info.file_pattern)))
        rows = {}
        for record in tf.data.TFRecordDataset(files, compression_type=spec.shard_compression):
            ex = tf.io.parse_single_example(record, features)
            # Records without an `id` are named `<file>[<index>]`: compare by stem and index.
            key = re.sub(r"\.(json|lmdb)\[", "[", ex["id"].numpy().decode())
            rows[key] = (tf.sparse.to_dense(ex["tokens"]).numpy().tolist(),
                         tf.sparse.to_dense(ex["label"]).numpy().tolist())
        out[split] = rows
    return out


@pytest.fixture(scope="module")
def json_run(tmp_path_factory):
    """dataset -> (result, examples) of the Beam job on the JSON fixture, run once."""
    cache = {}

    def get(name):
        if name not in cache:
            root = str(tmp_path_factory.mktemp(f"json_{name}"))
            result = _run(name, FIXTURES[name].make_raw(root), os.path.join(root, "out"))
            cache[name] = (result, _examples(result))
        return cache[name]

    return get


def _assert_same_as_json(name, result, json_run):
    module = FIXTURES[name]
    json_result, json_examples = json_run(name)
    counts = {k: v.num_examples for k, v in result.spec.splits.items()}
    assert counts == {k: v.num_examples for k, v in json_result.spec.splits.items()}
    assert sum(counts.values()) > 0
    assert (result.spec.num_classes, result.spec.label_names) == (
        json_result.spec.num_classes, json_result.spec.label_names)
    assert len(result.bad_records) == 1
    bad = result.bad_records[0]
    assert bad["path"].endswith(
        os.path.join(module.TASK, f"{module.TRAIN_STEM}.lmdb[{module.MALFORMED_INDEX}]"))
    assert "does not unpickle" in bad["reason"]
    assert len(json_result.bad_records) == 1
    assert _examples(result) == json_examples


@pytest.mark.parametrize("name", ["scop", "secondary-structure", "stability", "fluorescence",
                                  "pfam"])
def test_lmdb_through_beam_matches_json(name, json_run, tmp_path, monkeypatch):
    monkeypatch.setattr(_protein, "LMDB_RECORDS_PER_SOURCE", RECORDS_PER_SOURCE)
    data_dir = FIXTURES[name].make_lmdb(str(tmp_path))
    reader = registry.get_reader(name, data_dir=data_dir)
    train = [s for s in reader.list_sources() if s[0] == "train"]
    n = len(FIXTURES[name].records()[FIXTURES[name].TRAIN_STEM])
    assert [s[2:] for s in train] == [(a, min(a + RECORDS_PER_SOURCE, n))
                                      for a in range(0, n, RECORDS_PER_SOURCE)]
    result = _run(name, data_dir, str(tmp_path / "out"))
    _assert_same_as_json(name, result, json_run)
    if name not in ("pfam", "fluorescence"):  # records with an `id`: byte-identical shards
        assert result.spec.content_hash == json_run(name)[0].spec.content_hash


def test_pfam_tarball_is_extracted_once_then_read_from_the_folders(json_run, tmp_path):
    data_dir = make_pfam.make_tarball(str(tmp_path))
    tarball = os.path.join(data_dir, "pfam.tar.gz")
    assert os.listdir(data_dir) == ["pfam.tar.gz"]
    first = _run("pfam", data_dir, str(tmp_path / "out1"))
    # The label map (spec) came from the extracted train split, like the JSON run's.
    _assert_same_as_json("pfam", first, json_run)
    assert sorted(os.listdir(data_dir)) == ["pfam", "pfam.tar.gz"]  # no temp folder left
    assert sorted(os.listdir(os.path.join(data_dir, "pfam"))) == [
        "pfam_holdout.lmdb", "pfam_train.lmdb", "pfam_valid.lmdb"]
    data_mdb = os.path.join(data_dir, "pfam", "pfam_train.lmdb", "data.mdb")
    before = os.stat(data_mdb)
    # A second run must not touch the tarball: make it unreadable and run again.
    with open(tarball, "wb") as f:
        f.write(b"not a tarball")
    second = _run("pfam", data_dir, str(tmp_path / "out2"))
    after = os.stat(data_mdb)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert second.spec.content_hash == first.spec.content_hash
    assert sorted(os.listdir(data_dir)) == ["pfam", "pfam.tar.gz"]


def test_extraction_into_an_existing_task_folder_and_a_broken_tarball(tmp_path):
    data_dir = make_scop.make_tarball(str(tmp_path))
    existing = os.path.join(data_dir, "remote_homology")
    os.makedirs(existing)
    with open(os.path.join(existing, "notes.txt"), "w") as f:
        f.write("kept")
    stale = os.path.join(data_dir, ".remote_homology.tar.gz.extract-999999999-dead")
    os.makedirs(stale)  # left by a killed extraction (no such pid)
    reader = registry.get_reader("scop", data_dir=data_dir)
    assert reader.list_sources()[0][1] == os.path.join(
        existing, "remote_homology_train.lmdb")
    assert sorted(os.listdir(existing)) == [
        "notes.txt", "remote_homology_test_fold_holdout.lmdb", "remote_homology_train.lmdb",
        "remote_homology_valid.lmdb"]
    assert sorted(os.listdir(data_dir)) == ["remote_homology", "remote_homology.tar.gz"]

    broken = make_stability.make_tarball(str(tmp_path))
    with open(os.path.join(broken, "stability.tar.gz"), "r+b") as f:
        f.truncate(100)
    reader = registry.get_reader("stability", data_dir=broken)
    with pytest.raises(RawDataMissing, match=r"stability\.tar\.gz: cannot extract.*data_pytorch"):
        reader.list_sources()
    assert os.listdir(broken) == ["stability.tar.gz"]  # nothing half-extracted


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_lmdb_record_lacking_a_field_or_value_is_a_bad_record(name, tmp_path):
    """With the malformed record pickled as is, the LMDB path rejects it like the JSON path."""
    module = FIXTURES[name]
    json_bad = [r for r in registry.get_reader(name, data_dir=module.make_raw(str(tmp_path)))
                .read_all() if isinstance(r, BadRecord)]
    data_dir = module.make_lmdb(str(tmp_path), bad_pickle=False)
    train = os.path.join(data_dir, module.TASK, module.TRAIN_STEM + ".lmdb")
    import lmdb

    env = lmdb.open(train)
    with env.begin(write=True) as txn:  # a key num_examples promises but that is not there
        n = pickle.loads(txn.get(b"num_examples"))
        txn.put(b"num_examples", pickle.dumps(n + 1))
    env.close()
    records = list(registry.get_reader(name, data_dir=data_dir).read_all())
    bad = [r for r in records if isinstance(r, BadRecord)]
    assert [b.path for b in bad] == [f"{train}[{module.MALFORMED_INDEX}]", f"{train}[{n}]"]
    assert bad[0].reason == json_bad[0].reason
    assert "missing" in bad[1].reason


@pytest.mark.parametrize("name", ["pfam", "scop"])
def test_lmdb_without_num_examples_or_corrupt_is_a_clear_error(name, tmp_path):
    from pipeline import preprocess

    import lmdb

    module = FIXTURES[name]
    data_dir = module.make_lmdb(str(tmp_path))
    train = os.path.join(data_dir, module.TASK, module.TRAIN_STEM + ".lmdb")
    env = lmdb.open(train)
    with env.begin(write=True) as txn:
        txn.delete(b"num_examples")
    env.close()
    argv = ["--dataset", name, "--raw_data_dir", data_dir, "--data_dir", str(tmp_path / "out")]
    with pytest.raises(_protein.LmdbError, match=re.escape(train) + r": .*no `num_examples`"):
        preprocess.run(argv)
    with open(os.path.join(train, "data.mdb"), "wb") as f:
        f.write(b"\0garbage" * 1000)
    with pytest.raises(_protein.LmdbError, match=re.escape(train) + r": not a readable LMDB"):
        preprocess.run(argv)
    # A RawDataMissing: the command line reports it as an error line (exit 2), not a traceback.
    assert issubclass(_protein.LmdbError, RawDataMissing)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_missing_raw_data_names_the_lmdb_tarball_and_folder(name, tmp_path):
    module = FIXTURES[name]
    reader = registry.get_reader(name, data_dir=str(tmp_path))
    url = f"http://s3.amazonaws.com/songlabdata/proteindata/data_pytorch/{module.TASK}.tar.gz"
    with pytest.raises(RawDataMissing) as info:
        reader.check_raw()
    message = str(info.value)
    assert url in message and f"{module.TASK}/{module.TRAIN_STEM}.lmdb/" in message
    assert str(tmp_path) in message
    expected = reader.expected_files()
    assert expected[0].startswith(f"{module.TASK}.tar.gz") and url in expected[0]
    assert f"{module.TASK}/{module.TRAIN_STEM}.lmdb/" in expected
    assert f"{module.TRAIN_STEM}.json" in expected
    assert reader.spec_template().extra["lmdb_url"] == url


def test_list_does_not_extract_a_tarball(tmp_path):
    from pipeline import preprocess

    data_dir = make_pfam.make_tarball(str(tmp_path))
    raw_root = tmp_path / "raw"
    raw_root.mkdir()
    os.rename(data_dir, raw_root / "pfam")
    rows = {line.split()[0]: line for line in preprocess.list_datasets(str(raw_root)).splitlines()}
    assert rows["pfam"].endswith(" yes")
    assert os.listdir(raw_root / "pfam") == ["pfam.tar.gz"]
