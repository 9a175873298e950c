"""Faults and bad input: each test fails when its guarantee in RELIABILITY.md breaks."""

from __future__ import annotations

import glob
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from preprocessing.spec import PIPELINE_VERSION
from tests.conftest import REPO, TINY_MODEL

TINY_RUN = dict(TINY_MODEL, batch_size=16, log_every=2, checkpoint_every=2,
                validation_steps=1, warmup_steps=1, export=False)


# === preprocessing ===
def test_killed_preprocessing_leaves_no_version_and_a_rerun_completes(tmp_path):
    from tests.fixtures import make_eurosat

    raw = make_eurosat.make_raw(str(tmp_path / "raw"), per_class=12)
    out = str(tmp_path / "out")
    command = [sys.executable, "-m", "pipeline.preprocess", "--dataset", "eurosat",
               "--raw_data_dir", raw, "--data_dir", out]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    dataset_dir = os.path.join(out, "eurosat")
    deadline = time.time() + 120
    while time.time() < deadline and not glob.glob(os.path.join(dataset_dir, ".tmp-*")):
        assert process.poll() is None, "the job ended before it could be interrupted"
        time.sleep(0.05)
    time.sleep(0.3)  # inside the build (Beam alone takes seconds to start)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not os.path.exists(os.path.join(dataset_dir, PIPELINE_VERSION)), "a partial version was published"
    assert glob.glob(os.path.join(dataset_dir, ".tmp-*")), "expected the dead build to remain"

    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "removed unfinished build" in done.stderr
    assert os.listdir(dataset_dir) == [PIPELINE_VERSION]
    spec = json.load(open(os.path.join(dataset_dir, PIPELINE_VERSION, "spec.json")))
    assert sum(s["num_examples"] for s in spec["splits"].values()) == 120


@pytest.mark.parametrize("signum, status, name", [(signal.SIGTERM, 143, "SIGTERM"),
                                                  (signal.SIGINT, 130, "Ctrl-C")])
def test_sigterm_or_ctrl_c_stops_preprocessing_in_one_line_leaving_nothing(tmp_path, signum,
                                                                           status, name):
    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(0)
    # Large enough that the Beam job runs for many seconds after its build folder appears.
    np.save(raw / "inputs.npy", rng.normal(size=(200_000, 8, 8, 1)).astype(np.float32))
    np.save(raw / "labels.npy", rng.integers(0, 10, 200_000))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pipeline.preprocess", "--dataset", "custom", "--format",
               "npy", "--raw_data_dir", str(raw), "--patch_shape", "4,4", "--name", "mine",
               "--data_dir", str(out), "--runner=FnApiRunner"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not glob.glob(str(out / "mine" / ".tmp-*")):
        assert process.poll() is None, process.stderr.read()[-2000:]
        time.sleep(0.05)
    time.sleep(1.0)  # inside the Beam graph
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == status, err[-2000:]
    assert err.splitlines() == [
        f"interrupted: {name} stopped preprocess custom; its unfinished build was removed and "
        f"no version was written or changed under {out}; rerun the same command to start "
        f"again: python -m pipeline.preprocess {' '.join(command[3:])}"], err[-3000:]
    assert not out.exists()  # not even the folders the job made


def test_a_version_set_aside_by_a_killed_publish_is_restored(tmp_path):
    from pipeline import preprocess

    dataset_dir = tmp_path / "digits"
    (dataset_dir / ".old-abc").mkdir(parents=True)
    (dataset_dir / ".old-abc" / "spec.json").write_text("{}")
    actions = preprocess.recover_interrupted(str(dataset_dir), str(dataset_dir / "1"))
    assert actions and "restored" in actions[0]
    assert (dataset_dir / "1" / "spec.json").exists() and not (dataset_dir / ".old-abc").exists()


# === training input ===
def _copy_dataset(data_dir: str, tmp_path) -> str:
    copy = str(tmp_path / "data")
    shutil.copytree(data_dir, copy)
    return copy


def test_truncated_shard_fails_with_the_file_name(digits_data_dir, tmp_path):
    from keras_metamae.training.run import run_training

    data_dir = _copy_dataset(digits_data_dir, tmp_path)
    shard = sorted(glob.glob(os.path.join(data_dir, "digits", PIPELINE_VERSION, "train", "*.tfrecord")))[0]
    content = open(shard, "rb").read()
    with open(shard, "wb") as f:
        f.write(content[: len(content) // 2])
    with pytest.raises(ValueError, match=os.path.basename(shard)):
        run_training("digits", dict(TINY_RUN, steps=60), data_dir, str(tmp_path / "w"),
                           verbose=0)


def test_records_of_the_wrong_dtype_are_refused_with_the_file_name(digits_data_dir, tmp_path):
    import tensorflow as tf

    from keras_metamae.training.run import run_training

    data_dir = _copy_dataset(digits_data_dir, tmp_path)
    shard = sorted(glob.glob(os.path.join(data_dir, "digits", PIPELINE_VERSION, "train", "*.tfrecord")))[0]
    example = tf.train.Example()
    example.features.feature["tokens"].int64_list.value.extend([1] * 64)
    example.features.feature["label"].int64_list.value.append(0)
    example.features.feature["id"].bytes_list.value.append(b"x")
    with tf.io.TFRecordWriter(shard) as writer:
        writer.write(example.SerializeToString())
    with pytest.raises(ValueError, match=os.path.basename(shard)):
        run_training("digits", dict(TINY_RUN, steps=2), data_dir, str(tmp_path / "w"),
                           verbose=0)


def test_workdir_trained_on_another_token_contract_is_refused(digits_data_dir, tmp_path):
    from keras_metamae.training.run import run_training

    workdir = str(tmp_path / "w")
    run_training("digits", dict(TINY_RUN, steps=2), digits_data_dir, workdir, verbose=0)
    data_dir = _copy_dataset(digits_data_dir, tmp_path)
    spec_path = os.path.join(data_dir, "digits", PIPELINE_VERSION, "spec.json")
    spec = json.load(open(spec_path))
    spec.update(token_dim=2, patch_shape=[1, 2], num_tokens=32, token_grid=[8, 4])
    json.dump(spec, open(spec_path, "w"))
    with pytest.raises(ValueError, match="num_tokens=32 but .*dataset_spec.json"):
        run_training("digits", dict(TINY_RUN, steps=4), data_dir, workdir, verbose=0)


def test_fewer_examples_than_the_batch_is_one_clear_error(digits_data_dir, tmp_path):
    from keras_metamae.training.run import run_training

    with pytest.raises(ValueError, match="fewer than"):
        run_training("digits", dict(TINY_RUN, steps=2, batch_size=4096), digits_data_dir,
                           str(tmp_path / "w"), verbose=0)


def test_cli_reports_a_missing_dataset_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "keras_metamae.train", "--dataset", "eurosat",
                           "--data_dir", str(tmp_path), "--workdir", str(tmp_path / "w")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    error_lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "pipeline.preprocess --dataset eurosat" in error_lines[0]
    assert "Traceback" not in done.stderr


# === checkpoints ===
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    import keras

    from keras_metamae.rundir import CheckpointManager

    def model_with(value):
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile(optimizer="adam", loss="mse")
        model.optimizer.build(model.trainable_variables)
        for v in model.trainable_variables:
            v.assign(np.full(v.shape, value, "float32"))
        return model

    manager = CheckpointManager(str(tmp_path), keep=2)
    manager.save(model_with(1.0), 10)
    manager.save(model_with(2.0), 20)
    with open(manager.path_for(20), "wb") as f:  # e.g. a disk that filled up mid-copy
        f.write(b"not an h5 file")
    restored = model_with(0.0)
    assert manager.restore(restored) == 10
    assert float(restored.trainable_variables[0].numpy().ravel()[0]) == 1.0
    manager.save(model_with(3.0), 30)
    assert manager.steps() == [20, 30]  # keeps the newest two


def test_same_seed_same_data_gives_identical_losses_for_8_steps(digits_data_dir, tmp_path):
    from keras_metamae.training.run import run_training

    from tests.test_train import read_scalars

    runs = []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        overrides = dict(TINY_RUN, steps=8, log_every=1, checkpoint_every=8, seed=seed)
        run_training("digits", overrides, digits_data_dir, str(tmp_path / name),
                           verbose=0)
        with open(os.path.join(tmp_path / name, "train_summary.json")) as f:
            assert json.load(f)["final_step"] == 8
        scalars = read_scalars(os.path.join(tmp_path / name, "tensorboard"))
        summary_losses = [value for _, value in scalars["train/loss"]]
        runs.append(summary_losses)
    assert len(runs[0]) == 8
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]  # the seed does reach the masks and the initialization
