"""Bad invocations of the four entry points: one `error: <what> (<where>): <what to do>` line,
exit status 2, nothing created. Run in this process through `cli.call_program` (the same absl
app.run and parser as the commands; a subprocess each would import TensorFlow 30 times), plus
three real subprocesses for what only a fresh process shows."""

from __future__ import annotations

import json
import dataclasses
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from commandline import cli
from keras_metamae import demo, evaluate, export, train
from keras_metamae import config as config_lib
from pipeline import preprocess
from preprocessing import registry
from preprocessing.spec import SplitInfo
from tests.conftest import REPO

ERROR_LINE = re.compile(r"^error: (?P<what>.+?) \((?P<where>[^()]+)\): (?P<todo>\S.*)$")
PROGRAMS = {"preprocess": preprocess, "train": train, "evaluate": evaluate, "export": export,
            "demo": demo}


def _write_png(path: str, size: int) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.random.default_rng(size).integers(0, 255, (size, size, 3), np.uint8)
    Image.fromarray(pixels).save(path)


def _workdir(path: str, data_dir: str, spec, *, checkpoint: bool, **overrides) -> str:
    """A training workdir as train leaves it (config.json, dataset_spec.json and, with
    `checkpoint`, a checkpoint file name), without training."""
    config = config_lib.resolve("digits", overrides)
    config.data_dir, config.workdir = data_dir, path
    config.save(path)
    with open(os.path.join(path, "dataset_spec.json"), "w") as f:
        f.write(spec.to_json())
    if checkpoint:  # only its name is read before a model is built
        os.makedirs(os.path.join(path, "checkpoints"))
        open(os.path.join(path, "checkpoints", "ckpt-000000004.weights.h5"), "wb").close()
    return path


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> dict[str, str]:
    """Every input the bad invocations need, in one folder whose contents are checked."""
    root = str(tmp_path_factory.mktemp("cli_errors"))
    p = {"root": root}
    p["cwd"] = os.path.join(root, "cwd")  # defaults (data/processed, workdirs/) would land here
    os.makedirs(p["cwd"])
    p["blocked"] = os.path.join(root, "blocked")  # a file where a folder is needed
    open(p["blocked"], "w").close()
    p["empty"] = os.path.join(root, "empty")
    os.makedirs(p["empty"])
    # Raw inputs: custom npy arrays, and an image folder of 32-pixel images with one 40-pixel one.
    p["raw_npy"] = os.path.join(root, "raw_npy")
    os.makedirs(p["raw_npy"])
    np.save(os.path.join(p["raw_npy"], "inputs.npy"), np.zeros((12, 4, 4, 1), np.float32))
    np.save(os.path.join(p["raw_npy"], "labels.npy"), np.arange(12) % 2)
    p["images"] = os.path.join(root, "images")
    for label in ("cat", "dog"):
        for i in range(3):
            _write_png(os.path.join(p["images"], label, f"{i}.png"), 32)
    _write_png(os.path.join(p["images"], "dog", "big.png"), 40)
    # A processed digits dataset as far as the checks read it: its spec (100 training examples).
    spec = registry.get_reader("digits").spec_template()
    spec.splits = {split: SplitInfo(num_examples=n, num_shards=1,
                                    file_pattern=f"{split}/data-*-of-00001.tfrecord.gz")
                   for split, n in (("train", 100), ("val", 20), ("test", 20))}
    p["data"] = os.path.join(root, "processed")
    os.makedirs(os.path.join(p["data"], "digits", "2"))
    spec.save(os.path.join(p["data"], "digits", "2"))
    tiny = dict(embed_dim=16, encoder_heads=2)
    p["run"] = _workdir(os.path.join(root, "run"), p["data"], spec, checkpoint=True, **tiny)
    os.makedirs(os.path.join(p["run"], "export", "encoder", "1"))
    p["run_no_checkpoint"] = _workdir(os.path.join(root, "run_no_checkpoint"), p["data"], spec,
                                      checkpoint=False)
    p["run_data_gone"] = _workdir(os.path.join(root, "run_data_gone"),
                                  os.path.join(root, "moved_away"), spec, checkpoint=True)
    p["run_eval_blocked"] = _workdir(os.path.join(root, "run_eval_blocked"), p["data"], spec,
                                     checkpoint=True)
    open(os.path.join(p["run_eval_blocked"], "eval"), "w").close()
    p["run_export_blocked"] = _workdir(os.path.join(root, "run_export_blocked"), p["data"], spec,
                                       checkpoint=True)
    open(os.path.join(p["run_export_blocked"], "export"), "w").close()
    return p


def _tree(root: str) -> dict[str, float | None]:
    """Every file and folder under root (files with their modification time)."""
    found = {}
    for current, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.join(current, name)] = None
        for name in files:
            path = os.path.join(current, name)
            found[path] = os.stat(path).st_mtime_ns
    return found


def _run(program: str, argv: list[str], place, monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.chdir(place["cwd"])
    before = _tree(place["root"])
    code = cli.call_program(PROGRAMS[program], argv)
    out, err = capsys.readouterr()
    assert _tree(place["root"]) == before, f"{program} {argv} created or changed files"
    return code, out, err


def assert_one_error_line(err: str, where: str) -> re.Match:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    shaped = ERROR_LINE.match(lines[0])
    assert shaped, lines[0]
    assert where in shaped["where"], lines[0]
    assert "Traceback" not in err
    return shaped


# (program, argv with {placeholders} from `place`, what the `(where)` part must name)
BAD_INVOCATIONS = [
    # preprocess
    ("preprocess", ["--datset", "eurosat"], "--datset"),
    ("preprocess", ["--output_dir", "{root}/out"], "--output_dir"),
    ("preprocess", ["--dataset", "custom", "--format", "npy", "--patch_shape", "2,2",
                    "--data_dir", "{raw_npy}"], "--data_dir {raw_npy}"),
    ("preprocess", ["--dataset", "custom", "--format", "npy", "--raw_data_dir", "{raw_npy}",
                    "--data_dir", "{root}/out"], "--patch_shape"),
    ("preprocess", ["--dataset", "custom", "--format", "parquet", "--raw_data_dir", "{raw_npy}",
                    "--data_dir", "{root}/out"], "--format parquet"),
    ("preprocess", ["--dataset", "custom", "--format", "image_folder", "--raw_data_dir",
                    "{images}", "--reader_option", "patch_size=5", "--data_dir", "{root}/out"],
     "--reader_option patch_size=5"),
    ("preprocess", ["--dataset", "custom", "--reader_option", "novalue"],
     "--reader_option novalue"),
    ("preprocess", ["--num_shards", "0"], "--num_shards"),
    ("preprocess", ["--dataset", "no_such_set", "--data_dir", "{root}/out"],
     "--dataset no_such_set"),
    ("preprocess", ["--data_dir", "{blocked}/out"], "--data_dir {blocked}/out"),
    ("preprocess", ["--dataset", "digits", "--runner"], "--runner"),
    ("preprocess", ["--", "--runnr", "DirectRunner"], "--runnr"),
    # gs:// is taken (tests/test_cloud_storage.py); a scheme TensorFlow does not know is not.
    ("preprocess", ["--data_dir", "s3://bucket/processed"], "--data_dir s3://bucket/processed"),
    ("preprocess", ["--raw_data_dir", "s3://bucket/raw"], "--raw_data_dir s3://bucket/raw"),
    ("preprocess", ["digits"], "digits"),
    ("preprocess", ["--dataset", "eurosat", "--raw_data_dir", "{empty}", "--data_dir",
                    "{root}/out", "--download", "never"], "--raw_data_dir {empty}"),
    ("preprocess", ["--max_bad_fraction", "2"], "--max_bad_fraction"),
    # train
    ("train", ["--stepz", "3"], "--stepz"),
    ("train", ["--steps", "abc"], "--steps"),
    ("train", ["--steps", "0", "--data_dir", "{data}", "--workdir", "{root}/w"], "--steps"),
    ("train", ["--model", "foo", "--data_dir", "{data}", "--workdir", "{root}/w"], "--model"),
    ("train", ["--dataset", "eurosat", "--data_dir", "{empty}", "--workdir", "{root}/w"],
     "--data_dir {empty}"),
    ("train", ["--data_dir", "{data}", "--workdir", "{blocked}/w"], "--workdir {blocked}/w"),
    ("train", ["--workdir", "s3://bucket/run"], "--workdir s3://bucket/run"),
    ("train", ["--data_dir", "{data}", "--workdir", "{root}/w", "--batch_size", "5000"],
     "--batch_size 5000"),
    ("train", ["--data_dir", "{data}", "--workdir", "{run}"], "{run}/config.json"),
    ("train", ["--", "--steps", "3"], "--"),
    ("train", ["--worker_hosts", "a:1,a:1", "--worker_index", "0"], "--worker_hosts"),
    # evaluate
    ("evaluate", [], "--workdir"),
    ("evaluate", ["--workdir", "{empty}"], "{empty}/config.json"),
    ("evaluate", ["--workdir", "{run_data_gone}"], "{root}/moved_away"),
    ("evaluate", ["--workdir", "{run_eval_blocked}"], "--workdir {run_eval_blocked}"),
    ("evaluate", ["--workdir", "{run}", "--probe", "best"], "--probe"),
    ("evaluate", ["--workdir", "{run}", "--epochs", "0"], "--epochs 0"),
    ("evaluate", ["--workdir", "{run}", "--dataset", "eurosat"], "--data_dir"),
    # export
    ("export", [], "--workdir"),
    ("export", ["--workdir", "{empty}"], "{empty}/config.json"),
    ("export", ["--workdir", "{run_no_checkpoint}"], "{run_no_checkpoint}/checkpoints"),
    ("export", ["--workdir", "{run}", "--version", "0"], "--version 0"),
    ("export", ["--workdir", "{run}", "--version", "1"], "--version 1"),
    ("export", ["--workdir", "{run_export_blocked}"], "--workdir {run_export_blocked}"),
    ("demo", ["--stpes", "3"], "--stpes"),
    ("demo", ["--steps", "0"], "--steps 0"),
    ("demo", ["--workdir", "{blocked}"], "--workdir {blocked}"),
]


@pytest.mark.parametrize("program,argv,where", BAD_INVOCATIONS,
                         ids=[f"{p}:{' '.join(a)[:40]}" for p, a, _ in BAD_INVOCATIONS])
def test_bad_invocation_is_one_error_line_exit_2_and_writes_nothing(
        program, argv, where, place, monkeypatch, capsys):
    argv = [arg.format(**place) for arg in argv]
    code, _, err = _run(program, argv, place, monkeypatch, capsys)
    assert code == 2, err
    assert_one_error_line(err, where.format(**place))


def test_every_entry_point_has_bad_invocations():
    counts = {name: sum(p == name for p, _, _ in BAD_INVOCATIONS) for name in PROGRAMS
              if name != "demo"}
    assert sum(counts.values()) >= 20 and min(counts.values()) >= 5, counts


def test_old_spellings_say_what_they_became(place, monkeypatch, capsys):
    _, _, err = _run("preprocess", ["--output_dir", "x"], place, monkeypatch, capsys)
    assert "use --data_dir" in err and "--raw_data_dir" in err
    _, _, err = _run("preprocess", ["--dataset", "custom", "--format", "npy", "--patch_shape",
                                    "2,2", "--data_dir", place["raw_npy"]], place, monkeypatch,
                     capsys)
    assert f"--raw_data_dir {place['raw_npy']}" in err


def test_beam_options_are_taken_where_beam_users_put_them(place, monkeypatch, capsys, tmp_path):
    """Beam's own options among the program's flags (as Beam's examples take them) go to Beam,
    `--name value` and `--name=value` alike; a Beam option without its value is one line."""
    code, out, _ = _run("preprocess", ["--runner", "DirectRunner", "--dataset", "digits",
                                       "--dry_run"], place, monkeypatch, capsys)
    assert code == 0 and "Beam options --runner DirectRunner" in out
    code, out, _ = _run("preprocess", ["--runner=FnApiRunner", "--dataset", "digits", "--dry_run",
                                       "--", "--direct_num_workers", "1"], place, monkeypatch,
                        capsys)
    assert code == 0 and "Beam options --runner=FnApiRunner --direct_num_workers 1" in out
    code, _, err = _run("preprocess", ["--dataset", "digits", "--runner"], place, monkeypatch,
                        capsys)
    assert code == 2 and "give it one: --runner=VALUE" in assert_one_error_line(err, "--runner")[0]
    # And the job runs with it.
    out_dir = str(tmp_path / "processed")
    assert cli.call_program(preprocess, ["--dataset", "digits", "--runner=FnApiRunner",
                                         "--data_dir", out_dir, "--num_shards", "1"]) == 0
    assert os.path.isfile(os.path.join(out_dir, "digits", "3", "spec.json"))


def test_stored_data_gone_names_the_flag_to_pass(place, monkeypatch, capsys):
    _, _, err = _run("evaluate", ["--workdir", place["run_data_gone"]], place, monkeypatch, capsys)
    assert "pass --data_dir" in assert_one_error_line(err, "moved_away")["todo"]


# === --dry_run / --print_config: what would happen, exit 0, nothing written ===
def test_train_print_config_shows_the_resolved_preset(place, monkeypatch, capsys):
    code, out, err = _run("train", ["--print_config", "--data_dir", place["data"], "--workdir",
                                    os.path.join(place["root"], "w"), "--steps", "7"],
                          place, monkeypatch, capsys)
    assert code == 0, err
    assert out.splitlines()[0].startswith("preset       digits (embedded default")
    config = json.loads(out[out.index("{"):out.rindex("}") + 1])
    assert config["steps"] == 7 and config["preset"] == "digits" and config["embed_dim"] == 64
    assert config["data_dir"] == place["data"]  # stored absolute
    assert config["workdir"] == os.path.join(place["root"], "w")


def test_train_print_config_of_a_started_run_says_it_resumes(place, monkeypatch, capsys):
    code, out, err = _run("train", ["--dry_run", "--data_dir", place["data"], "--workdir",
                                    place["run"], "--embed_dim", "16", "--encoder_heads", "2"],
                          place, monkeypatch, capsys)
    assert code == 0, err
    assert "resumes from step 4 of 1500" in out


@pytest.mark.parametrize("program,argv,expected", [
    ("preprocess", ["--dataset", "custom", "--format", "image_folder", "--raw_data_dir",
                    "{images}", "--name", "pets", "--data_dir", "{root}/out"],
     "1 of 7 images are not 32x32 pixels (e.g. dog/big.png is 40x40); they are resized"),
    ("evaluate", ["--workdir", "{run}", "--epochs", "3"], "3 epochs, batch 64"),
    ("export", ["--workdir", "{run}"], "{run}/export/encoder/2"),
])
def test_dry_run_says_what_would_happen(program, argv, expected, place, monkeypatch, capsys):
    code, out, err = _run(program, [a.format(**place) for a in argv] + ["--dry_run"], place,
                          monkeypatch, capsys)
    assert code == 0, err
    assert expected.format(**place) in out and "(--dry_run)" in out


# === in a fresh process ===
def _subprocess(place, *argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO, KERAS_METAMAE_DOWNLOAD="never")
    return subprocess.run([sys.executable, "-m", *argv], cwd=place["cwd"], env=env,
                          capture_output=True, text=True, timeout=120)


def test_misspelt_dataset_flag_processes_nothing(place):
    """The reported case: `--datset eurosat` used to preprocess digits into data/processed."""
    before = _tree(place["root"])
    done = _subprocess(place, "pipeline.preprocess", "--datset", "eurosat")
    assert done.returncode == 2, done.stderr
    assert_one_error_line(done.stderr, "--datset")
    assert "did you mean --dataset?" in done.stderr
    assert _tree(place["root"]) == before


def test_helpfull_prints_help_and_runs_nothing(place):
    before = _tree(place["root"])
    done = _subprocess(place, "pipeline.preprocess", "--helpfull")
    assert done.returncode == 0, done.stderr
    assert "--raw_data_dir" in done.stdout and "--verbosity" in done.stdout
    assert _tree(place["root"]) == before


def test_absl_flag_error_of_the_real_command(place):
    done = _subprocess(place, "keras_metamae.train", "--steps=many")
    assert done.returncode == 2, done.stderr
    assert_one_error_line(done.stderr, "--steps")
    assert "FATAL" not in done.stderr


def test_train_help_says_what_each_hyper_parameter_is_with_its_paper_symbol():
    from commandline import cli
    from keras_metamae import config as config_lib
    from keras_metamae import train

    fields = {f.name for f in dataclasses.fields(config_lib.TrainConfig)}
    assert set(config_lib.FIELD_HELP) == fields - train._SKIP
    text = " ".join(cli.help_text(train).split())
    assert "--inner_lr: alpha of Eq. 2: the step size of the latent update" in text
    assert "--contrast_weight: lambda of Eq. 5" in text
    assert "--temperature: tau of Eq. 4" in text
    assert "--dropout: P_drop of Table 8" in text
