"""The comparison of pretraining methods: all seven columns × two seeds on digits (tiny model),
intervals over seeds, a verdict, a PNG, resumable; a diverged run is a result, not a crash;
the interval arithmetic against SciPy."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from commandline import cli
from keras_metamae import compare
from keras_metamae.comparison.study import compare_methods
from keras_metamae.comparison import report, runner
from keras_metamae.evaluation import intervals
from tests.conftest import TINY_MODEL

# One step per run: what is tested is the bookkeeping, not what the methods learn.
TINY_RUN = dict(TINY_MODEL, batch_size=8, log_every=1, checkpoint_every=1, validation_steps=1,
                warmup_steps=1, eval_every=1, online_eval_examples=64)


def test_seven_columns_two_seeds_with_intervals_a_plot_and_a_resumable_rerun(
        digits_data_dir, tmp_path):
    workdir = str(tmp_path / "compare")
    results, paths = compare_methods("digits", list(runner.PAPER_ORDER), [0, 1], 1, workdir,
                                     digits_data_dir, epochs=1, overrides=TINY_RUN)
    assert list(results["methods"]) == list(runner.PAPER_ORDER)
    for method, record in results["methods"].items():
        assert record["diverged"] == [], method
        for key in ("paper_probe", "converged_probe", "knn"):
            figure = record["figures"][key]
            assert figure["n"] == 2 and list(figure["per_seed"]) == ["0", "1"], (method, key)
            assert figure["low"] <= figure["mean"] <= figure["high"]
        assert record["steps"] == ([0] if method == "random" else [1])
        if method != "random":  # online evaluation at steps 0 and 1 of each seed
            assert [p["step"] for p in record["online"]["0"]] == [0, 1]
    # The random column's seeds are two different encoders, each reproducible.
    random_knn = results["methods"]["random"]["figures"]["knn"]["per_seed"]
    assert random_knn["0"] != random_knn["1"]
    assert set(results["verdict"]) == {"paper_probe", "converged_probe", "knn"}

    markdown = open(paths["markdown"]).read()
    assert "| MetaMAE |" in markdown and "| e-Mix |" in markdown and " ± " in markdown
    assert "95% Student-t interval over seeds" in markdown and "Which method?" in markdown
    with open(paths["plot"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert json.load(open(paths["json"]))["seeds"] == [0, 1]
    # Every trained run is a workdir whose TensorBoard holds its HParams session, the method
    # one of the experiment's choices.
    from tensorboard.plugins.hparams import metadata

    from keras_metamae import methods
    from tests.test_train import plugin_values

    hparams = plugin_values(os.path.join(workdir, "capri", "seed-1", "tensorboard"), "hparams")
    (_, experiment), = hparams["./" + metadata.EXPERIMENT_TAG]
    experiment = metadata.parse_experiment_plugin_data(experiment.metadata.plugin_data.content)
    (model,) = [info for info in experiment.hparam_infos if info.name == "model"]
    assert sorted(v.string_value for v in model.domain_discrete.values) == \
        sorted(methods.METHOD_NAMES)
    (_, session), = hparams["./" + metadata.SESSION_START_INFO_TAG]
    session = metadata.parse_session_start_info_plugin_data(session.metadata.plugin_data.content)
    assert session.hparams["model"].string_value == "capri"
    assert session.hparams["seed"].number_value == 1

    # A rerun trains and probes nothing again.
    checkpoint = os.path.join(workdir, "metamae", "seed-0", "checkpoints", "latest.json")
    evaluation = os.path.join(workdir, "metamae", "seed-0", "eval", "digits.json")
    stamps = [os.path.getmtime(checkpoint), os.path.getmtime(evaluation)]
    again, _ = compare_methods("digits", ["metamae"], [0], 1, workdir, digits_data_dir,
                               epochs=1, overrides=TINY_RUN)
    assert [os.path.getmtime(checkpoint), os.path.getmtime(evaluation)] == stamps
    assert again["methods"]["metamae"]["figures"]["knn"]["per_seed"]["0"] == \
        results["methods"]["metamae"]["figures"]["knn"]["per_seed"]["0"]


def test_a_diverging_method_is_reported_not_raised(digits_data_dir, tmp_path, monkeypatch):
    from keras_metamae.methods import capri

    original = capri.Capri.compute_losses

    def poisoned(self, *args, **kwargs):
        losses = original(self, *args, **kwargs)
        losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(capri.Capri, "compute_losses", poisoned)
    workdir = str(tmp_path / "compare")
    overrides = dict(TINY_RUN, max_bad_steps=2, eval_every=0)
    results, paths = compare_methods("digits", ["capri"], [0], 3, workdir, digits_data_dir,
                                     epochs=1, overrides=overrides)
    (diverged,) = results["methods"]["capri"]["diverged"]
    assert diverged["seed"] == 0 and diverged["diverged_at"] == 0
    assert "seed 0 diverged at step 0" in open(paths["markdown"]).read()
    # Recorded: a rerun reports it again without training.
    monkeypatch.setattr(capri.Capri, "compute_losses", original)
    again, _ = compare_methods("digits", ["capri"], [0], 3, workdir, digits_data_dir,
                               epochs=1, overrides=overrides)
    assert again["methods"]["capri"]["diverged"][0]["diverged_at"] == 0


@pytest.mark.parametrize("argv, flag", [
    (["--methods", "metamae,simclr"], "--methods"),
    (["--seeds", "0,x"], "--seeds"),
    (["--seeds", "1,1"], "--seeds"),
    (["--steps", "0"], "--steps 0"),
])
def test_bad_flags_are_one_line_errors(argv, flag, capsys, tmp_path):
    code = cli.call_program(compare, argv + ["--workdir", str(tmp_path / "w"), "--dry_run"])
    err = capsys.readouterr().err
    assert code == 2 and flag in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "w")


def test_dry_run_says_what_would_run(capsys, tmp_path):
    code = cli.call_program(compare, ["--methods", "random,metamae", "--seeds", "0,1",
                                      "--workdir", str(tmp_path / "w"), "--dry_run"])
    out = capsys.readouterr().out
    assert code == 0 and "random, metamae" in out and "seeds 0, 1" in out


def test_a_pretrain_only_dataset_is_compared_on_a_labelled_transfer_dataset(
        digits_data_dir, tmp_path, capsys):
    """Unlabeled 8x8 images (digits' token layout): without --transfer_dataset the command
    stops before training anything, with it every run is probed on digits."""
    from pipeline import preprocess

    raw, data_dir = tmp_path / "raw", tmp_path / "data"
    raw.mkdir()
    data_dir.mkdir()
    os.symlink(os.path.join(digits_data_dir, "digits"), data_dir / "digits")
    np.save(raw / "inputs.npy",
            np.random.default_rng(0).uniform(0, 16, (64, 8, 8, 1)).astype(np.float32))
    preprocess.run(["--dataset", "custom", "--format", "npy", "--raw_data_dir", str(raw),
                    "--patch_shape", "2,2", "--name", "pool", "--data_dir", str(data_dir),
                    "--runner=FnApiRunner"])
    capsys.readouterr()
    argv = ["--dataset", "pool", "--data_dir", str(data_dir), "--methods", "random,mae",
            "--seeds", "0", "--steps", "1", "--epochs", "1", "--probe", "paper"]
    argv += [f"--{key}={value}" for key, value in TINY_RUN.items()]
    refused = str(tmp_path / "refused")
    assert cli.call_program(compare, argv + ["--workdir", refused]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: pool has no labels (pretrain-only), so there is nothing to "
                          "probe (") and "--transfer_dataset LABELLED" in err, err
    assert not os.path.exists(refused)
    workdir = str(tmp_path / "compared")
    assert cli.call_program(compare, argv + ["--workdir", workdir,
                                             "--transfer_dataset", "digits"]) == 0
    results = json.load(open(os.path.join(workdir, "results.json")))
    assert results["probe_dataset"] == "digits", results


def test_student_t_interval_and_welch_test_against_scipy():
    from scipy import stats

    values = [0.9, 0.905, 0.884]
    summary = intervals.summarize(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values),
                                 scale=stats.sem(values))
    assert summary["low"] == pytest.approx(low) and summary["high"] == pytest.approx(high)
    assert intervals.summarize([0.5])["half_width"] is None
    assert intervals.differ([0.9, 0.91, 0.92], [0.5, 0.51, 0.52]) is True
    assert intervals.differ([0.9, 0.8, 0.95], [0.88, 0.93, 0.85]) is False
    assert intervals.differ([0.9], [0.5, 0.6]) is None


def test_verdict_names_the_ties():
    def method(values):
        return {"figures": {"knn": dict(intervals.summarize(values)),
                            "paper_probe": intervals.summarize([]),
                            "converged_probe": intervals.summarize([])}}

    verdict = report.verdicts({"a": method([0.9, 0.91, 0.92]), "b": method([0.89, 0.93, 0.9]),
                               "c": method([0.5, 0.51, 0.52])})
    assert verdict == {"knn": {"best": "a", "not_different_from_best": ["b"]}}


def test_paper_rows_put_the_paper_beside_ours_in_its_units():
    from keras_metamae.evaluation import paper_rows

    row = paper_rows.find_row("eurosat", None)
    comparison = runner.Comparison(dataset="eurosat", methods=["random", "capri", "metamae"],
                                   seeds=[0, 1], steps=10, workdir="unused", data_dir="unused")

    def run(seed, value):
        return {"seed": seed, "step": 10, "online": [],
                "evaluation": {"metric": "accuracy", "probe": "both", "value": value,
                               "converged": {"value": value + 0.01}, "knn_accuracy": value}}

    runs = {"random": [run(0, 0.60), run(1, 0.62)],
            "capri": [run(0, 0.70), {"seed": 1, "diverged": {"diverged_at": 7}}],
            "metamae": [run(0, 0.88), run(1, 0.89)]}
    results = report.summarize(comparison, runs, row)
    text = report.markdown(results)
    header = next(line for line in text.splitlines() if line.startswith("| method |"))
    assert header.endswith("| kNN | paper |")
    assert "| MetaMAE | 88.5 ± 6.4 (88.0, 89.0) |" in text and text.rstrip().endswith(
        "(as printed; '-' where the paper has no value).")
    assert "seed 1 diverged at step 7" in text and "| 88.5 |" in text and "| 67.4 |" in text
    assert results["methods"]["capri"]["figures"]["knn"]["n"] == 1
    assert results["verdict"]["knn"]["best"] == "metamae"
