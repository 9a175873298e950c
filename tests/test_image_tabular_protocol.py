"""The image and tabular datasets follow the MetaMAE/DABS protocol: EuroSAT's held-out transfer
set, the input scale the reference feeds (raw HIGGS values, [0, 1] pixels), the probe's data
(DTD and Aircraft train+val, VGG Flowers per class 80/20, GTSRB per image), Aircraft's
bounding-box crop and HIGGS's pretrain/transfer cut. Miniatures in the raw formats
(tests/fixtures/make_*.py); the split rules are also checked on many synthetic ids.
"""

from __future__ import annotations

import collections
import math
import os
from collections import defaultdict

import numpy as np
import pytest

from preprocessing import registry
from preprocessing.datasets import _dabs_shuffle
from preprocessing.datasets.base import BadRecord, RawDataMissing, RawExample, split_by_fractions
from preprocessing.spec import DatasetSpec, SplitInfo
from tests.fixtures import make_aircraft, make_vgg_flower

# Datasets the reference feeds unnormalized: HIGGS raw values, images as ToTensor's [0, 1].
UNNORMALIZED = ["higgs", "higgs-transfer", "wafermap", "wafermap-unlabeled", "imagenet32",
                "cifar10", "cub", "vgg-flower", "dtd", "traffic-sign", "aircraft"]


def good(records):
    return [r for r in records if isinstance(r, RawExample)]


def with_splits(spec: DatasetSpec, names) -> DatasetSpec:
    spec.splits = {n: SplitInfo(num_examples=1, num_shards=1, file_pattern=f"{n}/*") for n in names}
    return spec.validate()


def _counts(reader, ids, seed=42):
    counts = defaultdict(int)
    for example_id in ids:
        counts[reader.split_of(RawExample(id=example_id, input=None, label=0), seed)] += 1
    return counts


# === EuroSAT: 10 % transfer set, never pretrained on; the probe splits it 90/10 ===
def test_eurosat_holds_out_a_transfer_set_and_probes_on_it_only():
    reader = registry.get_reader("eurosat")
    ids = [f"{cls}_{n}" for cls in reader.spec_template().label_names for n in range(1, 2701)]
    counts = _counts(reader, ids)
    assert set(counts) == {"pretrain", "transfer_train", "transfer_test"}
    # DABS: 24,300 / 2,430 / 270 of 27,000 (binomial spread of a hash: a few sigma).
    assert abs(counts["pretrain"] - 24_300) < 250
    assert abs(counts["transfer_train"] - 2_430) < 150
    assert abs(counts["transfer_test"] - 270) < 50
    spec = with_splits(reader.spec_template(), counts)
    spec.protocol = dict(reader.protocol)
    spec.validate()
    assert spec.protocol_splits("pretrain") == ["pretrain"]
    assert spec.protocol_splits("probe_train") == ["transfer_train"]
    assert spec.protocol_splits("probe_val") == []
    assert spec.protocol_splits("probe_test") == ["transfer_test"]
    # The id (the same in the zip, the extracted folder and TFDS) decides, with --seed.
    assert _counts(reader, ids[:500]) == _counts(reader, ids[:500])
    assert _counts(reader, ids, seed=7) != counts


@pytest.mark.parametrize("count", [1, 2, 7, 100, 2_701])
def test_dabs_shuffle_is_pandas_sample_of_the_whole_frame(count):
    pd = pytest.importorskip("pandas")
    shuffled = pd.DataFrame({"record": np.arange(count)}).sample(frac=1, random_state=42)
    positions = _dabs_shuffle.shuffled_positions(count)
    np.testing.assert_array_equal(positions[shuffled["record"].to_numpy()], np.arange(count))


def test_eurosat_dabs_split_of_27000_records_is_the_pandas_head_and_tail():
    """The TFDS path's rule (EuroSATReader.dabs_split) on the real count, against DABS's
    pandas cuts: 24,300 / 2,430 / 270."""
    pd = pytest.importorskip("pandas")
    n = 27_000
    frame = pd.DataFrame({"record": np.arange(n)}).sample(frac=1, random_state=42)
    frame = frame.reset_index(drop=True)
    transfer = frame.tail(math.floor(0.1 * n))
    expected = dict.fromkeys(frame.head(math.ceil(0.9 * n))["record"].tolist(), "pretrain")
    expected.update(dict.fromkeys(transfer.head(math.ceil(0.9 * len(transfer)))["record"].tolist(),
                                  "transfer_train"))
    expected.update(dict.fromkeys(transfer.tail(math.floor(0.1 * len(transfer)))["record"].tolist(),
                                  "transfer_test"))
    reader = registry.get_reader("eurosat")
    got = {i: reader.dabs_split(i, n) for i in range(n)}
    assert got == expected
    assert collections.Counter(got.values()) == {"pretrain": 24_300, "transfer_train": 2_430,
                                                 "transfer_test": 270}


def test_eurosat_beam_job_writes_the_protocol(tmp_path):
    from pipeline import preprocess
    from tests.fixtures.make_eurosat import make_raw

    result = preprocess.run(["--dataset", "eurosat", "--raw_data_dir", make_raw(str(tmp_path), per_class=2),
                             "--data_dir", str(tmp_path / "out"), "--num_shards", "1"])
    spec = result.spec
    assert list(spec.splits) == ["pretrain", "transfer_train", "transfer_test"]
    assert sum(s.num_examples for s in spec.splits.values()) == 20
    assert spec.protocol["probe_train"] == ["transfer_train"] and spec.protocol["pretrain"] == ["pretrain"]
    assert spec.normalization["source"] == "dabs"  # EuroSAT keeps the fixed DABS band statistics


# === input scale ===
@pytest.mark.parametrize("name", UNNORMALIZED)
def test_reference_input_scale_is_kept(name, tmp_path):
    reader = registry.get_reader(name, data_dir=str(tmp_path))
    channels = reader.spec_template().input_shape[-1]
    assert reader.fixed_normalization == {"mean": [0.0] * channels, "std": [1.0] * channels,
                                          "source": "none"}


@pytest.mark.parametrize("name,fixture,feature_range", [
    ("higgs", "make_higgs", None), ("wafermap", "make_wafermap", (0.0, 1.0)),
    ("cifar10", "make_cifar10", (0.0, 1.0))])
def test_beam_job_stores_the_reader_values_unscaled(name, fixture, feature_range, tmp_path):
    """The tokens are the reader's values themselves: HIGGS features, pixels in [0, 1] (stored
    as uint8 / 255 for CIFAR-10 and for WaferMap's resized grey image)."""
    import importlib

    from keras_metamae import data
    from pipeline import preprocess

    module = importlib.import_module(f"tests.fixtures.{fixture}")
    data_dir = module.make_raw(str(tmp_path / "raw"))
    options = {"pretrain_rows": module.PRETRAIN_ROWS} if name == "higgs" else {}
    argv = ["--dataset", name, "--raw_data_dir", data_dir, "--data_dir", str(tmp_path / "out"),
            "--num_shards", "1", "--max_bad_fraction", "0.5"]
    for key, value in options.items():
        argv += ["--reader_option", f"{key}={value}"]
    result = preprocess.run(argv)
    assert result.spec.normalization["source"] == "none"
    assert (result.spec.storage_dtype, result.spec.storage_scale) == {
        "higgs": ("float32", 1.0), "wafermap": ("uint8", 255.0), "cifar10": ("uint8", 255.0)}[name]
    raw = {r.id: r.input for r in good(registry.get_reader(name, data_dir=data_dir, **options).read_all())}
    seen = 0
    for split, info in result.spec.splits.items():
        if not info.num_examples:
            continue
        for batch in data.make_dataset(result.spec, result.version_dir, split, 1, shuffle=False,
                                       repeat=False).as_numpy_iterator():
            tokens = batch["tokens"][0].reshape(-1)
            values = raw[batch["id"][0].decode()]
            assert sorted(tokens.tolist()) == pytest.approx(sorted(values.reshape(-1).tolist()), abs=1e-6)
            if feature_range:
                assert feature_range[0] <= tokens.min() and tokens.max() <= feature_range[1]
            seen += 1
    assert seen == len(raw)


# === HIGGS: DABS's 90/10 pretrain/transfer cut, then 90/10 train/test (seed 42) ===
def test_higgs_cut_and_transfer_split_follow_dabs():
    from preprocessing.datasets import higgs

    pretrain = registry.get_reader("higgs")
    transfer = registry.get_reader("higgs-transfer")
    # DABS: head(math.ceil(0.9 * n)) pretrains, tail(math.floor(0.1 * n)) is the transfer set.
    assert pretrain.pretrain_rows == transfer.pretrain_rows == math.ceil(0.9 * higgs.TOTAL_ROWS)
    assert higgs.TOTAL_ROWS - transfer.pretrain_rows == math.floor(0.1 * higgs.TOTAL_ROWS)
    assert transfer._line_bounds() == (9_900_001, float("inf"))
    counts = _counts(transfer, [f"higgs-{n:08d}" for n in range(9_900_001, 9_920_001)])
    assert set(counts) == {"train", "test"} and abs(counts["test"] - 2_000) < 150
    spec = with_splits(transfer.spec_template(), counts)
    assert (spec.protocol_splits("probe_train"), spec.protocol_splits("probe_test")) == (["train"], ["test"])


# === DTD and Aircraft: the probe trains on train + val ===
@pytest.mark.parametrize("name", ["dtd", "aircraft"])
def test_probe_trains_on_train_and_val(name, tmp_path):
    reader = registry.get_reader(name, data_dir=str(tmp_path))
    spec = with_splits(reader.spec_template(), ["train", "val", "test"])
    spec.protocol = dict(reader.protocol)
    spec.validate()
    assert spec.protocol_splits("probe_train") == ["train", "val"]
    assert spec.protocol_splits("probe_val") == []
    assert spec.protocol_splits("probe_test") == ["test"]
    assert spec.protocol_splits("pretrain") == ["train"]


# === VGG Flowers: per-class 80/20 as the reference ===
def reference_vgg_flower_split(labels: list[int], train: bool) -> list[str]:
    """The reference's per-class 80/20 split, restated (not its code): classes in order of
    first appearance; for each, one RandomState(42) shared by all classes permutes the class's
    image positions, and the first int(0.8 n) of them are train."""
    rng = np.random.RandomState(42)
    by_class: dict[int, list[str]] = {}
    for number, label in enumerate(labels, start=1):
        by_class.setdefault(label, []).append(f"image_{number:05d}")
    chosen = []
    for names in by_class.values():
        order = np.arange(len(names))
        rng.shuffle(order)
        cut = int(0.8 * len(names))
        chosen += [names[i] for i in (order[:cut] if train else order[cut:])]
    return chosen


def _assert_reference_flower_split(reader, examples, labels):
    train = set(reference_vgg_flower_split(labels, True))
    test = set(reference_vgg_flower_split(labels, False))
    splits = {ex.id: reader.split_of(ex, 42) for ex in examples}
    assert splits == {i: "train" if i in train else "test" for i in splits}
    return splits


def test_vgg_flower_splits_80_20_within_each_class(tmp_path):
    reader = registry.get_reader("vgg-flower", data_dir=make_vgg_flower.make_raw(str(tmp_path)))
    examples = good(reader.read_all())
    assert len(examples) == len(make_vgg_flower.LABELS) - 1  # image 5 is truncated
    _assert_reference_flower_split(reader, examples, make_vgg_flower.LABELS)
    from preprocessing.datasets.vgg_flower import per_class_split

    # The split counts every image of a class, readable or not (image 5 of class 7 is not).
    everything = per_class_split(reader.labels_by_number(), 42)
    by_class = defaultdict(list)
    for number, label in enumerate(make_vgg_flower.LABELS, start=1):
        by_class[label].append(everything[number])
    assert sorted(by_class[1]) == sorted(by_class[7]) == ["test"] + ["train"] * 4
    assert by_class[50] == ["test"] and by_class[102] == ["test"]
    assert {s for s, _ in reader.split_fractions} == {"train", "test"}
    # Large classes (40 to 258 images in the release) are 80/20 whatever the seed.
    big = {n: n % 3 for n in range(1, 601)}
    for seed in (42, 0):
        split = per_class_split(big, seed)
        assert sum(v == "train" for v in split.values()) == 3 * int(0.8 * 200)
    assert per_class_split(big, 0) != per_class_split(big, 42)


def test_vgg_flower_prepared_tfds_gets_the_same_per_class_split(tmp_path):
    pytest.importorskip("importlib_resources", reason="tensorflow_datasets' dataset writer needs it")
    from tests.fixtures import make_tfds

    reader = registry.get_reader("vgg-flower", data_dir=make_tfds.oxford_flowers102(str(tmp_path)))
    reader.list_sources()
    assert reader.reads_tfds()
    examples = good(reader.read_all())
    by_number = {int(ex.id.split("_")[1]): ex.label for ex in examples}
    labels = [by_number[n] for n in sorted(by_number)]
    assert sorted(by_number) == list(range(1, 11))
    splits = _assert_reference_flower_split(reader, examples, labels)
    assert sorted(splits.values()).count("train") == 8  # two classes of 5: 4 train each


# === GTSRB: 80/20 per image ===
def test_traffic_sign_splits_per_image(tmp_path):
    from tests.fixtures import make_traffic_sign

    reader = registry.get_reader("traffic-sign", data_dir=make_traffic_sign.make_raw(str(tmp_path)))
    examples = good(reader.read_all())
    assert examples and all(ex.group is None for ex in examples)
    for ex in examples:
        assert reader.split_of(ex, 42) == split_by_fractions(ex.id, 42, (("train", 0.8), ("test", 0.2)))
    # Frames of one track (one physical sign) are split like any other images.
    track = [f"00013-00007-{n:05d}" for n in range(30)]
    assert set(_counts(reader, track)) == {"train", "test"}
    counts = _counts(reader, [f"00013-{t:05d}-{n:05d}" for t in range(100) for n in range(30)])
    assert set(counts) == {"train", "test"} and abs(counts["test"] - 600) < 70


# === Aircraft: cropped to its bounding box ===
def test_aircraft_is_cropped_to_its_bounding_box(tmp_path):
    from PIL import Image

    from preprocessing.datasets import _images

    reader = registry.get_reader("aircraft", data_dir=make_aircraft.make_raw(str(tmp_path)))
    records = list(reader.read_all())
    examples = {ex.id: ex for ex in good(records)}
    assert sorted(examples) == sorted(set(make_aircraft.IMAGES) - {make_aircraft.BAD})
    (bad,) = [r for r in records if isinstance(r, BadRecord)]
    assert bad.path.endswith(f"images/{make_aircraft.BAD}.jpg") and "bounding box" in bad.reason
    for image_id, ex in examples.items():
        # Decode the JPEG as written; crop with PIL (right/bottom exclusive, 0-based) the box's
        # 1-based inclusive pixels; resize as every image is.
        data = _read_member(reader, image_id)
        with Image.open(data) as image:
            xmin, ymin, xmax, ymax = make_aircraft.BOXES[image_id]
            cropped = np.asarray(image.convert("RGB").crop((xmin - 1, ymin - 1, xmax, ymax)))
        assert cropped.shape[:2] == (ymax - ymin + 1, xmax - xmin + 1)
        np.testing.assert_array_equal(ex.input, _images.resize_to_input(cropped))
        whole = _images.resize_to_input(np.asarray(Image.open(_read_member(reader, image_id)).convert("RGB")))
        assert np.abs(ex.input - whole).max() > 0.05  # the crop changes the input


def _read_member(reader, image_id):
    import io
    import tarfile

    archive = os.path.join(reader.data_dir, "fgvc-aircraft-2013b.tar.gz")
    with tarfile.open(archive) as tf:
        return io.BytesIO(tf.extractfile(f"fgvc-aircraft-2013b/data/images/{image_id}.jpg").read())


def test_aircraft_without_the_box_file_names_it(tmp_path):
    reader = registry.get_reader("aircraft", data_dir=make_aircraft.make_raw(str(tmp_path), with_boxes=False))
    with pytest.raises(RawDataMissing, match="images_box.txt") as info:
        reader.check_raw()
    assert str(tmp_path) in str(info.value)
