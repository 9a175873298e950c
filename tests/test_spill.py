"""Bounded-memory shard writing: id-sorted spill runs merged into shards (pipeline/transforms.py)."""

from __future__ import annotations

import json
import os
import random

import pytest

from pipeline import preprocess, transforms


def test_merged_runs_is_the_sorted_union_with_a_small_fan_in(tmp_path):
    rng = random.Random(0)
    ids = [f"id-{i:04d}" for i in range(200)]
    rng.shuffle(ids)
    runs = []
    for r in range(10):  # 10 runs, merged 3 at a time: two rounds of intermediate runs
        chunk = sorted(ids[r * 20:(r + 1) * 20])
        path = str(tmp_path / f"run-{r}.run")
        assert transforms.write_run(path, [(i, i.encode() * 3) for i in chunk]) == 20
        runs.append(path)
    merged = list(transforms.merged_runs(runs, str(tmp_path / "scratch"), fan_in=3))
    assert [k.decode() for k, _ in merged] == sorted(ids)
    assert all(record == key * 3 for key, record in merged)
    assert any(name.startswith("scratch-1-") for name in os.listdir(tmp_path))


def test_run_file_format(tmp_path):
    """Each item is (uint32 key length, uint32 record length, key, record); str keys are
    stored as UTF-8."""
    import struct

    items = [(f"k{i:03d}" if i % 2 else f"k{i:03d}".encode(), b"r" * (i % 5)) for i in range(30)]
    expected = b"".join(struct.pack("<II", len(k), len(r)) + (k.encode() if isinstance(k, str) else k) + r
                        for k, r in items)
    path = str(tmp_path / "blocks.run")
    assert transforms.write_run(path, iter(items)) == 30
    with open(path, "rb") as f:
        assert f.read() == expected
    assert [(k.decode(), r) for k, r in transforms.read_run(path)] == [
        (k if isinstance(k, str) else k.decode(), r) for k, r in items]
    assert transforms.write_run(str(tmp_path / "empty.run"), []) == 0
    assert os.path.getsize(tmp_path / "empty.run") == 0


def test_truncated_run_file_names_the_file(tmp_path):
    path = str(tmp_path / "a.run")
    transforms.write_run(path, [("x", b"0123456789")])
    with open(path, "r+b") as f:
        f.truncate(12)
    with pytest.raises(IOError, match="a.run: truncated"):
        list(transforms.read_run(path))


def test_many_small_runs_give_the_same_shards_as_one_run(tmp_path, monkeypatch):
    """A spill budget of a few examples and a fan-in of 2: every shard is byte-identical."""
    argv = ["--dataset", "digits", "--num_shards", "2"]
    reference = preprocess.run(argv + ["--data_dir", str(tmp_path / "one")])

    written = []
    write_run = transforms.write_run
    monkeypatch.setattr(transforms, "SPILL_BUDGET_BYTES", 2_000)  # ~5 digits examples
    monkeypatch.setattr(transforms, "MERGE_FAN_IN", 2)
    monkeypatch.setattr(transforms, "write_run", lambda p, items: written.append(p) or write_run(p, items))
    spilled = preprocess.run(argv + ["--data_dir", str(tmp_path / "many")])

    assert len(written) > 300  # hundreds of runs, and merge rounds on top
    assert spilled.spec.content_hash == reference.spec.content_hash
    for split, info in reference.spec.splits.items():
        assert spilled.spec.splits[split].num_examples == info.num_examples
    for root, _, files in os.walk(reference.version_dir):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), reference.version_dir)
            if name != "spec.json":
                assert open(os.path.join(spilled.version_dir, rel), "rb").read() == \
                    open(os.path.join(root, name), "rb").read(), rel
    assert not os.path.exists(os.path.join(spilled.version_dir, "_manifest"))  # spill files gone
    assert json.load(open(os.path.join(spilled.version_dir, "spec.json")))["name"] == "digits"
