"""The Beam preprocessing job end to end: digits (embedded) and EuroSAT (fixture in the raw format)."""

import glob
import os
import subprocess
import sys

import numpy as np
import pytest

from commandline import cli
from keras_metamae import data
from pipeline import preprocess
from preprocessing import registry, tokenize
from preprocessing.datasets.base import RawDataMissing
from preprocessing.spec import PIPELINE_VERSION, load_spec
from tests.fixtures.make_eurosat import make_raw

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_split(version_dir, spec, split):
    """{id: (tokens [num_tokens, token_dim], label)} of a split, as the trainer reads it."""
    files = sorted(glob.glob(os.path.join(version_dir, spec.splits[split].file_pattern)))
    assert len(files) == spec.splits[split].num_shards
    out = {}
    if not spec.splits[split].num_examples:
        return out
    for batch in data.make_dataset(spec, version_dir, split, 8, shuffle=False, repeat=False,
                                   drop_remainder=False).as_numpy_iterator():
        for tokens, label, example_id in zip(batch["tokens"], batch["label"], batch["id"]):
            out[example_id.decode()] = (tokens, int(label))
    return out


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("processed"))
    result = preprocess.run(["--dataset", "digits", "--data_dir", out, "--num_shards", "3"])
    return out, result


def test_digits_counts_layout_and_command(digits_run):
    out, result = digits_run
    spec = load_spec(result.version_dir)
    assert result.version_dir == os.path.join(out, "digits", spec.pipeline_version)
    assert sorted(spec.splits) == ["test", "train", "val"]
    counts = {k: v.num_examples for k, v in spec.splits.items()}
    assert sum(counts.values()) == 1797
    assert 0.75 < counts["train"] / 1797 < 0.85 and counts["val"] > 130 and counts["test"] > 130
    for split, info in spec.splits.items():
        files = sorted(glob.glob(os.path.join(result.version_dir, info.file_pattern)))
        assert [os.path.basename(f) for f in files] == [
            f"data-{i:05d}-of-00003.tfrecord" for i in range(3)]
        assert info.shard_bytes == [os.path.getsize(f) for f in files]
    assert spec.command == "python -m pipeline.preprocess --dataset digits --data_dir " + out + " --num_shards 3"
    assert len(spec.content_hash) == 64
    # Only the published version is left: no temp or manifest directories.
    assert os.listdir(os.path.join(out, "digits")) == [spec.pipeline_version]
    assert sorted(os.listdir(result.version_dir)) == ["spec.json", "test", "train", "val"]


def test_digits_normalization_matches_numpy_over_train(digits_run):
    _, result = digits_run
    spec = result.spec
    reader = registry.get_reader("digits")
    train = [ex.input for ex in reader.read_all() if reader.split_of(ex, 42) == "train"]
    pixels = np.stack(train).astype(np.float64).reshape(-1)
    assert spec.normalization["source"] == "pipeline"
    np.testing.assert_allclose(spec.normalization["mean"], [pixels.mean()], rtol=1e-9)
    np.testing.assert_allclose(spec.normalization["std"], [pixels.std()], rtol=1e-9)


def test_digits_tokens_equal_tokenizer_output(digits_run):
    _, result = digits_run
    spec = result.spec
    stored = read_split(result.version_dir, spec, "val")
    reader = registry.get_reader("digits")
    examples = {ex.id: ex for ex in reader.read_all()}
    assert all(reader.split_of(examples[i], 42) == "val" for i in stored)
    some = sorted(stored)[:5]
    raw = np.stack([examples[i].input for i in some])
    expected = tokenize.raw_to_tokens(raw, spec).numpy()
    for i, tokens in zip(some, expected):
        np.testing.assert_array_equal(stored[i][0], tokens)
        assert stored[i][1] == examples[i].label
    # Grey levels 0..16 are stored as uint8 and normalized by the reader.
    assert spec.storage == {"dtype": "uint8", "scale": 1.0, "compression": ""}


def test_rerun_is_byte_identical(digits_run, tmp_path):
    out, first = digits_run
    second = preprocess.run(["--dataset", "digits", "--data_dir", str(tmp_path), "--num_shards", "3",
                             "--", "--direct_num_workers=2", "--direct_running_mode=multi_threading"])
    assert second.spec.content_hash == first.spec.content_hash
    assert second.spec.splits == first.spec.splits
    for split, info in first.spec.splits.items():
        a = sorted(glob.glob(os.path.join(first.version_dir, info.file_pattern)))
        b = sorted(glob.glob(os.path.join(second.version_dir, info.file_pattern)))
        assert [open(f, "rb").read() for f in a] == [open(f, "rb").read() for f in b]


def test_eurosat_zip_end_to_end(tmp_path):
    data_dir = make_raw(str(tmp_path), per_class=2)
    out = str(tmp_path / "out")
    result = preprocess.run(["--dataset", "eurosat", "--raw_data_dir", data_dir, "--data_dir", out,
                             "--num_shards", "2"])
    spec = result.spec
    assert result.num_examples == 20 and not result.bad_records
    assert spec.normalization["source"] == "dabs" and len(spec.normalization["mean"]) == 13
    reader = registry.get_reader("eurosat", data_dir=data_dir)
    examples = {ex.id: ex for ex in reader.read_all()}
    stored = read_split(result.version_dir, spec, "pretrain")  # EuroSAT's 90 % pretraining part
    assert stored and set(stored) <= set(examples)
    # The shards hold the uint16 bands; the reader's tokens are the old float path's exactly.
    assert spec.storage == {"dtype": "uint16", "scale": 1.0, "compression": ""}
    for some in sorted(stored):
        expected = tokenize.raw_to_tokens(examples[some].input[None], spec).numpy()[0]
        assert expected.shape == (64, 832)
        np.testing.assert_array_equal(stored[some][0], expected)
        assert stored[some][1] == spec.label_names.index(some.split("_")[0])


def test_eurosat_bad_records_fail_the_job_and_leave_nothing(tmp_path):
    data_dir = make_raw(str(tmp_path), per_class=2, corrupt=1, wrong_bands=1)
    out = str(tmp_path / "out")
    with pytest.raises(preprocess.PreprocessError) as info:
        preprocess.run(["--dataset", "eurosat", "--raw_data_dir", data_dir, "--data_dir", out])
    message = str(info.value)
    assert "2 of 22 raw records" in message
    assert "EuroSATallBands.zip:ds/images/remote_sensing/otherDatasets/sentinel_2/tif/AnnualCrop/AnnualCrop_3.tif" in message
    assert "AnnualCrop_4.tif" in message and "got shape [64, 64, 3]" in message
    assert not os.path.exists(out)  # not even the folders made for the version

    # Within the allowed fraction the job publishes the good records only.
    result = preprocess.run(["--dataset", "eurosat", "--raw_data_dir", data_dir, "--data_dir", out,
                             "--max_bad_fraction", "0.1", "--num_shards", "1"])
    assert result.num_examples == 20 and len(result.bad_records) == 2
    ids = set()
    for split in result.spec.splits:
        ids |= set(read_split(result.version_dir, result.spec, split))
    assert "AnnualCrop_3" not in ids and "AnnualCrop_4" not in ids and len(ids) == 20

    # A later failing run leaves the published version untouched.
    before = open(os.path.join(result.version_dir, "spec.json")).read()
    with pytest.raises(preprocess.PreprocessError):
        preprocess.run(["--dataset", "eurosat", "--raw_data_dir", data_dir, "--data_dir", out])
    assert open(os.path.join(result.version_dir, "spec.json")).read() == before
    assert os.listdir(os.path.join(out, "eurosat")) == [PIPELINE_VERSION]


def test_missing_raw_data_message(tmp_path):
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    with pytest.raises(RawDataMissing, match="EuroSATallBands.zip"):
        preprocess.run(["--dataset", "eurosat", "--raw_data_dir", str(empty), "--data_dir", str(tmp_path)])
    # The command line prints the message without a traceback and exits non-zero.
    proc = subprocess.run([sys.executable, "-m", "pipeline.preprocess", "--dataset", "eurosat",
                           "--raw_data_dir", str(empty), "--data_dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "https://madm.dfki.de/files/sentinel/EuroSATallBands.zip" in proc.stderr
    assert str(empty) in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "eurosat")


def test_list_and_unknown_dataset():
    proc = subprocess.run([sys.executable, "-m", "pipeline.preprocess", "--list"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()[1:]}
    assert "16 x 4" in lines["digits"] and lines["digits"].endswith(" yes")
    assert "64 x 832" in lines["eurosat"] and "no: download" in lines["eurosat"]
    details = subprocess.run([sys.executable, "-m", "pipeline.preprocess", "--list", "eurosat"],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert details.returncode == 0 and "EuroSATallBands.zip" in details.stdout, details.stderr
    assert cli.call_program(preprocess, ["--dataset", "no_such_set"]) == 2


def test_multi_processing_direct_runner_extracted_folder(tmp_path):
    data_dir = make_raw(str(tmp_path), per_class=1, extracted=True)
    out = str(tmp_path / "out")
    result = preprocess.run(["--dataset", "eurosat", "--raw_data_dir", data_dir, "--data_dir", out,
                             "--", "--runner=DirectRunner", "--direct_running_mode=multi_processing",
                             "--direct_num_workers=2"])
    assert result.num_examples == 10
    assert "--direct_running_mode=multi_processing" in result.spec.command


def test_eurosat_reads_prepared_tfds_directory(tmp_path):
    pytest.importorskip("importlib_resources", reason="tensorflow_datasets' dataset writer needs it")
    from tests.fixtures.make_eurosat import make_tfds

    data_dir = make_tfds(str(tmp_path), per_class=1)
    reader = registry.get_reader("eurosat", data_dir=data_dir)
    reader.check_raw()
    examples = list(reader.read_all())
    assert sorted(ex.id for ex in examples) == sorted(f"{c}_1" for c in reader.spec_template().label_names)
    for ex in examples:
        assert ex.input.shape == (64, 64, 13)
        assert reader.spec_template().label_names[ex.label] == ex.id.split("_")[0]
