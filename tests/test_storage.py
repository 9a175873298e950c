"""How the shards store tokens (preprocessing/storage.py, DatasetSpec.storage): the raw values in
their own dtype, in token order, normalized by the reader into exactly the float32 tokens the
old pipeline stored; records written without TensorFlow, byte for byte as protobuf writes them."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_metamae import data
from pipeline import preprocess, transforms
from preprocessing import registry, storage, tokenize
from preprocessing.datasets.base import RawBatch, RawExample
from preprocessing.datasets.eurosat import DABS_MEAN, DABS_STD
from preprocessing.spec import SplitInfo


def _example(**features) -> bytes:
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString(
        deterministic=True)


def test_records_are_byte_identical_to_protobuf_serialization():
    rng = np.random.default_rng(0)
    ints = np.array([0, 1, 127, 128, 300, 2**40, -1, -2**63, 2**63 - 1])
    floats = rng.normal(size=7).astype(np.float32)
    tokens = rng.integers(0, 2**16, 53_248).astype(np.uint16).tobytes()  # multi-byte lengths
    got = storage.serialize_example({
        "tokens": storage.bytes_feature(tokens), "id": storage.id_feature("AnnualCrop_1"),
        "ints": storage.int64_feature(storage.varint_rows(ints[np.newaxis])[0]),
        "floats": storage.float_feature(floats), "empty": storage.int64_feature(b"")})
    assert got == _example(
        tokens=tf.train.Feature(bytes_list=tf.train.BytesList(value=[tokens])),
        id=tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"AnnualCrop_1"])),
        ints=tf.train.Feature(int64_list=tf.train.Int64List(value=ints)),
        floats=tf.train.Feature(float_list=tf.train.FloatList(value=floats)),
        empty=tf.train.Feature(int64_list=tf.train.Int64List()))
    # A batch: ids of different lengths, labels and token rows of one length.
    ids = ["a", "bb-2", "ccc-333"]
    rows = storage.varint_rows(np.array([[3, 200], [0, 1], [5, 127]]))
    batch = storage.serialize_examples({"id": (storage.BYTES, [i.encode() for i in ids]),
                                        "tokens": (storage.INT64S, rows)})
    assert batch == [_example(
        id=tf.train.Feature(bytes_list=tf.train.BytesList(value=[i.encode()])),
        tokens=tf.train.Feature(int64_list=tf.train.Int64List(value=v)))
        for i, v in zip(ids, [[3, 200], [0, 1], [5, 127]])]


@pytest.mark.parametrize("name", ["eurosat", "pamap2", "higgs"])
def test_token_layout_is_raw_to_tokens_without_the_normalization(name):
    spec = registry.get_reader(name).spec_template()
    raw = np.random.default_rng(0).normal(size=(3, *spec.input_shape)).astype(np.float32)
    expected = tokenize.raw_to_tokens(raw, dataclasses.replace(spec, normalization={})).numpy()
    np.testing.assert_array_equal(storage.token_layout(raw, spec), expected)


def test_values_the_storage_dtype_cannot_hold_are_flagged():
    spec = registry.get_reader("cifar10").spec_template()
    spec.storage = storage.storage_for(spec, "uint8", 255.0)
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3))
    raw = pixels.astype(np.float32) / 255.0  # the reader's [0, 1] values
    raw[1, 0, 0, 0] = 0.5 / 255.0  # not a pixel / 255
    raw[2, 5, 5, 1] = np.nan
    stored, exact = storage.stored_tokens(raw, spec)
    assert exact.tolist() == [True, False, False, True] and stored.dtype == np.uint8
    np.testing.assert_array_equal(stored[0], storage.token_layout(pixels[:1], spec)[0])
    spec.storage = storage.storage_for(spec, "uint16")
    assert storage.stored_tokens(np.full((1, 32, 32, 3), 70_000.0), spec)[1].tolist() == [False]
    spec.storage = storage.storage_for(spec, "int16")
    assert storage.stored_tokens(np.full((1, 32, 32, 3), -3.0), spec)[1].tolist() == [True]
    # Through the job's encoder: such an example is a bad record naming it, the rest are kept.
    batch = RawBatch(ids=["a", "b", "c", "d"], inputs=raw, labels=[0, 1, 2, 3],
                     splits=[None] * 4, groups=[None] * 4)
    spec.storage = storage.storage_for(spec, "uint8", 255.0)
    encoded, bad, exact = transforms.encode_batch(batch, ["train"] * 4, spec, num_shards=2)
    assert [b.path for b in bad] == ["cifar10:b", "cifar10:c"] and len(encoded) == 2
    assert exact.tolist() == [True, False, False, True]
    assert "storage dtype uint8 (scale 255)" in bad[0].reason


def _write_version(root: str, spec, raw: np.ndarray) -> str:
    """A version directory holding `raw` in the spec's storage, written by the job's encoder."""
    batch = RawBatch(ids=[f"x{i:03d}" for i in range(len(raw))], inputs=raw,
                     labels=list(range(len(raw))), splits=[None] * len(raw),
                     groups=[None] * len(raw))
    encoded, bad, _ = transforms.encode_batch(batch, ["train"] * len(raw), spec, num_shards=1)
    assert not bad
    version_dir = os.path.join(root, spec.name, "3")
    path = os.path.join(version_dir, transforms.shard_path("train", 0, 1))
    transforms.write_records(path, [record for _, _, record in sorted(encoded, key=lambda e: e[1])])
    spec = dataclasses.replace(spec, splits={"train": SplitInfo(
        len(raw), transforms.shard_pattern("train", 1), 1, [os.path.getsize(path)])})
    spec.save(version_dir)
    return version_dir


@pytest.mark.parametrize("case", ["eurosat uint16", "image uint8 / 255", "digits uint8, statistics"])
def test_reader_gives_exactly_the_tokens_of_the_float_path(case, tmp_path):
    """The model sees the same float32 tokens as when the job normalized and stored floats:
    `tokenize.raw_to_tokens` on the reader's raw values, bit for bit."""
    rng = np.random.default_rng(0)
    name, dtype, scale = {"eurosat uint16": ("eurosat", "uint16", 1.0),
                          "image uint8 / 255": ("cifar10", "uint8", 255.0),
                          "digits uint8, statistics": ("digits", "uint8", 1.0)}[case]
    spec = registry.get_reader(name).spec_template()
    if name == "eurosat":
        raw = rng.normal(DABS_MEAN, DABS_STD, (12, *spec.input_shape)).clip(0).astype(np.uint16)
        spec.normalization = {"mean": DABS_MEAN, "std": DABS_STD, "source": "dabs"}
    elif name == "cifar10":
        raw = rng.integers(0, 256, (12, *spec.input_shape)).astype(np.float32) / 255.0
        spec.normalization = {"mean": [0.0] * 3, "std": [1.0] * 3, "source": "none"}
    else:
        raw = rng.integers(0, 17, (12, *spec.input_shape)).astype(np.float32)
        spec.normalization = {"mean": [4.885957362288135], "std": [6.017233711028653],
                              "source": "pipeline"}
    spec.storage = storage.storage_for(spec, dtype, scale)
    version_dir = _write_version(str(tmp_path), spec, raw)
    got = {}
    for batch in data.make_dataset(None, version_dir, "train", 5, shuffle=False, repeat=False,
                                   drop_remainder=False).as_numpy_iterator():
        got.update(zip(batch["label"].tolist(), batch["tokens"]))
    expected = tokenize.raw_to_tokens(raw.astype(np.float32), spec).numpy()
    np.testing.assert_array_equal(np.stack([got[i] for i in range(len(raw))]), expected)
    # What is stored is the raw values in their dtype, about half (uint16) or a quarter (uint8)
    # of the float32 tokens' bytes.
    itemsize = np.dtype(dtype).itemsize
    assert os.path.getsize(os.path.join(version_dir, "train", "data-00000-of-00001.tfrecord")) < \
        len(raw) * (raw[0].size * itemsize + 100)


def test_cifar10_through_the_job_is_stored_as_uint8_and_read_back_exactly(tmp_path):
    from tests.fixtures import make_cifar10

    data_dir = make_cifar10.make_raw(str(tmp_path / "raw"))
    result = preprocess.run(["--dataset", "cifar10", "--raw_data_dir", data_dir, "--data_dir",
                             str(tmp_path / "out"), "--num_shards", "1", "--max_bad_fraction", "0.5"])
    spec = result.spec
    assert spec.storage == {"dtype": "uint8", "scale": 255.0, "compression": ""}
    raw = {r.id: r.input for r in registry.get_reader("cifar10", data_dir=data_dir).read_all()
           if isinstance(r, RawExample)}
    seen = 0
    for batch in data.make_dataset(spec, result.version_dir, "train", 4, shuffle=False,
                                   repeat=False, drop_remainder=False).as_numpy_iterator():
        expected = tokenize.raw_to_tokens(np.stack([raw[i.decode()] for i in batch["id"]]), spec)
        np.testing.assert_array_equal(batch["tokens"], expected.numpy())
        seen += len(batch["id"])
    assert seen == spec.splits["train"].num_examples > 0


def test_an_example_keeps_its_shard_and_place_whatever_batch_it_is_in():
    ids = [f"AnnualCrop_{i}".encode() for i in range(1, 2001)]
    shards, keys = transforms.placements(ids, 42, 4)
    alone = [transforms.placements([i], 42, 4) for i in ids[:50]]
    assert [(s[0], k[0]) for s, k in alone] == list(zip(shards[:50], keys[:50]))
    assert sorted(set(shards)) == [0, 1, 2, 3] and min(np.bincount(shards)) > 400
    # The key sorts by the seeded hash, like order_key.
    assert sorted(keys) == [k for _, k in sorted(
        (transforms.order_key(i.decode(), 42), k) for i, k in zip(ids, keys))]
    assert transforms.placements(ids[:5], 7, 4)[1] != keys[:5]


def test_bad_record_from_a_reader_value_does_not_stop_the_job(tmp_path, monkeypatch):
    """A value the declared storage cannot hold is reported with the example, like an
    unreadable file, and --max_bad_fraction decides."""
    from preprocessing.datasets import digits

    monkeypatch.setattr(digits.DigitsReader, "read_source", lambda self, source: iter([
        RawExample(id=f"d{i}", input=np.full((8, 8, 1), 0.5 if i == 3 else float(i % 17), np.float32),
                   label=i % 10) for i in range(40)]))
    monkeypatch.setattr(digits.DigitsReader, "list_sources", lambda self: [0])
    out = str(tmp_path / "out")
    with pytest.raises(preprocess.PreprocessError, match="digits:d3: values not exactly"):
        preprocess.run(["--dataset", "digits", "--data_dir", out])
    result = preprocess.run(["--dataset", "digits", "--data_dir", out, "--max_bad_fraction", "0.1"])
    assert result.num_examples == 39 and [b["path"] for b in result.bad_records] == ["digits:d3"]
