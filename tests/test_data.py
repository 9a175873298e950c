"""keras_metamae.data: shards + spec.json -> tf.data, and its error messages."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_metamae import data
from keras_metamae.data import records as data_records
from pipeline import transforms
from preprocessing import storage
from preprocessing.spec import DatasetSpec, SplitInfo


def legacy_example(tokens, label, example_id):
    """A record as pipeline versions <= 2 wrote it: normalized float32 tokens in a float_list."""
    return tf.train.Example(features=tf.train.Features(feature={
        "tokens": tf.train.Feature(float_list=tf.train.FloatList(value=np.ravel(tokens))),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[example_id.encode()]))}))


def write_version(root, name="toy", num_examples=10, num_shards=2, discrete=False, version="1",
                  splits=("train",), legacy=False):
    """A version directory in the token contract: 4 tokens of 3 values (or 4 ids), label = index % 3.
    `legacy`: as pipeline versions <= 2 wrote it (float_list tokens, GZIP shards, no storage)."""
    version_dir = os.path.join(root, name, version)
    spec = DatasetSpec(name=name, modality="token" if discrete else "image",
                       input_shape=[4] if discrete else [2, 2, 3],
                       tokenizer="discrete" if discrete else "patch2d",
                       patch_shape=[1] if discrete else [1, 1], num_tokens=4, token_grid=[4] if discrete else [2, 2],
                       token_dim=0 if discrete else 3, vocab_size=5 if discrete else 0, num_classes=3,
                       label_names=["a", "b", "c"])
    compression = "GZIP" if legacy else storage.SHARD_COMPRESSION
    if not legacy:
        spec.storage = storage.storage_for(spec)
    values = {}
    for split in splits:
        by_shard = {s: [] for s in range(num_shards)}
        for i in range(num_examples):
            example_id = f"{split}-{i:03d}"
            tokens = (np.arange(4) + i) % 5 if discrete else np.full((4, 3), i, np.float32) + np.arange(3)
            values[example_id] = (tokens, i % 3)
            by_shard[i % num_shards].append(
                legacy_example(tokens, i % 3, example_id).SerializeToString() if legacy else
                transforms.make_example(tokens, i % 3, example_id, spec))
        sizes = []
        for shard, records in by_shard.items():
            path = os.path.join(version_dir, transforms.shard_path(split, shard, num_shards, compression))
            transforms.write_records(path, records, compression)
            sizes.append(os.path.getsize(path))
        spec.splits[split] = SplitInfo(num_examples, transforms.shard_pattern(split, num_shards, compression),
                                       num_shards, shard_bytes=[] if legacy else sizes)
    spec.save(version_dir)
    return spec, version_dir, values


def collect(ds):
    batches = list(ds.as_numpy_iterator())
    return batches, [i.decode() for b in batches for i in b["id"]]


def test_round_trip_one_epoch(tmp_path):
    spec, version_dir, values = write_version(str(tmp_path), num_examples=10)
    ds = data.make_dataset(spec, version_dir, "train", 4, shuffle=False, repeat=False, drop_remainder=False)
    batches, ids = collect(ds)
    assert sorted(ids) == sorted(values) and len(ids) == 10
    b = batches[0]
    assert b["tokens"].shape == (4, 4, 3) and b["tokens"].dtype == np.float32
    assert b["label"].shape == (4,) and b["label"].dtype == np.int64
    for tokens, label, example_id in zip(b["tokens"], b["label"], b["id"]):
        expected_tokens, expected_label = values[example_id.decode()]
        np.testing.assert_array_equal(tokens, expected_tokens)
        assert label == expected_label


def test_shards_of_pipeline_version_2_are_still_read(tmp_path):
    spec, version_dir, values = write_version(str(tmp_path), num_examples=6, legacy=True)
    assert not spec.stores_raw_tokens and spec.shard_compression == "GZIP"
    batches, ids = collect(data.make_dataset(None, version_dir, "train", 3, shuffle=False, repeat=False))
    assert sorted(ids) == sorted(values)
    for b in batches:
        for tokens, example_id in zip(b["tokens"], b["id"]):
            np.testing.assert_array_equal(tokens, values[example_id.decode()][0])


def test_uncompressed_local_shards_are_read_unbuffered(tmp_path):
    spec, version_dir, _ = write_version(str(tmp_path), num_examples=6)
    legacy, legacy_dir, _ = write_version(str(tmp_path / "v2"), num_examples=6, legacy=True)
    local = data.split_files(spec, version_dir, "train")
    assert data_records._read_buffer_bytes(local, spec) == 0
    # A user-space read-ahead where it saves requests or feeds a decompressor.
    assert data_records._read_buffer_bytes(["gs://bucket/" + os.path.basename(p) for p in local], spec) == 4 << 20
    assert data_records._read_buffer_bytes(data.split_files(legacy, legacy_dir, "train"), legacy) == 4 << 20


def test_discrete_tokens_and_spec_from_dir(tmp_path):
    _, version_dir, values = write_version(str(tmp_path), discrete=True, num_examples=6)
    batches, _ = collect(data.make_dataset(None, version_dir, "train", 3, shuffle=False, repeat=False))
    assert batches[0]["tokens"].shape == (3, 4) and batches[0]["tokens"].dtype == np.int64
    np.testing.assert_array_equal(batches[0]["tokens"][0], values[batches[0]["id"][0].decode()][0])


def test_seeded_shuffle_repeat_and_skip(tmp_path):
    spec, version_dir, _ = write_version(str(tmp_path), num_examples=40, num_shards=4)

    def first_ids(seed, n=6, skip=0):
        ds = data.make_dataset(spec, version_dir, "train", 8, seed=seed, skip_batches=skip)
        return [i.decode() for b in ds.take(n).as_numpy_iterator() for i in b["id"]]

    a = first_ids(1)
    assert a == first_ids(1)
    assert a != first_ids(2)
    assert len(a) == 48  # repeat: more batches than one epoch holds
    assert first_ids(1, n=4, skip=2) == a[16:48]
    assert sorted(a[:40]) != a[:40]  # actually shuffled


def test_input_context_shards_files(tmp_path):
    spec, version_dir, values = write_version(str(tmp_path), num_examples=12, num_shards=2)
    seen = []
    for pipeline_id in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                         num_replicas_in_sync=2)
        batches, ids = collect(data.make_dataset(spec, version_dir, "train", 4, shuffle=False,
                                                 repeat=False, input_context=ctx))
        assert all(len(b["id"]) == 2 for b in batches)  # per-replica share of the global batch
        seen.append(set(ids))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(values)
    ctx = tf.distribute.InputContext(num_input_pipelines=3, input_pipeline_id=0)
    with pytest.raises(data.DataError, match="--num_shards >= 3"):
        data.make_dataset(spec, version_dir, "train", 4, input_context=ctx)


def test_find_dataset_dir(tmp_path):
    root = str(tmp_path)
    # Not a registered dataset: the hint is the custom-data command that makes one.
    with pytest.raises(data.DataError, match=r"python -m pipeline.preprocess --dataset custom "
                                             r"--format .* --name toy --data_dir"):
        data.find_dataset_dir(root, "toy")
    with pytest.raises(data.DataError, match="python -m pipeline.preprocess --dataset eurosat"):
        data.find_dataset_dir(root, "eurosat")
    write_version(root, version="2")
    write_version(root, version="10")
    os.makedirs(os.path.join(root, "toy", "11"))  # incomplete: no spec.json
    os.makedirs(os.path.join(root, "toy", ".tmp-abc", "train"))
    assert data.find_dataset_dir(root, "toy") == os.path.join(root, "toy", "10")


def test_split_and_shard_errors(tmp_path):
    spec, version_dir, _ = write_version(str(tmp_path), num_examples=5, num_shards=2)
    with pytest.raises(data.DataError, match=r"no split 'val'.*\['train'\]"):
        data.make_dataset(spec, version_dir, "val", 2)
    with pytest.raises(data.DataError, match="fewer than batch_size=8"):
        data.make_dataset(spec, version_dir, "train", 8)
    assert len(collect(data.make_dataset(spec, version_dir, "train", 8, repeat=False,
                                         drop_remainder=False))[1]) == 5
    os.remove(os.path.join(version_dir, "train", "data-00001-of-00002.tfrecord"))
    with pytest.raises(data.DataError, match="found 1 shard files, spec.json says 2"):
        data.make_dataset(spec, version_dir, "train", 2)
    os.remove(os.path.join(version_dir, "train", "data-00000-of-00002.tfrecord"))
    with pytest.raises(data.DataError, match="no shard files for split 'train'"):
        data.make_dataset(spec, version_dir, "train", 2)


def test_empty_split(tmp_path):
    spec, version_dir, _ = write_version(str(tmp_path), num_examples=0, num_shards=1)
    with pytest.raises(data.DataError, match="split 'train' has no examples"):
        data.make_dataset(spec, version_dir, "train", 2)


def test_spec_feature_length_mismatch(tmp_path):
    spec, version_dir, _ = write_version(str(tmp_path), num_examples=4)
    spec.input_shape, spec.token_dim = [2, 2, 4], 4
    with pytest.raises(data.DataError, match=r"data-00000-of-00002.tfrecord: 'tokens' has 48 bytes "
                                             r"of float32, spec.json expects 64"):
        data.make_dataset(spec, version_dir, "train", 2)


def test_truncated_and_corrupt_shards_are_named(tmp_path):
    spec, version_dir, _ = write_version(str(tmp_path), num_examples=200, num_shards=2)
    broken = os.path.join(version_dir, "train", "data-00001-of-00002.tfrecord")
    content = open(broken, "rb").read()
    # Cut at a record boundary, an uncompressed shard reads as a shorter valid file: the size
    # recorded in spec.json catches it before training starts.
    record_size = len(content) // 100
    with open(broken, "wb") as f:
        f.write(content[:record_size * 50])
    with pytest.raises(data.DataError, match=r"data-00001-of-00002.tfrecord: \d+ bytes, spec.json "
                                             r"says \d+: the shard is truncated"):
        data.make_dataset(spec, version_dir, "train", 8)
    shard_files = sorted(glob.glob(os.path.join(version_dir, "train", "*")))
    assert [path for path, _ in data.find_corrupt_shards(spec, shard_files)] == [broken]
    # Damaged bytes inside a shard of the right size only show while iterating (CRC check).
    damaged = bytearray(content)
    damaged[len(content) // 2:len(content) // 2 + 8] = b"\xff" * 8
    with open(broken, "wb") as f:
        f.write(bytes(damaged))
    ds = data.make_dataset(spec, version_dir, "train", 8, shuffle=False, repeat=False)
    with pytest.raises(data.DataError, match="data-00001-of-00002.tfrecord") as info:
        with data.explain_data_errors(spec, version_dir, "train"):
            for _ in ds:
                pass
    assert "data-00000-of-00002" not in str(info.value)
    # A file that is not a TFRecord shard is caught before training starts.
    with open(broken, "wb") as f:
        f.write(b"x" * len(content))
    with pytest.raises(data.DataError, match="data-00001-of-00002.tfrecord: unreadable shard"):
        data.make_dataset(spec, version_dir, "train", 8)
