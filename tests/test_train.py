"""The training entry point: config, TensorBoard, checkpoints, resume (also after SIGKILL)."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from commandline.native_logs import NATIVE_LOG_LINE
from tests.conftest import REPO, TINY_MODEL

TINY_RUN = dict(TINY_MODEL, batch_size=16, log_every=3, checkpoint_every=3,
                validation_steps=1, warmup_steps=2, learning_rate=1e-3)


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    import tensorflow as tf

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"),
                                 recursive=True)):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.HasField("tensor") and value.metadata.plugin_data.plugin_name == "scalars":
                    number = float(tf.make_ndarray(value.tensor))
                    key = os.path.relpath(os.path.dirname(path), logdir) + "/" + value.tag
                    scalars.setdefault(key, []).append((event.step, number))
    return scalars


def plugin_values(logdir: str, plugin: str) -> dict[str, list]:
    """{"<run>/<tag>": [(step, summary value), ...]} of one TensorBoard plugin's summaries."""
    import tensorflow as tf

    found: dict[str, list] = {}
    for path in sorted(glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"),
                                 recursive=True)):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == plugin:
                    key = os.path.relpath(os.path.dirname(path), logdir) + "/" + value.tag
                    found.setdefault(key, []).append((event.step, value))
    return found


def check_run_description(logdir: str) -> None:
    """Config and spec as markdown text at step 0; the HParams experiment and session."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import metadata

    texts = {key: [(step, tf.make_ndarray(v.tensor).item().decode()) for step, v in values]
             for key, values in plugin_values(logdir, "text").items()}
    (step, config_text), = texts["./config/train_config"]
    assert step == 0 and "| inner_lr | `0.5` |" in config_text and "| steps | `6` |" in config_text
    (_, spec_text), = texts["./config/dataset_spec"]
    assert "| num_tokens | `16` |" in spec_text and "| train | `" in spec_text
    hparams = plugin_values(logdir, "hparams")
    (_, experiment), = hparams["./" + metadata.EXPERIMENT_TAG]
    experiment = metadata.parse_experiment_plugin_data(experiment.metadata.plugin_data.content)
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    assert {"loss", "online_eval/knn_accuracy", "linear/digits/accuracy"} <= metric_tags
    (_, session), = hparams["./" + metadata.SESSION_START_INFO_TAG]
    session = metadata.parse_session_start_info_plugin_data(session.metadata.plugin_data.content)
    assert session.hparams["inner_lr"].number_value == 0.5
    assert session.hparams["model"].string_value == "metamae"


def test_train_writes_config_tensorboard_checkpoints_and_resumes(digits_data_dir, tmp_path,
                                                                  capsys):
    from keras_metamae.training import panels
    from keras_metamae.training.run import run_training

    workdir = str(tmp_path / "run")
    summary = run_training("digits", dict(TINY_RUN, steps=6), digits_data_dir, workdir,
                                 verbose=2)
    assert summary["final_step"] == 6 and summary["start_step"] == 0
    # The overall progress line (not a TTY here: plain lines, the last one when training ends).
    progress_lines = [line for line in capsys.readouterr().err.splitlines()
                      if line.startswith("train ")]
    assert progress_lines[-1].startswith("train 6/6 steps 100% | ")
    assert " examples/s) | done in " in progress_lines[-1]
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert config["embed_dim"] == 16 and config["inner_lr"] == 0.5 and config["steps"] == 6
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [
        "ckpt-000000003.weights.h5", "ckpt-000000006.weights.h5", "latest.json"]
    logdir = os.path.join(workdir, "tensorboard")
    scalars = read_scalars(logdir)
    for key in ("train/loss", "train/reconstruction_loss", "train/contrastive_loss",
                "train/inner_loss_before", "train/inner_loss_after", "train/learning_rate",
                "train/steps_per_second", "train/examples_per_second",
                "validation/reconstruction_loss"):
        assert [step for step, _ in scalars[key]] == [3, 6], key
    check_run_description(logdir)
    # Labelled panels: 4 rows of 8x8 digits, each panel upscaled 16x to 128 px under a caption.
    images = plugin_values(logdir, "images")["train/reconstruction"]
    assert [step for step, _ in images] == [3, 6]
    width, height, png = images[-1][1].tensor.string_val
    row = panels.CAPTION_HEIGHT + 128
    assert (int(height), int(width)) == (4 * row + 3 * panels.PANEL_GAP,
                                         3 * 128 + 2 * panels.PANEL_GAP)
    assert png.startswith(b"\x89PNG")
    assert "original" in images[-1][1].metadata.summary_description
    assert os.path.isdir(os.path.join(workdir, "export", "encoder", "1"))

    # The same command with more steps resumes at step 6 with the optimizer state.
    resumed = run_training("digits", dict(TINY_RUN, steps=9, export=False),
                                 digits_data_dir, workdir, verbose=0)
    assert resumed["start_step"] == 6 and resumed["final_step"] == 9


def test_rerunning_a_finished_run_does_not_export_a_duplicate_version(digits_data_dir, tmp_path):
    """TF Serving would "upgrade" to a new version holding the same weights."""
    from keras_metamae.training.run import run_training

    workdir = str(tmp_path / "run")
    first = run_training("digits", dict(TINY_RUN, steps=3), digits_data_dir, workdir,
                               verbose=0)
    again = run_training("digits", dict(TINY_RUN, steps=3), digits_data_dir, workdir,
                               verbose=0)
    base = os.path.join(workdir, "export", "encoder")
    assert os.listdir(base) == ["1"] and again["export_dir"] == first["export_dir"]
    assert json.load(open(os.path.join(base, "1", "export_info.json"))) == {"step": 3}
    # More training is a new version.
    more = run_training("digits", dict(TINY_RUN, steps=6), digits_data_dir, workdir,
                              verbose=0)
    assert sorted(os.listdir(base)) == ["1", "2"] and more["export_dir"].endswith("2")


def test_workdir_refuses_a_different_architecture(digits_data_dir, tmp_path):
    from keras_metamae.training.run import run_training

    workdir = str(tmp_path / "run")
    run_training("digits", dict(TINY_RUN, steps=3, export=False), digits_data_dir,
                       workdir, verbose=0)
    with pytest.raises(ValueError, match="embed_dim=16 but now embed_dim=32"):
        run_training("digits", dict(TINY_RUN, steps=3, embed_dim=32), digits_data_dir,
                           workdir, verbose=0)


def test_bad_flags_are_named():
    from keras_metamae import config

    with pytest.raises(ValueError, match="--mask_ratio"):
        config.resolve("digits", {"mask_ratio": 1.5})
    with pytest.raises(ValueError, match="--model"):
        config.resolve("digits", {"model": "bert"})


def test_xla_attention_flag_reaches_every_attention_layer():
    from keras_metamae import config
    from keras_metamae.training.build import set_xla_attention
    from keras_metamae.models.layers import MultiHeadSelfAttention
    from keras_metamae.methods.metamae import MetaMAE

    assert config.resolve("digits", {}).xla_attention is True
    assert config.resolve("digits", {"xla_attention": False}).xla_attention is False
    model = MetaMAE(num_tokens=16, token_grid=[4, 4], token_dim=4, **TINY_MODEL)
    model.build()
    attention = [layer for layer in model._flatten_layers()
                 if isinstance(layer, MultiHeadSelfAttention)]
    assert len(attention) == 2 and all(layer.xla_core for layer in attention)
    set_xla_attention(model, False)
    assert not any(layer.xla_core for layer in attention)


def test_presets_follow_table_8():
    from keras_metamae import config

    eurosat = config.resolve("eurosat", {})
    assert (eurosat.inner_lr, eurosat.contrast_weight, eurosat.decoder_depth, eurosat.dropout,
            eurosat.mask_ratio, eurosat.batch_size) == (0.1, 1.0, 4, 0.0, 0.85, 64)
    assert (eurosat.embed_dim, eurosat.encoder_depth, eurosat.encoder_mlp_dim) == (256, 12, 512)
    genomics_ood = config.resolve("genomics-ood", {}, pretrain_dataset="genomics")
    assert genomics_ood.contrast_weight == 0.01 and genomics_ood.batch_size == 32
    assert config.resolve("eurosat", {"batch_size": 8}).batch_size == 8


def test_presets_follow_the_pretraining_domain_and_say_which_ran():
    from keras_metamae import config

    # The paper's WaferMap row is pretrained on the unlabeled maps.
    unlabeled = config.resolve("wafermap-unlabeled", {})
    assert unlabeled.preset == "wafermap"
    assert (unlabeled.inner_lr, unlabeled.contrast_weight, unlabeled.decoder_depth,
            unlabeled.mask_ratio, unlabeled.batch_size) == (0.1, 0.1, 6, 0.15, 128)
    labeled = config.resolve("wafermap", {}, pretrain_dataset="wafermap-unlabeled")
    assert labeled.preset == "wafermap" and labeled.mask_ratio == 0.15
    assert config.resolve("cifar10", {}, pretrain_dataset="imagenet32").preset == "imagenet32"
    mine = config.resolve("mine", {})
    assert mine.preset == "generic" and "no paper Table 8 row" in config.describe_preset(mine.preset)
    assert "Table 8 row 'eurosat'" in config.describe_preset(config.resolve("eurosat", {}).preset)
    # A preset by name for one's own data.
    chosen = config.resolve("mine", {"preset": "eurosat"})
    assert chosen.preset == "eurosat" and chosen.contrast_weight == 1.0 and chosen.batch_size == 64
    with pytest.raises(ValueError, match="--preset"):
        config.resolve("mine", {"preset": "eurosat2"})


def _train_command(data_dir, workdir, steps):
    args = [sys.executable, "-m", "keras_metamae.train", "--dataset", "digits",
            "--data_dir", data_dir, "--workdir", workdir, f"--steps={steps}", "--noexport"]
    args += [f"--{k}={v}" for k, v in TINY_RUN.items()]
    return args


def test_sigkill_then_same_command_resumes(digits_data_dir, tmp_path):
    workdir = str(tmp_path / "killed")
    command = _train_command(digits_data_dir, workdir, 3000)
    env = dict(os.environ, PYTHONPATH=REPO)
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    checkpoint_dir = os.path.join(workdir, "checkpoints")
    deadline = time.time() + 240
    while time.time() < deadline:
        latest = os.path.join(checkpoint_dir, "latest.json")
        if os.path.exists(latest) and json.load(open(latest))["step"] >= 6:
            break
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        time.sleep(0.2)
    else:
        process.kill()
        pytest.fail("no checkpoint within 240 s")
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = json.load(open(os.path.join(checkpoint_dir, "latest.json")))["step"]

    # Same command, fewer total steps so it finishes quickly: it must resume, not restart.
    done = subprocess.run(_train_command(digits_data_dir, workdir, killed_at + 3), cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Resumed from step {killed_at}" in done.stdout
    summary = json.load(open(os.path.join(workdir, "train_summary.json")))
    assert summary["start_step"] == killed_at and summary["final_step"] == killed_at + 3
    assert not glob.glob(os.path.join(checkpoint_dir, ".tmp-*"))


def test_paper_presets_run_full_float32_matmuls():
    """The reference ran full float32: Table 8 presets (and their transfer sets) turn
    TensorFloat-32 off, on the process, unless --allow_tf32."""
    import tensorflow as tf

    from keras_metamae import config

    assert config.resolve("eurosat", {}).allow_tf32 is False
    assert config.resolve("cifar10", {}, "imagenet32").allow_tf32 is False
    assert config.resolve("digits", {}).allow_tf32 is True
    assert config.resolve("eurosat", {"allow_tf32": True}).allow_tf32 is True
    before = tf.config.experimental.tensor_float_32_execution_enabled()
    try:
        config.resolve("eurosat", {}).apply_matmul_precision()
        assert not tf.config.experimental.tensor_float_32_execution_enabled()
        config.resolve("digits", {}).apply_matmul_precision()
        assert tf.config.experimental.tensor_float_32_execution_enabled()
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(before)


def _logged_loss_steps(logdir: str) -> int:
    """The last step whose training loss is in `logdir`'s event files so far (0: none)."""
    import tensorflow as tf

    last = 0
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        try:
            for event in tf.compat.v1.train.summary_iterator(path):
                if any(value.tag == "loss" for value in event.summary.value):
                    last = max(last, event.step)
        except tf.errors.DataLossError:  # a record being written
            pass
    return last


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_or_ctrl_c_checkpoints_the_current_step_and_says_how_to_resume(
        digits_data_dir, tmp_path, signum, code):
    """A preempted machine's SIGTERM (or Ctrl-C) ends training after the current step with a
    checkpoint of that step and one line, far from any periodic checkpoint."""
    workdir = str(tmp_path / "interrupted")
    command = _train_command(digits_data_dir, workdir, 3000) + ["--checkpoint_every=2000"]
    env = dict(os.environ, PYTHONPATH=REPO)
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while _logged_loss_steps(os.path.join(workdir, "tensorboard", "train")) < 3:
        assert process.poll() is None, process.stderr.read()[-2000:]
        assert time.time() < deadline, "no training step logged within 240 s"
        time.sleep(0.2)
    process.send_signal(signum)
    try:
        _, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("training did not stop within 120 s of the signal")
    assert process.returncode == code, err[-2000:]
    (line,) = [line for line in err.splitlines() if line.startswith("interrupted:")]
    step = json.load(open(os.path.join(workdir, "checkpoints", "latest.json")))["step"]
    assert 3 <= step < 2000
    assert f"{signal.Signals(signum).name} stopped training at step {step} of 3000" in line
    assert "resume with the same command: python -m keras_metamae.train --dataset digits" in line
    assert "Traceback" not in err
    # A plain run prints none of TensorFlow's native start-up lines (issue 23 item 5).
    assert not [row for row in err.splitlines() if NATIVE_LOG_LINE.match(row)], err[:2000]
    assert not os.path.exists(os.path.join(workdir, "export"))
    # The same command resumes from there.
    dry = subprocess.run(command + ["--dry_run"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert f"resumes from step {step} of 3000" in dry.stdout, dry.stderr[-2000:]


def test_a_run_stopped_by_sigterm_and_resumed_logs_the_uninterrupted_losses(
        digits_data_dir, tmp_path, monkeypatch):
    """Exact resume: the data position (across an epoch end), the masking and dropout
    generators and validation all continue as if the run had never stopped."""
    from keras_metamae.training import callbacks as cb
    from keras_metamae.training.run import TrainingInterrupted, run_training

    # 1416 training digits: 22 batches of 64 per epoch, so step 24 is in the second epoch.
    run = dict(TINY_MODEL, batch_size=64, steps=26, log_every=1, checkpoint_every=1000,
               validation_steps=1, warmup_steps=2, learning_rate=1e-3, dropout=0.1,
               eval_every=0, export=False)

    def losses(workdir):
        scalars = read_scalars(os.path.join(workdir, "tensorboard"))
        return {key: [value for _, value in sorted(scalars[key])]
                for key in ("train/loss", "validation/loss")}

    uninterrupted = str(tmp_path / "uninterrupted")
    run_training("digits", run, data_dir=digits_data_dir, workdir=uninterrupted, verbose=0)

    stop_after = 24
    original = cb.StopAtStep.on_train_batch_end

    def preempt(self, batch, logs=None):  # the machine's SIGTERM, delivered to this process
        if cb.global_step(self.model) == stop_after:
            os.kill(os.getpid(), signal.SIGTERM)
        original(self, batch, logs)

    resumed = str(tmp_path / "resumed")
    with monkeypatch.context() as patch:
        patch.setattr(cb.StopAtStep, "on_train_batch_end", preempt)
        with pytest.raises(TrainingInterrupted) as stopped:
            run_training("digits", run, data_dir=digits_data_dir, workdir=resumed, verbose=0)
    assert stopped.value.step == stop_after
    summary = run_training("digits", run, data_dir=digits_data_dir, workdir=resumed, verbose=0)
    assert summary["start_step"] == stop_after and summary["final_step"] == 26

    expected, got = losses(uninterrupted), losses(resumed)
    for key in expected:
        assert len(got[key]) == len(expected[key]) == 26, key
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-6, err_msg=key)
