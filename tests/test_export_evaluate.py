"""Linear evaluation JSON, and the exported SavedModel read back in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.conftest import REPO, TINY_MODEL

# Checkpoints at steps 2 and 4 (both kept): export and evaluate can pick either.
TINY_RUN = dict(TINY_MODEL, batch_size=16, log_every=2, checkpoint_every=2,
                validation_steps=1, warmup_steps=2)


@pytest.fixture(scope="module")
def trained_workdir(digits_data_dir, tmp_path_factory) -> str:
    from keras_metamae.training.run import run_training

    workdir = str(tmp_path_factory.mktemp("trained"))
    run_training("digits", dict(TINY_RUN, steps=4), digits_data_dir, workdir, verbose=0)
    return workdir


def test_evaluate_writes_json_with_metric_and_random_baseline(trained_workdir):
    from keras_metamae.evaluation.run import run_evaluation

    record = run_evaluation(trained_workdir, epochs=2)
    written = json.load(open(os.path.join(trained_workdir, "eval", "digits.json")))
    assert written == json.loads(json.dumps(record))
    assert written["probe_splits"] == {"probe_train": ["train"], "probe_val": ["val"],
                                       "probe_test": ["test"]}
    # digits has a val split: the best-on-validation value and the converged probe come too.
    assert 1 <= written["best_epoch"] <= 2 and 0.0 <= written["value_best_val"] <= 1.0
    assert 0.0 <= written["converged"]["value"] <= 1.0 and written["converged"]["selected_on"] == "val"
    assert written["dataset"] == "digits" and written["metric"] == "accuracy"
    assert 0.0 <= written["value"] <= 1.0 and 0.0 <= written["baseline_random"] <= 1.0
    assert 0.0 <= written["knn_accuracy"] <= 1.0
    assert written["step"] == 4 and written["encoder"] == "pretrained"
    assert written["train_examples"] + written["test_examples"] < 1797


def test_evaluate_random_encoder_cli(trained_workdir):
    done = subprocess.run(
        [sys.executable, "-m", "keras_metamae.evaluate", "--workdir", trained_workdir,
         "--encoder", "random", "--epochs", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "digits: accuracy = " in done.stdout
    assert json.load(open(os.path.join(trained_workdir, "eval", "digits-random.json")))[
        "encoder"] == "random"


def test_evaluate_missing_workdir_is_a_clear_error(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "keras_metamae.evaluate", "--workdir", str(tmp_path / "nope")],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "config.json" in done.stderr


def test_saved_model_matches_in_memory_encoder_in_a_fresh_process(trained_workdir, tmp_path):
    from keras_metamae import data
    from keras_metamae.rundir import RunDir
    from preprocessing import tokenize

    model, spec, config, _ = RunDir(trained_workdir).load_trained_model()
    version_dir = data.find_dataset_dir(config.data_dir, "digits")
    batch = next(iter(data.make_dataset(spec, version_dir, "test", 8, shuffle=False,
                                        repeat=False)))
    tokens = batch["tokens"].numpy()
    raw = np.asarray(tokenize.tokens_to_raw(tokens, spec), np.float32)
    expected = np.asarray(model.encoder.features(tokens, training=False))
    np.save(tmp_path / "raw.npy", raw)
    np.save(tmp_path / "tokens.npy", tokens)
    export_dir = os.path.join(trained_workdir, "export", "encoder", "1")
    assert os.path.exists(os.path.join(export_dir, "saved_model.pb"))

    script = textwrap.dedent(f"""
        import json, numpy as np, tensorflow as tf
        loaded = tf.saved_model.load({export_dir!r})
        raw = np.load({str(tmp_path / 'raw.npy')!r}); tokens = np.load({str(tmp_path / 'tokens.npy')!r})
        out = loaded.signatures["serving_default"](inputs=tf.constant(raw))
        by_tokens = loaded.signatures["embed_tokens"](tokens=tf.constant(tokens))
        per_token = loaded.signatures["tokens"](inputs=tf.constant(raw))
        bad = raw.copy(); bad[1, 0, 0, 0] = np.nan
        flagged = loaded.signatures["serving_default"](inputs=tf.constant(bad))
        try:
            loaded.signatures["serving_default"](inputs=tf.constant(raw[:, :4]))
            refused = "accepted"
        except Exception as e:
            refused = type(e).__name__ + ": " + str(e)
        try:
            loaded.signatures["serving_default"](inputs=tf.constant(raw.astype("int32")))
            wrong_dtype = "accepted"
        except Exception as e:
            wrong_dtype = type(e).__name__ + ": " + str(e)
        np.save({str(tmp_path / 'out.npy')!r}, out["embedding"].numpy())
        np.save({str(tmp_path / 'by_tokens.npy')!r}, by_tokens["embedding"].numpy())
        print(json.dumps(dict(
            per_token_shape=per_token["token_features"].shape.as_list(),
            valid=out["valid"].numpy().tolist(), flagged=flagged["valid"].numpy().tolist(),
            refused=refused, wrong_dtype=wrong_dtype,
            signatures=sorted(loaded.signatures.keys()))))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "by_tokens.npy"), expected, atol=1e-5)
    assert report["signatures"] == ["embed_tokens", "serving_default", "tokens"]
    assert report["per_token_shape"] == [8, spec.num_tokens, TINY_MODEL["embed_dim"]]
    assert all(report["valid"]) and report["flagged"][1] is False and report["flagged"][0]
    assert "inputs must have shape [batch, 8, 8, 1] (float32)" in report["refused"]
    assert "expected to be a float tensor but is a int32 tensor" in report["wrong_dtype"]


def test_keras_encoder_export_loads_and_fine_tunes(trained_workdir):
    import keras

    import keras_metamae
    from keras_metamae import data
    from keras_metamae.rundir import RunDir
    from keras_metamae.serving.saved_model import KERAS_ENCODER

    model, spec, config, _ = RunDir(trained_workdir).load_trained_model()
    version_dir = data.find_dataset_dir(config.data_dir, "digits")
    batch = next(iter(data.make_dataset(spec, version_dir, "test", 16, shuffle=False,
                                        repeat=False)))
    tokens, labels = batch["tokens"].numpy(), batch["label"].numpy()
    assert os.path.exists(os.path.join(trained_workdir, "export", "encoder", "1", KERAS_ENCODER))
    loaded = keras_metamae.load_encoder(os.path.join(trained_workdir, "export", "encoder", "1"))
    out = loaded(tokens)
    np.testing.assert_allclose(np.asarray(out["embedding"]),
                               np.asarray(model.encoder.features(tokens)), atol=1e-5)
    assert tuple(out["token_features"].shape) == (16, spec.num_tokens, TINY_MODEL["embed_dim"])

    # Fine-tuning: a classification head on the embedding, encoder weights trained with it.
    logits = keras.layers.Dense(10)(loaded.output["embedding"])
    classifier = keras.Model(loaded.input, logits)
    classifier.compile(keras.optimizers.SGD(0.1),
                       keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [w.numpy() for w in loaded.trainable_weights]
    classifier.fit(tokens, labels, epochs=1, batch_size=16, verbose=0)
    changed = [not np.allclose(b, w.numpy()) for b, w in zip(before, loaded.trainable_weights)]
    assert len(before) > 10 and all(changed)


def test_encoder_keras_loads_as_export_help_says_in_a_fresh_process(trained_workdir):
    """`export --help`: `keras.saving.load_model` after `import keras_metamae.models`."""
    from keras_metamae import export

    assert "(`keras.saving.load_model` after `import keras_metamae.models`)" in " ".join(
        export.__doc__.split())
    path = os.path.join(trained_workdir, "export", "encoder", "1", "encoder.keras")
    script = ("import sys, keras, numpy as np, keras_metamae.models\n"
              "model = keras.saving.load_model(sys.argv[1])\n"
              "out = model(np.zeros((2, 16, 4), 'float32'))\n"
              "print(sorted(out), tuple(out['embedding'].shape))\n")
    done = subprocess.run([sys.executable, "-c", script, path], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONPATH=REPO))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"['embedding', 'token_features'] (2, {TINY_MODEL['embed_dim']})"


def test_export_writes_each_checkpoint_step_once_and_any_kept_step(trained_workdir, capsys):
    """train exported its last step (version 1): export says so and writes nothing; --step
    exports an older kept checkpoint as the next version, once; a step not kept is refused."""
    from commandline import cli
    from keras_metamae import export

    base = os.path.join(trained_workdir, "export", "encoder")
    assert cli.call_program(export, ["--workdir", trained_workdir]) == 0
    assert f"Step 4 is already exported as {base}/1; nothing written" in capsys.readouterr().out
    assert sorted(os.listdir(base)) == ["1"]
    assert cli.call_program(export, ["--workdir", trained_workdir, "--dry_run"]) == 0
    assert f"writes       nothing: step 4 is already exported as {base}/1" in \
        capsys.readouterr().out

    assert cli.call_program(export, ["--workdir", trained_workdir, "--step", "2"]) == 0
    assert f"Exported the encoder at step 2 to {base}/2" in capsys.readouterr().out
    assert json.load(open(os.path.join(base, "2", "export_info.json"))) == {"step": 2}
    assert json.load(open(os.path.join(base, "2", "spec.json")))["name"] == "digits"
    assert cli.call_program(export, ["--workdir", trained_workdir, "--step", "2"]) == 0
    assert "Step 2 is already exported" in capsys.readouterr().out
    assert sorted(os.listdir(base)) == ["1", "2"]

    assert cli.call_program(export, ["--workdir", trained_workdir, "--step", "3"]) == 2
    err = capsys.readouterr().err
    assert "(--step 3)" in err and "kept steps [2, 4]" in err


def test_evaluate_any_kept_step(trained_workdir):
    from keras_metamae.evaluation.run import plan_evaluation, run_evaluation

    plan = plan_evaluation(trained_workdir, step=2)
    assert "pretrained, checkpoint step 2" in plan.describe("pretrained", "paper", 1, False)
    record = run_evaluation(trained_workdir, epochs=1, baseline=False, probe="paper",
                            progress=False, step=2)
    assert record["step"] == 2


def test_saved_model_cli_lists_the_three_signatures(trained_workdir):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    done = subprocess.run([cli, "show", "--dir",
                           os.path.join(trained_workdir, "export", "encoder", "1"), "--all"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("serving_default", "embed_tokens", "tokens"):
        assert f"signature_def['{name}']" in done.stdout
    assert "inputs['inputs'] tensor_info" in done.stdout
    assert "outputs['embedding'] tensor_info" in done.stdout
