"""`python -m keras_metamae.reproduce`: the plan lists every paper row; digits runs end to end."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from keras_metamae import reproduce
from keras_metamae.evaluation import paper_rows
from tests.conftest import REPO, TINY_MODEL


def test_plan_lists_every_table_1_and_2_row_with_its_splits():
    text = reproduce.plan()
    for row in paper_rows.ROWS:
        assert f"`{reproduce.command_of(row)}`" in text
        assert row.label in text
    assert sum(r.table == 1 for r in paper_rows.ROWS) == 7
    assert sum(r.table == 2 for r in paper_rows.ROWS) == 17
    # The protocol splits come from the readers.
    assert "eurosat: transfer_train / - / transfer_test" in text
    assert "audio-mnist: train+val / - / test" in text
    assert "pfam: transfer_train / - / transfer_test" in text
    assert "wafermap-unlabeled [train]" in text


def test_plan_is_a_cli():
    result = subprocess.run([sys.executable, "-m", "keras_metamae.reproduce", "--plan"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--domain pfam --transfer scop" in result.stdout


def test_the_mae_column_is_dabs_mae_and_our_mae_claims_no_paper_value():
    """The paper's MAE column is DABS 2.0's MAE (`--method dabs-mae`); `--method mae`, our MAE
    with a linear head (as the command ran it before, so its workdirs resume), differs from
    it and is compared with no paper value."""
    assert reproduce.method_overrides("dabs-mae") == {"model": "dabs-mae"}
    assert reproduce.method_overrides("mae") == {"model": "mae", "decoder_depth": 0}
    with pytest.raises(ValueError, match="--method"):
        reproduce.method_overrides("simclr")
    row = paper_rows.find_row("eurosat", None)
    record = {"metric": "accuracy", "value": 0.5, "pretrain_dataset": "eurosat",
              "dataset": "eurosat"}
    paper_mae, paper_random = f"{row.paper['dabs-mae']:g}", f"{row.paper['random']:g}"
    assert reproduce.results_row(record, row, "dabs-mae", 10, "Table 1").endswith(
        f"| {paper_mae} | {paper_random} |\n")
    assert reproduce.results_row(record, row, "mae", 10, "Table 1").endswith(
        f"| - | {paper_random} |\n")
    plan = reproduce.plan()
    assert "add `--method dabs-mae` for the MAE column" in plan and "--method mae" not in plan


def test_every_paper_row_trains_and_probes_without_tf32_unless_asked():
    """Issue 25 item 4 (landed with the presets): each paper row's pretraining run, for each
    `--method` and comparison column, resolves to full float32 matmuls (TensorFloat-32 off,
    as the reference ran); `--allow_tf32` turns it back on; the run's config.json carries it
    to the probe (evaluation/run.py applies it as training did)."""
    from keras_metamae import config as config_lib
    from keras_metamae.comparison.runner import PAPER_ORDER
    from preprocessing import registry

    pretrain_sets = {row.pretrain for row in paper_rows.ROWS}
    assert {"eurosat", "wafermap-unlabeled", "imagenet32", "mscoco"} <= pretrain_sets
    columns = [reproduce.method_overrides(m) for m in reproduce.METHODS]
    columns += [{"model": "metamae" if m == "random" else m} for m in PAPER_ORDER]
    for dataset in sorted(pretrain_sets):
        parent = registry.get_reader(dataset).spec_template().pretrain_dataset
        for overrides in columns:
            resolved = config_lib.resolve(dataset, dict(overrides), parent)
            assert resolved.allow_tf32 is False, (dataset, overrides)
            assert config_lib.resolve(dataset, dict(overrides, allow_tf32=True),
                                      parent).allow_tf32 is True
    assert config_lib.resolve("digits", {}).allow_tf32 is True  # not a paper row: TF's default


@pytest.mark.parametrize("domain,transfer,message", [
    ("imagenet", None, "--domain"),
    ("pfam", "cifar10", "--transfer"),
    ("imagenet32", None, "only through transfer rows"),
])
def test_bad_rows_are_named(domain, transfer, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        reproduce.reproduce(domain, transfer=transfer, workdir_root=str(tmp_path))


def test_digits_runs_end_to_end_and_appends_a_row(digits_data_dir, tmp_path):
    root = str(tmp_path / "runs")
    # No online evaluation, and one probe per method (each probe has its own tests): the
    # subject here is the chain preprocess -> pretrain -> probe -> results.md.
    overrides = dict(TINY_MODEL, batch_size=16, log_every=5, checkpoint_every=5,
                     validation_steps=1, eval_every=0)
    for method, probe in (("metamae", "paper"), ("dabs-mae", "converged")):
        record = reproduce.reproduce("digits", method=method, steps=5, epochs=1, probe=probe,
                                     workdir_root=root, data_dir=digits_data_dir,
                                     overrides=overrides)
        assert record["paper"] is None and 0.0 <= record["value"] <= 1.0
    lines = open(os.path.join(root, "results.md")).read().splitlines()
    assert lines[0].startswith("| date | table | row | method")
    rows = [line for line in lines[2:] if line.strip()]
    assert len(rows) == 2
    assert "| digits -> digits | metamae | 5 | accuracy |" in rows[0]
    assert "| digits -> digits | dabs-mae | 5 | accuracy |" in rows[1]
    assert os.path.isdir(os.path.join(root, "digits-dabs-mae", "checkpoints"))


def test_reproducing_md_holds_the_current_plan():
    """REPRODUCING.md's table is `--plan`'s output: regenerate it when a row or split changes."""
    text = open(os.path.join(REPO, "REPRODUCING.md")).read()
    for line in reproduce.plan().splitlines():
        if line.startswith("| "):
            assert line in text, f"REPRODUCING.md lacks the plan line: {line}"


def test_methods_run_a_paper_row_as_a_comparison_with_the_paper_beside_it(monkeypatch, tmp_path):
    """`reproduce --domain pfam --transfer scop --methods ...`: both datasets prepared, the
    comparison pretrains on pfam, probes scop, and carries the row's paper values."""
    from keras_metamae.comparison import study

    prepared, calls = [], []
    monkeypatch.setattr(reproduce, "ensure_processed",
                        lambda dataset, data_dir, raw_root: prepared.append(dataset))
    monkeypatch.setattr(study, "compare_methods",
                        lambda *args, **kwargs: calls.append((args, kwargs)) or ({}, {}))
    reproduce.reproduce_comparison("pfam", ["random", "capri", "metamae"], [0, 1],
                                   transfer="scop", steps=10, workdir_root=str(tmp_path),
                                   data_dir=str(tmp_path / "data"))
    assert prepared == ["pfam", "scop"]
    (args, kwargs), = calls
    assert args[:4] == ("pfam", ["random", "capri", "metamae"], [0, 1], 10)
    assert args[4] == str(tmp_path / "compare-pfam-scop")
    assert kwargs["probe_dataset"] == "scop"
    assert kwargs["paper_row"].paper["capri"] == 2.0 and kwargs["paper_row"].label == "Pfam -> SCOP"
    with pytest.raises(ValueError, match="--transfer"):
        reproduce.reproduce_comparison("pfam", ["metamae"], [0], transfer="cifar10")


def test_dry_run_with_a_domain_describes_that_row(tmp_path, capsys):
    from commandline import cli

    root = str(tmp_path / "runs")
    assert cli.call_program(reproduce, ["--domain", "eurosat", "--method", "dabs-mae",
                                        "--workdir_root", root, "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "Table 1, EuroSAT: pretrain on eurosat [pretrain]" in out
    assert "paper        random 62.3, dabs-mae 86.3" in out and "100,000 pretraining steps" in out
    assert cli.call_program(reproduce, ["--domain", "eurosat", "--method", "mae",
                                        "--workdir_root", root, "--dry_run"]) == 0
    assert "paper        random 62.3, mae -" in capsys.readouterr().out  # not the MAE column
    assert "| table | row |" not in out  # not the whole plan
    assert cli.call_program(reproduce, ["--domain", "pfam", "--transfer", "scop", "--methods",
                                        "random,capri,metamae", "--seeds", "0,1",
                                        "--workdir_root", root, "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "random, capri, metamae x seeds 0, 1" in out and "capri 2, metamae 11.8" in out
    assert f"{root}/compare-pfam-scop" in out and not os.path.exists(root)
    assert cli.call_program(reproduce, ["--domain", "pfam", "--transfer", "cifar10",
                                        "--dry_run"]) == 2
    assert "--transfer" in capsys.readouterr().err
