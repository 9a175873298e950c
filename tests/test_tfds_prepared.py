"""Prepared TFDS directories as input (preprocessing/datasets/_tfds.py): every reader whose
dataset has a TFDS builder reads one when its raw files are absent, through the real Beam job,
with the same inputs, labels and splits as its raw format (tests/fixtures/make_tfds.py writes
the TFDS miniatures, most of them from the same data as the raw miniatures).
"""

from __future__ import annotations

import collections
import glob
import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("importlib_resources", reason="tensorflow_datasets' dataset writer needs it")

from preprocessing import registry  # noqa: E402
from preprocessing.datasets import _tfds  # noqa: E402
from preprocessing.datasets.base import BadRecord, RawDataMissing, RawExample  # noqa: E402
from tests.fixtures import (make_cifar10, make_genomics, make_higgs, make_librispeech,  # noqa: E402
                            make_tfds)

HIGGS_PRETRAIN_ROWS = 25


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """Raw and TFDS miniatures, written once (lazily) per module: dirs(kind) -> data_dir."""
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    root = tmp_path_factory.mktemp("tfds")
    made = {}
    makers = {
        "cifar10_raw": lambda: make_cifar10.make_raw(str(root / "raw")),
        "cifar10": lambda: make_tfds.cifar10(
            str(root), make_tfds.cifar10_examples_of_raw(dirs_("cifar10_raw"))),
        "higgs_raw": lambda: make_higgs.make_raw(str(root / "raw")),
        "higgs": lambda: make_tfds.higgs(str(root), make_tfds.higgs_rows_of_raw(dirs_("higgs_raw"))),
        "genomics_raw": lambda: make_genomics.make_raw(str(root / "raw")),
        "genomics": lambda: make_tfds.genomics_ood(str(root), raw_dir=dirs_("genomics_raw")),
        "librispeech_raw": lambda: make_librispeech.make_raw(str(root / "raw")),
        "librispeech": lambda: make_tfds.librispeech(str(root)),
        "dtd": lambda: make_tfds.dtd(str(root)),
        "vgg-flower": lambda: make_tfds.oxford_flowers102(str(root)),
        "cub": lambda: make_tfds.caltech_birds2011(str(root)),
        "imagenet32": lambda: make_tfds.imagenet_resized(str(root)),
        "eurosat": lambda: make_tfds.eurosat(str(root)),
    }

    def dirs_(kind):
        if kind not in made:
            made[kind] = makers[kind]()
        return made[kind]

    return dirs_


def good(records):
    return [r for r in records if isinstance(r, RawExample)]


def content(records):
    """Id-independent content of the good examples: sorted (split, label, input bytes)."""
    return sorted((r.split, int(r.label), r.input.dtype.str, r.input.tobytes()) for r in good(records))


# === the Beam job on each TFDS miniature ===
# dataset -> (miniature, reader options, {split: count} (None: only the total is fixed), total,
#             num_classes, number of bad records)
CASES = {
    "cifar10": ("cifar10", {}, {"train": 12, "test": 3}, 15, 10, 0),
    "dtd": ("dtd", {}, {"train": 3, "val": 3, "test": 3}, 9, 47, 0),
    "vgg-flower": ("vgg-flower", {}, {"train": 8, "test": 2}, 10, 102, 0),  # per class 80/20
    "cub": ("cub", {}, {"train": 4, "test": 3}, 7, 200, 0),
    "imagenet32": ("imagenet32", {}, None, 11, 1000, 0),
    "higgs": ("higgs", {"pretrain_rows": HIGGS_PRETRAIN_ROWS, "rows_per_source": 10}, None,
              HIGGS_PRETRAIN_ROWS, 2, 0),
    "higgs-transfer": ("higgs", {"pretrain_rows": HIGGS_PRETRAIN_ROWS}, None, 39 - HIGGS_PRETRAIN_ROWS, 2, 0),
    "genomics": ("genomics", {}, None, 20, 10, 1),
    "genomics-id": ("genomics", {}, None, 10, 10, 1),
    "genomics-ood": ("genomics", {}, None, 12, 60, 1),
    "librispeech": ("librispeech", {}, None, 5, 4, 1),  # speaker 777 is not in SPEAKERS.TXT
    "librispeech-dev-clean": ("librispeech", {}, None, 3, 2, 0),
}


@pytest.fixture(scope="module")
def preprocessed(dirs, tmp_path_factory):
    """Runs the Beam job once per (dataset, data_dir) and caches the result."""
    from pipeline import preprocess

    out = tmp_path_factory.mktemp("tfds_out")
    results = {}

    def run(name, kind, options=()):
        key = (name, kind)
        if key not in results:
            argv = ["--dataset", name, "--raw_data_dir", dirs(kind), "--data_dir", str(out / kind),
                    "--num_shards", "1", "--max_bad_fraction", "0.5", "--download", "never"]
            for k, v in dict(options).items():
                argv += ["--reader_option", f"{k}={v}"]
            results[key] = preprocess.run(argv)
        return results[key]

    return run


@pytest.mark.parametrize("name", sorted(CASES))
def test_prepared_tfds_through_the_beam_job(name, dirs, preprocessed):
    kind, options, splits, total, num_classes, num_bad = CASES[name]
    result = preprocessed(name, kind, options)
    spec = result.spec
    counts = {k: v.num_examples for k, v in spec.splits.items() if v.num_examples}
    assert sum(counts.values()) == total
    if splits is not None:
        assert counts == splits
    if name == "imagenet32":
        assert counts["test"] == 3  # TFDS `validation` is the test set; `train` -> train/val
    raw_spec = registry.get_reader(name).spec_template()  # the raw format's spec (no data needed)
    for field in ("input_shape", "input_dtype", "tokenizer", "num_tokens", "token_dim", "task"):
        assert getattr(spec, field) == getattr(raw_spec, field), field
    assert spec.num_classes == num_classes
    assert len(result.bad_records) == num_bad
    assert all(r["path"].startswith("tfds:" + dirs(kind)) for r in result.bad_records)


def _tokens_by_split(result):
    """{split: sorted [(label, flat tokens)]} as the trainer reads them."""
    from keras_metamae import data

    out = {}
    for split, info in result.spec.splits.items():
        rows = []
        if info.num_examples:
            for batch in data.make_dataset(result.spec, result.version_dir, split, 4, shuffle=False,
                                           repeat=False, drop_remainder=False).as_numpy_iterator():
                rows += [(int(label), tokens.reshape(-1))
                         for label, tokens in zip(batch["label"], batch["tokens"])]
        out[split] = sorted(rows, key=lambda row: (row[0], tuple(np.round(row[1], 4))))
    return out


def test_cifar10_tokens_equal_the_raw_archives(preprocessed):
    """The same images as raw pickles and as TFDS give the same normalized tokens per split
    (up to float rounding: the statistics are summed in whatever order Beam combines them)."""
    from_tfds = preprocessed("cifar10", "cifar10")
    from_raw = preprocessed("cifar10", "cifar10_raw")
    for key in ("mean", "std"):
        np.testing.assert_allclose(from_tfds.spec.normalization[key], from_raw.spec.normalization[key],
                                   rtol=1e-12)
    tokens_tfds, tokens_raw = _tokens_by_split(from_tfds), _tokens_by_split(from_raw)
    assert sorted(tokens_tfds) == sorted(tokens_raw) == ["test", "train"]
    for split in tokens_raw:
        assert [label for label, _ in tokens_tfds[split]] == [label for label, _ in tokens_raw[split]]
        np.testing.assert_allclose(np.stack([t for _, t in tokens_tfds[split]]),
                                   np.stack([t for _, t in tokens_raw[split]]), rtol=1e-5, atol=1e-6)


# === the same examples as the raw format ===
def test_cifar10_examples_equal_the_raw_archives(dirs):
    raw = list(registry.get_reader("cifar10", data_dir=dirs("cifar10_raw")).read_all())
    tfds_reader = registry.get_reader("cifar10", data_dir=dirs("cifar10"))
    from_tfds = list(tfds_reader.read_all())
    assert all(isinstance(s, _tfds.TfdsSource) for s in tfds_reader.list_sources())
    assert len(good(from_tfds)) == 15 and content(from_tfds) == content(raw)


def test_higgs_examples_equal_the_raw_csv(dirs):
    options = {"pretrain_rows": 1000}  # every row in `higgs`: TFDS keeps no line order
    raw = list(registry.get_reader("higgs", data_dir=dirs("higgs_raw"), **options).read_all())
    from_tfds = list(registry.get_reader("higgs", data_dir=dirs("higgs"), **options).read_all())
    assert len(good(from_tfds)) == 39 and content(from_tfds) == content(raw)
    assert all(r.id.startswith("higgs-tfds-") for r in from_tfds)
    # The boundary counts TFDS examples: higgs + higgs-transfer partition the TFDS split.
    parts = [registry.get_reader(n, data_dir=dirs("higgs"), pretrain_rows=HIGGS_PRETRAIN_ROWS).read_all()
             for n in ("higgs", "higgs-transfer")]
    ids = [[r.id for r in part] for part in parts]
    assert len(ids[0]) == HIGGS_PRETRAIN_ROWS and len(ids[1]) == 39 - HIGGS_PRETRAIN_ROWS
    assert sorted(ids[0] + ids[1]) == sorted(r.id for r in from_tfds)


@pytest.mark.parametrize("name", ["genomics", "genomics-id", "genomics-ood"])
def test_genomics_examples_equal_the_dabs_csvs(name, dirs):
    """TFDS written in the CSVs' order: the same ids (line numbers), labels, tokens, bad rows."""
    raw = list(registry.get_reader(name, data_dir=dirs("genomics_raw")).read_all())
    from_tfds = list(registry.get_reader(name, data_dir=dirs("genomics")).read_all())
    as_dict = lambda records: {r.id: (r.label, r.input.tolist()) for r in good(records)}  # noqa: E731
    assert as_dict(from_tfds) == as_dict(raw)
    bad_raw = [r for r in raw if isinstance(r, BadRecord)]
    bad_tfds = [r for r in from_tfds if isinstance(r, BadRecord)]
    assert [r.reason for r in bad_tfds] == [r.reason for r in bad_raw]
    line = make_genomics.MALFORMED_LINE_NUMBER
    assert bad_tfds[0].path.startswith("tfds:") and bad_tfds[0].path.endswith(f"[{line - 2}]")


@pytest.mark.parametrize("name", ["librispeech", "librispeech-dev-clean"])
def test_librispeech_log_mels_equal_the_flac_path(name, dirs):
    raw_reader = registry.get_reader(name, data_dir=dirs("librispeech_raw"))
    tfds_reader = registry.get_reader(name, data_dir=dirs("librispeech"))
    # The label map from the TFDS metadata.json equals the one from SPEAKERS.TXT.
    assert tfds_reader.spec_template().label_names == raw_reader.spec_template().label_names
    raw = {r.id: r for r in good(raw_reader.read_all())}
    from_tfds = {r.id: r for r in good(tfds_reader.read_all())}
    assert sorted(from_tfds) == sorted(raw) and len(raw) == make_librispeech.NUM_GOOD[
        "train-clean-100" if name == "librispeech" else "dev-clean"]
    for key, example in from_tfds.items():
        assert example.label == raw[key].label
        assert example.input.shape == (224, 224, 1) and example.input.dtype == np.float32
        np.testing.assert_array_equal(example.input, raw[key].input)


def test_librispeech_dev_clean_tfds_gets_the_dabs_split_of_the_flac_path(dirs):
    # DABS's per-speaker 80/20 needs every utterance id first: TFDS gives them without audio.
    raw_reader = registry.get_reader("librispeech-dev-clean", data_dir=dirs("librispeech_raw"))
    tfds_reader = registry.get_reader("librispeech-dev-clean", data_dir=dirs("librispeech"))
    raw_reader.list_sources()
    tfds_reader.list_sources()
    assert tfds_reader.reads_tfds() and not raw_reader.reads_tfds()
    assert tfds_reader.dabs_splits() == raw_reader.dabs_splits()
    assert sorted(tfds_reader.dabs_splits().values()) == ["test", "test", "train"]


# === bad records, locating, messages ===
def _dabs_eurosat_splits(builder_dir: str) -> dict[str, str]:
    """{tile id: split} by DABS's EurosatPretrain / EurosatTransfer, transcribed: TFDS
    `eurosat/all` `train` in record order as a DataFrame, `sample(frac=1, random_state=42)`,
    head(ceil(0.9 n)) pretrains; of the tail(floor(0.1 n)) transfer frame, head(ceil(0.9 m))
    trains the probe and tail(floor(0.1 m)) tests it."""
    import math

    import pandas as pd
    import tensorflow_datasets as tfds

    dataset = tfds.builder_from_directory(builder_dir).as_dataset(split="train", shuffle_files=False)
    frame = pd.DataFrame({"id": [os.path.splitext(r["filename"].decode())[0]
                                 for r in tfds.as_numpy(dataset)]})
    frame = frame.sample(frac=1, random_state=42).reset_index(drop=True)
    pretrain = frame.head(math.ceil(0.9 * len(frame)))
    transfer = frame.tail(math.floor(0.1 * len(frame)))
    out = dict.fromkeys(pretrain["id"], "pretrain")
    out.update(dict.fromkeys(transfer.head(math.ceil(0.9 * len(transfer)))["id"], "transfer_train"))
    out.update(dict.fromkeys(transfer.tail(math.floor(0.1 * len(transfer)))["id"], "transfer_test"))
    return out


def test_eurosat_tfds_gets_the_exact_dabs_split(dirs):
    pytest.importorskip("pandas")
    reader = registry.get_reader("eurosat", data_dir=dirs("eurosat"))
    splits = {ex.id: reader.split_of(ex, 42) for ex in good(reader.read_all())}
    assert splits == _dabs_eurosat_splits(reader.tfds_dir())
    assert collections.Counter(splits.values()) == {"pretrain": 90, "transfer_train": 9,
                                                    "transfer_test": 1}
    # DABS's fixed seed, not --seed: the sets are the reference's whatever the job's seed.
    assert {ex.id: reader.split_of(ex, 7) for ex in good(reader.read_all())} == splits


def _corrupt_png_and_nan_dirs(root):
    """A cifar10 dir whose train[...] images include a 16 x 16 PNG, and a higgs dir with a NaN."""
    from tests.fixtures import media

    rng = np.random.default_rng(5)
    images = [(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), 1) for _ in range(3)]
    images.append((media.image_bytes(media.image_array(16, 16, 0), "PNG"), 2))
    cifar = make_tfds.cifar10(root, {"train": images, "test": images[:1]})
    rows = [(1.0, np.ones(28)), (0.0, np.full(28, 2.0))]
    rows.append((1.0, np.array([np.nan] + [1.0] * 27)))
    return cifar, make_tfds.higgs(root, rows)


def test_bad_tfds_records_become_bad_records_naming_the_directory(tmp_path):
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    dtd_dir = make_tfds.dtd(str(tmp_path), corrupt=True)
    cifar_dir, higgs_dir = _corrupt_png_and_nan_dirs(str(tmp_path))
    expected = {"dtd": (dtd_dir, "not a readable image"), "cifar10": (cifar_dir, "expected a 32x32 image"),
                "higgs": (higgs_dir, "non-finite")}
    for name, (data_dir, reason) in expected.items():
        reader = registry.get_reader(name, data_dir=data_dir)
        records = list(reader.read_all())
        bad = [r for r in records if isinstance(r, BadRecord)]
        assert len(bad) == 1, name
        builder_dir = reader.tfds_dir()
        assert builder_dir.startswith(data_dir)
        split = "train"
        assert bad[0].path.startswith(f"tfds:{builder_dir}:{split}[") and bad[0].path.endswith("]")
        assert reason in bad[0].reason, bad[0].reason
        # The index names the record: reading just that one gives the same failure.
        index = int(bad[0].path.rsplit("[", 1)[1][:-1])
        again = list(reader.read_source(_tfds.TfdsSource(builder_dir, split, index, index + 1)))
        assert [r.path for r in again] == [bad[0].path]

    # Damaged shards: a record whose bytes fail their checksum is one BadRecord and reading goes
    # on after it; a damaged record header loses the rest of the shard, so every later record is
    # named (after 8 failed re-reads in a row, without trying the rest).
    rng = np.random.default_rng(6)
    for damage, unread_from in (("payload", None), ("header", 10)):
        damaged = make_tfds.higgs(str(tmp_path / damage), [(1.0, rng.normal(size=28)) for _ in range(30)])
        shard = glob.glob(os.path.join(damaged, "higgs", "*", "higgs-train.tfrecord-*"))[0]
        _damage_tfrecord(shard, record=10, part=damage)
        records = list(registry.get_reader("higgs", data_dir=damaged).read_all())
        unread = [r for r in records if isinstance(r, BadRecord)]
        assert len(records) == 30
        last = 10 if unread_from is None else 29
        assert [r.path for r in unread] == [f"tfds:{os.path.dirname(shard)}:train[{i}]"
                                            for i in range(10, last + 1)]
        assert "unreadable TFDS record (DataLossError: corrupted record" in unread[0].reason
        if unread_from is not None:
            assert "as the 8 before it" in unread[-1].reason


def _damage_tfrecord(path, record, part):
    """Overwrites the length header or the payload of the `record`-th record of a TFRecord file
    (records are `uint64 length, uint32 crc, payload, uint32 crc`)."""
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        offset = 0
        for _ in range(record):
            offset += 16 + int.from_bytes(data[offset:offset + 8], "little")
        at = offset + 2 if part == "header" else offset + 12 + 4
        data[at:at + 4] = bytes(255 - b for b in data[at:at + 4])
        f.seek(0)
        f.write(data)


def _info(path, name, config=None):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "dataset_info.json"), "w") as f:
        json.dump({"name": name, **({"configName": config} if config else {})}, f)


def test_find_builder_dir_takes_the_newest_version_at_any_level(tmp_path):
    root = str(tmp_path)
    for version in ("3.0.2", "3.0.10", "2.9.9"):
        _info(os.path.join(root, "cifar10", version), "cifar10")
    _info(os.path.join(root, "cifar10", "4.0.0.incompleteABC"), "cifar10")  # an interrupted build
    _info(os.path.join(root, "cifar10", "9.0.0"), "cifar100")  # another builder's files
    newest = os.path.join(root, "cifar10", "3.0.10")
    assert _tfds.find_builder_dir(root, "cifar10") == newest
    assert _tfds.find_builder_dir(os.path.join(root, "cifar10"), "cifar10") == newest
    assert _tfds.find_builder_dir(os.path.join(root, "cifar10", "3.0.2"), "cifar10") == \
        os.path.join(root, "cifar10", "3.0.2")
    assert _tfds.find_builder_dir(root, "higgs") is None
    assert _tfds.find_builder_dir(os.path.join(root, "missing"), "cifar10") is None
    # Configs: only the wanted one; data_dir may be the builder or the config folder.
    _info(os.path.join(root, "imagenet_resized", "64x64", "0.1.0"), "imagenet_resized", "64x64")
    assert _tfds.find_builder_dir(root, "imagenet_resized", ("32x32",)) is None
    _info(os.path.join(root, "imagenet_resized", "32x32", "0.1.0"), "imagenet_resized", "32x32")
    want = os.path.join(root, "imagenet_resized", "32x32", "0.1.0")
    for d in (root, os.path.join(root, "imagenet_resized"), os.path.join(root, "imagenet_resized", "32x32")):
        assert _tfds.find_builder_dir(d, "imagenet_resized", ("32x32",)) == want


# dataset -> the TFDS builder its messages must name
BUILDERS = {"cifar10": "cifar10", "dtd": "dtd", "vgg-flower": "oxford_flowers102",
            "cub": "caltech_birds2011", "imagenet32": "imagenet_resized/32x32", "higgs": "higgs",
            "higgs-transfer": "higgs", "genomics": "genomics_ood", "genomics-id": "genomics_ood",
            "genomics-ood": "genomics_ood", "librispeech": "librispeech/default|lazy_decode",
            "librispeech-dev-clean": "librispeech/default|lazy_decode", "eurosat": "eurosat/all"}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_missing_data_messages_name_the_tfds_alternative(name, tmp_path):
    reader = registry.get_reader(name, data_dir=str(tmp_path))
    folder = BUILDERS[name].split("/")[0]
    assert f"`{BUILDERS[name]}`" in reader.expected_files()[-1] and f"{folder}/" in reader.expected_files()[-1]
    with pytest.raises(RawDataMissing) as missing:
        reader.check_raw()
    message = str(missing.value)
    assert f"prepared TFDS `{BUILDERS[name]}`" in message and str(tmp_path) in message
    assert message.index("TFDS") > 20  # the raw format's own instructions come first


def test_google_speech_says_why_tfds_speech_commands_cannot_stand_in(tmp_path):
    data_dir = make_tfds.speech_commands(str(tmp_path))
    reader = registry.get_reader("google-speech", data_dir=data_dir)
    with pytest.raises(RawDataMissing, match="speech_commands.*12 labels.*36 DABS classes"):
        reader.check_raw()
    assert "speech_commands" in reader.expected_files()[0]


def test_raw_files_win_over_a_prepared_tfds_dataset(dirs, tmp_path):
    data_dir = str(tmp_path / "both")
    shutil.copytree(dirs("higgs_raw"), data_dir)
    shutil.copytree(os.path.join(dirs("higgs"), "higgs"), os.path.join(data_dir, "higgs"))
    reader = registry.get_reader("higgs", data_dir=data_dir)
    reader.check_raw()
    assert not reader.reads_tfds()
    assert not any(isinstance(s, _tfds.TfdsSource) for s in reader.list_sources())
    ids = collections.Counter(r.id.split("-")[1] for r in reader.read_all() if isinstance(r, RawExample))
    assert "tfds" not in ids
