"""Run directories written by keras-metamae 0.2.0 (the flat `keras_metamae/` package, before the
subpackages) still load, evaluate, export and resume.

`tests/fixtures/workdir_0_2_0/` holds two tiny digits runs trained with that version (MetaMAE
and MAE, 4 steps, checkpoint at step 4, TensorBoard files left out) and, per run, the encoder
features that version computed for six test digits: the restored encoder must give the same
features, so a weight that silently failed to load cannot pass.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from commandline import cli
from keras_metamae import export
from keras_metamae.rundir import RunDir
from keras_metamae.rundir.run_dir import ARCHITECTURE_FIELDS

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "workdir_0_2_0")


@pytest.fixture
def old_workdir(tmp_path):
    def copy(method: str) -> str:
        target = tmp_path / method
        shutil.copytree(os.path.join(FIXTURES, method), target)
        return str(target)

    return copy


@pytest.mark.parametrize("method", ["metamae", "mae"])
def test_old_checkpoint_restores_the_same_encoder(old_workdir, method):
    model, spec, config, step = RunDir(old_workdir(method)).load_trained_model()
    assert (step, config.model, spec.name) == (4, method, "digits")
    recorded = np.load(os.path.join(FIXTURES, f"{method}_probe_batch.npz"))
    features = model.encoder.features(recorded["tokens"], training=False).numpy()
    np.testing.assert_allclose(features, recorded["features"], rtol=1e-5, atol=1e-6)


def test_old_workdir_evaluates_exports_and_resumes(old_workdir, digits_data_dir, capsys):
    from keras_metamae.evaluation.run import run_evaluation
    from keras_metamae.training.run import run_training

    workdir = old_workdir("metamae")
    record = run_evaluation(workdir, data_dir=digits_data_dir, epochs=1, baseline=False,
                            probe="paper", progress=False)
    assert record["step"] == 4 and record["model"] == "metamae"
    assert os.path.exists(os.path.join(workdir, "eval", "digits.json"))

    assert cli.call_program(export, ["--workdir", workdir]) == 0
    version = os.path.join(workdir, "export", "encoder", "1")
    assert os.path.exists(os.path.join(version, "saved_model.pb"))
    assert json.load(open(os.path.join(version, "export_info.json")))["step"] == 4
    capsys.readouterr()

    # Weights and optimizer state load into the training model: the run goes on from step 4.
    config = json.load(open(os.path.join(workdir, "config.json")))
    overrides = {name: config[name] for name in ARCHITECTURE_FIELDS if name != "dataset"}
    summary = run_training("digits", dict(overrides, steps=6, batch_size=8, log_every=2,
                                          checkpoint_every=2, eval_every=0, export=False),
                           digits_data_dir, workdir, verbose=0)
    assert (summary["start_step"], summary["final_step"]) == (4, 6)
