"""A workdir is portable: trained with a relative --data_dir, moved elsewhere, it evaluates and
exports from any directory, export needing nothing but the workdir; files honour the umask; the
exported serving signature refuses an input of the wrong rank with a message naming the shape."""

from __future__ import annotations

import json
import os
import shutil
import stat

import numpy as np
import pytest

from commandline import cli
from keras_metamae import evaluate, export
from keras_metamae.rundir.run_dir import EXPORT_INFO
from keras_metamae.training.run import run_training
from tests.conftest import TINY_MODEL

TINY_RUN = dict(TINY_MODEL, batch_size=16, log_every=2, checkpoint_every=2, validation_steps=1,
                warmup_steps=1, export=False)


@pytest.fixture
def shared_umask():
    """A group-readable umask, as on a shared data folder."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _readable_by_others(path: str) -> bool:
    return bool(os.stat(path).st_mode & stat.S_IROTH)


def test_moved_workdir_evaluates_and_exports_from_anywhere(digits_data_dir, tmp_path, monkeypatch,
                                                          capsys, shared_umask):
    project = tmp_path / "project"
    project.mkdir()
    os.symlink(digits_data_dir, project / "processed")
    monkeypatch.chdir(project)
    run_training("digits", dict(TINY_RUN, steps=2), "processed", os.path.join("runs", "a"),
                       verbose=0)
    config = json.load(open(project / "runs" / "a" / "config.json"))
    assert config["data_dir"] == str(project / "processed")  # stored absolute, not as typed

    moved = tmp_path / "elsewhere" / "a-moved"
    moved.parent.mkdir()
    shutil.move(str(project / "runs" / "a"), str(moved))
    (tmp_path / "somewhere_else").mkdir()
    monkeypatch.chdir(tmp_path / "somewhere_else")
    code = cli.call_program(evaluate, ["--workdir", str(moved), "--epochs", "1", "--probe",
                                       "paper", "--nobaseline"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "digits: accuracy = " in out
    record = json.load(open(moved / "eval" / "digits.json"))
    assert record["step"] == 2 and record["workdir"] == str(moved)

    # Export reads the workdir only (its dataset_spec.json), not the processed data.
    os.remove(project / "processed")
    code = cli.call_program(export, ["--workdir", str(moved)])
    out, err = capsys.readouterr()
    assert code == 0, err
    version = moved / "export" / "encoder" / "1"
    assert f"to {version}" in out and (version / "saved_model.pb").exists()
    # Evaluating needs the data: gone, the error says which flag brings it back.
    code = cli.call_program(evaluate, ["--workdir", str(moved), "--epochs", "1"])
    assert code == 2
    assert "pass --data_dir" in capsys.readouterr().err
    assert os.listdir(tmp_path / "somewhere_else") == []

    for written in ("config.json", "dataset_spec.json", "train_summary.json",
                    os.path.join("checkpoints", "latest.json"), os.path.join("eval", "digits.json"),
                    os.path.join("export", "encoder", "1", "spec.json"),
                    os.path.join("export", "encoder", "1", EXPORT_INFO)):
        assert _readable_by_others(moved / written), written

    import tensorflow as tf

    serve = tf.saved_model.load(str(version)).signatures["serving_default"]
    assert serve(inputs=tf.zeros([2, 8, 8, 1]))["embedding"].shape == (2, TINY_MODEL["embed_dim"])
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"inputs must have shape \[batch, 8, 8, 1\] \(float32\)"):
        serve(inputs=tf.zeros([2, 8, 8]))  # was "Incompatible shapes: [3] vs. [2]"
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"must have shape"):
        serve(inputs=tf.constant(np.zeros([2, 64], np.float32)))
