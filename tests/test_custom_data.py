"""One's own data as self-supervised learning has it: labels optional in every custom format
(a pretrain-only spec), an unlabelled pool beside labelled splits, and the input checks made
before anything is written (one error line each, exit 2). Every command an error or hint
suggests is run here too."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from commandline import cli
from keras_metamae import evaluate, train
from pipeline import preprocess
from preprocessing import registry
from preprocessing.datasets.base import BadRecord
from preprocessing.spec import PIPELINE_VERSION, UNLABELED, load_spec
from tests.conftest import TINY_MODEL
from tests.fixtures import media

ERROR_LINE = re.compile(r"^error: (?P<what>.+?) \((?P<where>[^()]+)\): (?P<todo>\S.*)$")
TINY_FLAGS = [f"--{k}={v}" for k, v in TINY_MODEL.items()] + ["--batch_size=8", "--log_every=2"]


def _error_line(err: str) -> re.Match:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    shaped = ERROR_LINE.match(lines[0])
    assert shaped, lines[0]
    return shaped


def _save(folder: str, **arrays) -> str:
    os.makedirs(folder, exist_ok=True)
    for name, array in arrays.items():
        np.save(os.path.join(folder, f"{name}.npy"), array)
    return folder


def _write(path: str, data: bytes | str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def _rows(n: int, features: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, features)).astype(np.float32)


# === 1. labels are optional in every format ===
def _unlabelled(fmt: str, root: str) -> tuple[str, dict]:
    """A folder of `fmt` without any label, and the reader options it needs."""
    folder = os.path.join(root, fmt)
    if fmt == "npy":
        _save(folder, inputs=_rows(6))
        return folder, {"format": "npy"}
    if fmt == "csv":
        _write(os.path.join(folder, "data.csv"), "a,b\n" + "".join(f"{i},{i / 2}\n" for i in range(6)))
        return folder, {"format": "csv"}
    if fmt == "text":
        _write(os.path.join(folder, "data.txt"), "".join(f"{'ACGT'[i % 4] * (i + 1)}\n" for i in range(6)))
        return folder, {"format": "text", "vocab": "ACGT", "seq_len": "8"}
    if fmt == "image_folder":
        for i in range(3):
            _write(os.path.join(folder, f"{i}.png"), media.image_bytes(media.image_array(16, 16, i), "PNG"))
        return folder, {"image_size": 16, "patch_size": 4}
    for i in range(3):
        _write(os.path.join(folder, f"{i}.wav"), media.wav_bytes(media.sweep(0.2, 16000, i), 16000))
    return folder, {}


@pytest.mark.parametrize("fmt", ["npy", "csv", "text", "image_folder", "audio_folder"])
def test_labels_are_optional_in_every_format(fmt, tmp_path):
    folder, options = _unlabelled(fmt, str(tmp_path))
    name = preprocess.FOLDER_FORMATS.get(fmt, "custom")
    reader = registry.get_reader(name, data_dir=folder, **options)
    spec = reader.spec_template()
    assert spec.is_pretrain_only and spec.task == "none" and spec.num_classes == 0
    assert spec.protocol_splits("probe_train") == [] and spec.protocol_splits("pretrain") == ["train"]
    examples = [r for r in reader.read_all() if not isinstance(r, BadRecord)]
    assert len(examples) == (3 if "folder" in fmt else 6)
    assert {ex.label for ex in examples} == {UNLABELED}
    assert {reader.split_of(ex, 42) for ex in examples} == {"train"}  # nothing to probe


@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> dict[str, str]:
    """An unlabelled npy folder and a labelled one of the same token layout, preprocessed."""
    root = str(tmp_path_factory.mktemp("own_data"))
    p = {"root": root, "data": os.path.join(root, "processed")}
    p["unlabelled_raw"] = _save(os.path.join(root, "my_arrays"), inputs=_rows(40))
    x = _rows(60, seed=1)
    p["labelled_raw"] = _save(os.path.join(root, "my_labelled"), inputs=x,
                              labels=(x[:, 0] > 0).astype(np.int64))
    for raw, name in ((p["unlabelled_raw"], "mine"), (p["labelled_raw"], "mine_labelled")):
        assert cli.call_program(preprocess, [
            "--dataset", "custom", "--format", "npy", "--raw_data_dir", raw, "--name", name,
            "--data_dir", p["data"], "--num_shards", "1", "--runner=FnApiRunner"]) == 0
    return p


def test_pretrain_only_trains_and_evaluates_on_a_labelled_set(processed, tmp_path, capsys):
    assert cli.call_program(preprocess, ["--dataset", "custom", "--format", "npy", "--name", "mine",
                                         "--raw_data_dir", processed["unlabelled_raw"],
                                         "--data_dir", processed["data"], "--dry_run"]) == 0
    assert "no labels, nothing to probe (pretrain-only)" in capsys.readouterr().out
    workdir = str(tmp_path / "run")
    assert cli.call_program(train, ["--dataset", "mine", "--data_dir", processed["data"],
                                    "--workdir", workdir, "--steps", "2", "--eval_every", "1",
                                    "--export=false", *TINY_FLAGS]) == 0
    out = capsys.readouterr().out
    # Online evaluation is off, said once, and the evaluate hint asks for a labelled set.
    assert out.count("online eval") == 1 and "online eval              off (mine: a " \
        "pretrain-only dataset, it has no labels to probe)" in out, out
    hint = next(line for line in out.splitlines() if line.startswith("evaluate"))
    assert "--transfer_dataset LABELLED" in hint
    with open(os.path.join(workdir, "train_summary.json")) as f:
        assert "pretrain-only" in json.load(f)["online_eval"]["off"]

    assert cli.call_program(evaluate, ["--workdir", workdir]) == 2
    shaped = _error_line(capsys.readouterr().err)
    assert "no labels" in shaped["what"] and "--transfer_dataset" in shaped["todo"]
    # The command the error suggests, with a labelled dataset of the same layout.
    suggested = shaped["todo"].split(": ", 1)[1].replace("LABELLED", "mine_labelled").split()
    assert suggested[:3] == ["python", "-m", "keras_metamae.evaluate"]
    assert cli.call_program(evaluate, suggested[3:] + ["--epochs", "1", "--nobaseline",
                                                       "--probe", "paper"]) == 0
    assert "mine_labelled: accuracy" in capsys.readouterr().out


# === 2. an unlabelled pool beside the labelled splits ===
def test_unlabelled_pool_is_pretrained_on_and_never_probed(tmp_path, capsys):
    raw = str(tmp_path / "raw")
    for split, n in (("train", 24), ("val", 8), ("test", 8)):
        x = _rows(n, seed=n)
        _save(os.path.join(raw, split), inputs=x, labels=(x[:, 0] > 0).astype(np.int64))
    pool = _rows(100, seed=5) + 3.0  # shifted: the statistics must see it
    _save(os.path.join(raw, "unlabeled"), inputs=pool)
    argv = ["--dataset", "custom", "--format", "npy", "--raw_data_dir", raw, "--name", "pooled",
            "--data_dir", str(tmp_path / "out"), "--num_shards", "1", "--runner=FnApiRunner"]
    assert cli.call_program(preprocess, argv + ["--dry_run"]) == 0
    assert ("pretrain on train+unlabeled; probe trains on train, selects on val, reports on test"
            in capsys.readouterr().out)
    assert cli.call_program(preprocess, argv) == 0
    version_dir = str(tmp_path / "out" / "pooled" / PIPELINE_VERSION)
    spec = load_spec(version_dir)
    assert {k: v.num_examples for k, v in spec.splits.items()} == {
        "train": 24, "val": 8, "test": 8, "unlabeled": 100}
    assert spec.protocol_splits("pretrain") == ["train", "unlabeled"]
    assert [spec.protocol_splits(r) for r in ("probe_train", "probe_val", "probe_test")] == [
        ["train"], ["val"], ["test"]]
    from keras_metamae import data
    from keras_metamae.training.run import pretraining_splits

    assert pretraining_splits(spec, version_dir, 8)[2] == 124
    labels = [int(b["label"].numpy()) for b in data.make_dataset(
        spec, version_dir, "unlabeled", 1, shuffle=False, repeat=False).unbatch()]
    assert labels == [UNLABELED] * 100
    # Normalization statistics over what pretraining reads: train and the pool.
    pretrain_inputs = np.concatenate([_rows(24, seed=24), pool])
    np.testing.assert_allclose(np.ravel(spec.normalization["mean"]),
                               np.ravel(pretrain_inputs.mean(axis=0)), rtol=1e-4, atol=1e-4)


def test_image_folder_pool_beside_the_class_folders(tmp_path):
    folder = str(tmp_path / "images")
    for i, rel in enumerate(["cat/a.png", "dog/b.png", "unlabeled/c.png", "unlabeled/d.png"]):
        _write(os.path.join(folder, rel), media.image_bytes(media.image_array(16, 16, i), "PNG"))
    reader = registry.get_reader("custom_image_folder", data_dir=folder, image_size=16, patch_size=4)
    spec = reader.spec_template()
    assert spec.label_names == ["cat", "dog"] and spec.protocol_splits("pretrain") == ["train", "unlabeled"]
    pool = [ex for ex in reader.read_all() if ex.split == "unlabeled"]
    assert [ex.label for ex in pool] == [UNLABELED] * 2


# === 4. checked before anything is written ===
def _bad_npy(kind: str, folder: str) -> str:
    x = _rows(20)
    if kind == "float_labels":
        return _save(folder, inputs=x, labels=np.linspace(0, 3, 20))
    if kind == "short_labels":
        return _save(folder, inputs=x, labels=np.zeros(15, np.int64))
    if kind == "complex":
        return _save(folder, inputs=x + 1j, labels=np.zeros(20, np.int64))
    if kind == "strings":
        return _save(folder, inputs=x.astype(str), labels=np.zeros(20, np.int64))
    if kind == "objects":
        return _save(folder, inputs=np.array([[1, "a"]] * 20, dtype=object))
    if kind == "nan":
        x[[2, 5, 11]] = np.nan
        return _save(folder, inputs=x)
    if kind == "shapes":
        _save(os.path.join(folder, "train"), inputs=x)
        return _save(os.path.join(folder, "test"), inputs=_rows(5, features=7)) and folder
    _save(os.path.join(folder, "train"), inputs=x, labels=np.zeros(20, np.int64))  # half labelled
    _save(os.path.join(folder, "test"), inputs=_rows(5))
    return folder


BAD_INPUTS = {  # kind -> (the file the error names, words of its line)
    "float_labels": ("labels.npy[1]", "not a whole number"),
    "short_labels": ("labels.npy", "15 labels for the 20 rows"),
    "complex": ("inputs.npy", "complex values"),
    "strings": ("inputs.npy", "<U"),
    "objects": ("inputs.npy", "Python objects"),
    "nan": ("inputs.npy, first at row 2", "3 of 20 rows hold NaN or inf"),
    "shapes": ("test/inputs.npy", "examples of shape [7]"),
    "half_labelled": ("test/inputs.npy", "no labels.npy"),
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_inputs_are_one_line_before_anything_is_written(kind, tmp_path, capsys):
    raw = _bad_npy(kind, str(tmp_path / "raw"))
    out = str(tmp_path / "out")
    argv = ["--dataset", "custom", "--format", "npy", "--raw_data_dir", raw, "--data_dir", out,
            "--name", "bad", "--runner=FnApiRunner"]
    assert cli.call_program(preprocess, argv) == 2
    shaped = _error_line(capsys.readouterr().err)
    where, words = BAD_INPUTS[kind]
    assert shaped["where"].endswith(where) and words in shaped["what"], shaped.group(0)
    assert not os.path.exists(out)
    # What the error suggests works.
    fixes = {"float_labels": ["--task", "regression"],
             "nan": ["--max_bad_fraction", shaped["todo"].rsplit(" ", 1)[-1]]}
    if kind in fixes:
        assert cli.call_program(preprocess, argv + fixes[kind]) == 0
        splits = load_spec(os.path.join(out, "bad", PIPELINE_VERSION)).splits
        assert sum(s.num_examples for s in splits.values()) == (17 if kind == "nan" else 20)


def test_csv_float_labels_name_the_line(tmp_path, capsys):
    _write(str(tmp_path / "t" / "data.csv"), "a,y\n1,0.5\n2,1.7\n")
    assert cli.call_program(preprocess, ["--dataset", "custom", "--format", "csv", "--raw_data_dir",
                                         str(tmp_path / "t"), "--label_column", "y",
                                         "--data_dir", str(tmp_path / "o")]) == 2
    shaped = _error_line(capsys.readouterr().err)
    assert shaped["where"].endswith("data.csv:2") and "--task regression" in shaped["todo"]


def test_workdir_of_another_dataset_names_both(processed, digits_data_dir, tmp_path, capsys):
    workdir = str(tmp_path / "digits_run")
    from keras_metamae import config as config_lib

    config = config_lib.resolve("digits", {})  # digits' preset: another architecture
    config.data_dir, config.workdir = digits_data_dir, workdir
    config.save(workdir)
    capsys.readouterr()
    assert cli.call_program(train, ["--dataset", "mine", "--data_dir", processed["data"],
                                    "--workdir", workdir, "--batch_size", "8"]) == 2
    shaped = _error_line(capsys.readouterr().err)
    assert "'digits'" in shaped["what"] and "'mine'" in shaped["what"], shaped.group(0)


def test_missing_custom_dataset_hint_is_a_working_command(processed, tmp_path, capsys):
    data_dir = str(tmp_path / "processed")
    assert cli.call_program(train, ["--dataset", "yours", "--data_dir", data_dir,
                                    "--workdir", str(tmp_path / "w")]) == 2
    shaped = _error_line(capsys.readouterr().err)
    command = re.search(r"`([^`]+)`", shaped["todo"])[1]
    command = command.replace("npy|csv|text|image_folder|audio_folder", "npy").replace(
        "YOUR_FILES", processed["unlabelled_raw"]).split()
    assert command[:3] == ["python", "-m", "pipeline.preprocess"]
    assert cli.call_program(preprocess, command[3:] + ["--runner=FnApiRunner"]) == 0
    assert "no labels found: pretrain-only" in capsys.readouterr().out
    assert load_spec(os.path.join(data_dir, "yours", PIPELINE_VERSION)).is_pretrain_only


# === 3. tabular data as people have it: numeric and categorical columns ===
def _mixed_csv(folder: str, rows: int = 60) -> str:
    """Columns `size` (numbers), `colour` (3 values, every 4th cell empty), `n` (numbers) and
    `city` (paris, rome); label `y`."""
    rng = np.random.default_rng(0)
    lines = ["size,colour,n,city,y"]
    for i in range(rows):
        colour = ("red", "blue", "green", "")[i % 4]
        lines.append(f"{rng.normal():.3f},{colour},{i % 7},{('paris', 'rome')[i % 2]},{int(colour == 'red')}")
    _write(os.path.join(folder, "data.csv"), "\n".join(lines) + "\n")
    return folder


def _reader_of(folder, **options):
    return registry.get_reader("custom", data_dir=folder, format="csv", label_column="y", **options)


def test_csv_columns_become_continuous_and_discrete_tokens(tmp_path):
    folder = _mixed_csv(str(tmp_path / "t"))
    reader = _reader_of(folder)
    spec = reader.spec_template()
    assert [s["name"] for s in spec.segments] == ["numeric", "categorical"]
    assert spec.extra["columns"] == {"size": "numeric", "colour": "categorical", "n": "numeric",
                                     "city": "categorical"}
    colour, city = spec.extra["categorical"]
    assert colour == {"name": "colour", "values": ["blue", "green", "red"]}  # empty: missing
    assert spec.segments[1]["vocab_size"] == (2 + 3) + (2 + 2)
    from preprocessing import tokenize
    from preprocessing.spec import segment_spec

    view = segment_spec(spec, spec.segments[1])
    ids = tokenize.column_vocab_to_tokens([["red", "paris"], ["", "oslo"], ["blue", "rome"]], view)
    # colour: missing 0, oov 1, blue 2, green 3, red 4; city (offset 5): missing 5, oov 6, ...
    assert ids.numpy().tolist() == [[4, 7], [0, 6], [2, 8]]
    example = next(r for r in reader.read_all() if not isinstance(r, BadRecord))
    assert example.input["numeric"].dtype == np.float32 and example.input["numeric"].shape == (2,)
    assert "numeric -> continuous tokens: size, n" in reader.columns_note()

    forced = _reader_of(folder, categorical_columns="n").spec_template()
    assert forced.extra["columns"]["n"] == "categorical" and forced.segments[0]["num_tokens"] == 1
    only_categories = _reader_of(folder, categorical_columns="size,n").spec_template()
    assert only_categories.tokenizer == "column_vocab" and only_categories.num_tokens == 4


def test_csv_vocabulary_comes_from_the_train_split(tmp_path):
    folder = str(tmp_path / "t")
    _write(os.path.join(folder, "data.csv"), "c,y\n" + "".join(f"v{i},{i % 2}\n" for i in range(40)))
    reader = _reader_of(folder)
    values = reader.spec_template().extra["categorical"][0]["values"]
    line_of = {ex.id: int(ex.id.split("-")[1]) for ex in reader.read_all()}  # line n: v{n - 2}
    train = {f"v{line_of[ex.id] - 2}" for ex in reader.read_all() if reader.split_of(ex, 42) == "train"}
    assert sorted(values) == sorted(train) and 0 < len(train) < 40


@pytest.mark.parametrize("options,where,words", [
    ({"numeric_columns": "colour"}, "data.csv:2", "column 'colour' holds the text 'red'"),
    ({"categorical_columns": "nope"}, "--categorical_columns", "no column 'nope' in the csv"),
    ({"numeric_columns": "n", "categorical_columns": "n"}, "--numeric_columns",
     "column 'n' is named as numeric and as categorical"),
])
def test_csv_column_overrides_that_do_not_fit_are_one_line(options, where, words, tmp_path, capsys):
    folder = _mixed_csv(str(tmp_path / "t"))
    argv = ["--dataset", "custom", "--format", "csv", "--raw_data_dir", folder, "--label_column",
            "y", "--data_dir", str(tmp_path / "o")]
    for key, value in options.items():
        argv += [f"--{key}", value]
    assert cli.call_program(preprocess, argv) == 2
    shaped = _error_line(capsys.readouterr().err)
    assert words in shaped["what"] and where in shaped["where"], shaped.group(0)


def test_mixed_csv_pretrains_evaluates_and_serves_raw_rows(tmp_path, capsys):
    import tensorflow as tf

    from keras_metamae import data
    from preprocessing import tokenize

    folder = _mixed_csv(str(tmp_path / "raw"), rows=80)
    out = str(tmp_path / "processed")
    assert cli.call_program(preprocess, [
        "--dataset", "custom", "--format", "csv", "--raw_data_dir", folder, "--label_column", "y",
        "--name", "table", "--data_dir", out, "--num_shards", "1", "--runner=FnApiRunner"]) == 0
    assert "columns: numeric -> continuous tokens: size, n; categorical" in capsys.readouterr().out
    workdir = str(tmp_path / "run")
    assert cli.call_program(train, ["--dataset", "table", "--data_dir", out, "--workdir", workdir,
                                    "--steps", "2", "--eval_every", "0", *TINY_FLAGS]) == 0
    assert cli.call_program(evaluate, ["--workdir", workdir, "--epochs", "1", "--nobaseline",
                                       "--probe", "paper"]) == 0
    assert "table: accuracy" in capsys.readouterr().out

    # Serving takes the raw cells (numbers and strings) and gives what the stored tokens give.
    version_dir = os.path.join(out, "table", PIPELINE_VERSION)
    spec = load_spec(version_dir)
    batch = next(iter(data.make_dataset(spec, version_dir, "test", 4, shuffle=False, repeat=False)))
    with open(os.path.join(folder, "data.csv")) as f:
        lines = f.read().splitlines()
    rows = [lines[int(i.decode().split("-")[1]) - 1].split(",") for i in batch["id"].numpy()]
    served = tf.saved_model.load(os.path.join(workdir, "export", "encoder", "1"))
    raw = served.signatures["serving_default"](
        numeric=tf.constant([[float(r[0]), float(r[2])] for r in rows], tf.float32),
        categorical=tf.constant([[r[1], r[3]] for r in rows]))
    parts = tokenize.unpack_segments(batch["tokens"], spec)
    stored = served.signatures["embed_tokens"](tokens=parts["numeric"],
                                               category_tokens=parts["categorical"])
    np.testing.assert_allclose(raw["embedding"].numpy(), stored["embedding"].numpy(), atol=1e-5)


def _csv_with_empty_numbers(folder: str, rows: int = 40, categorical: bool = True) -> list[str]:
    """Columns `size` (numbers, every 5th cell empty), `colour` (red, blue; left out when not
    `categorical`) and `n` (numbers, complete); label `y`. Returns the `size` cells by line
    number - 2 (the first data line is line 2)."""
    rng = np.random.default_rng(1)
    sizes = ["" if i % 5 == 0 else f"{rng.normal() + 3:.3f}" for i in range(rows)]
    colour = ("colour,", lambda i: f"{('red', 'blue')[i % 2]},") if categorical else ("", lambda i: "")
    lines = [f"size,{colour[0]}n,y"] + [f"{sizes[i]},{colour[1](i)}{i % 7},{i % 2}" for i in range(rows)]
    _write(os.path.join(folder, "data.csv"), "\n".join(lines) + "\n")
    return sizes


def _line(example_id: str) -> int:
    return int(example_id.split("-")[1])


def test_csv_empty_numeric_cells_are_the_train_mean_and_a_missing_token(tmp_path):
    from preprocessing import tokenize

    folder = str(tmp_path / "t")
    sizes = _csv_with_empty_numbers(folder)
    reader = _reader_of(folder)
    spec = reader.spec_template()
    records = list(reader.read_all())
    assert not [r for r in records if isinstance(r, BadRecord)] and len(records) == 40
    size_of = {ex.id: sizes[_line(ex.id) - 2] for ex in records}
    train = [float(size_of[ex.id]) for ex in records
             if size_of[ex.id] and reader.split_of(ex, 42) == "train"]
    assert spec.extra["missing_numeric"] == [{"name": "size", "index": 0, "companion": "size:missing",
                                              "mean": pytest.approx(np.mean(train))}]
    mean = np.float32(spec.extra["missing_numeric"][0]["mean"])
    assert spec.extra["categorical"][-1] == {"name": "size:missing", "values": ["no", "yes"]}
    assert spec.segments[1]["num_tokens"] == 2  # colour, size:missing; `n` is complete
    for ex in records:
        empty = not size_of[ex.id]
        assert ex.input["numeric"][0] == (mean if empty else np.float32(size_of[ex.id]))
        assert ex.input["categorical"][-1] == ("yes" if empty else "no")
    assert "numeric columns with empty cells, kept: size: 8 empty cells -> the train mean" \
        in reader.columns_note()

    # Numbers only: the companions are the categorical segment, and serving has no input for it.
    _csv_with_empty_numbers(str(tmp_path / "n"), categorical=False)
    numbers = _reader_of(str(tmp_path / "n")).spec_template()
    assert [s["num_tokens"] for s in numbers.segments] == [2, 1]
    mean = numbers.extra["missing_numeric"][0]["mean"]
    completed = tokenize.complete_table_rows({"numeric": [[np.nan, 1.0], [2.0, np.nan]]}, numbers)
    np.testing.assert_array_equal(completed["numeric"].numpy(),
                                  np.float32([[mean, 1.0], [2.0, np.nan]]))  # `n` had no gap
    assert completed["categorical"].numpy().tolist() == [[b"yes"], [b"no"]]


def test_csv_empty_numeric_cells_preprocess_and_serve_nan(tmp_path, capsys):
    import tensorflow as tf

    from keras_metamae import data
    from preprocessing import tokenize

    folder = str(tmp_path / "raw")
    sizes = _csv_with_empty_numbers(folder)
    out = str(tmp_path / "processed")
    assert cli.call_program(preprocess, [
        "--dataset", "custom", "--format", "csv", "--raw_data_dir", folder, "--label_column", "y",
        "--name", "gaps", "--data_dir", out, "--num_shards", "1", "--runner=FnApiRunner"]) == 0
    assert "numeric columns with empty cells, kept: size" in capsys.readouterr().out
    version_dir = os.path.join(out, "gaps", PIPELINE_VERSION)
    spec = load_spec(version_dir)
    assert sum(s.num_examples for s in spec.splits.values()) == 40  # no bad records
    workdir = str(tmp_path / "run")
    assert cli.call_program(train, ["--dataset", "gaps", "--data_dir", out, "--workdir", workdir,
                                    "--steps", "1", "--eval_every", "0", *TINY_FLAGS]) == 0

    rows = spec.splits["train"].num_examples  # all of them: some have an empty `size`
    batch = next(iter(data.make_dataset(spec, version_dir, "train", rows, shuffle=False, repeat=False)))
    lines = [_line(i.decode()) for i in batch["id"].numpy()]
    empty = np.array([not sizes[line - 2] for line in lines])
    parts = tokenize.unpack_segments(batch["tokens"], spec)
    assert empty.any() and np.abs(parts["numeric"].numpy()[empty, 0, 0]).max() < 1e-4  # the mean
    # colour: ids 0..3; size:missing: missing 4, oov 5, no 6, yes 7.
    assert parts["categorical"].numpy()[:, 1].tolist() == np.where(empty, 7, 6).tolist()

    # Serving takes NaN for the empty cell and gives what the stored tokens give.
    served = tf.saved_model.load(os.path.join(workdir, "export", "encoder", "1"))
    raw = served.signatures["serving_default"](
        numeric=tf.constant([[float(sizes[line - 2] or "nan"), (line - 2) % 7] for line in lines],
                            tf.float32),
        categorical=tf.constant([[("red", "blue")[(line - 2) % 2]] for line in lines]))
    stored = served.signatures["embed_tokens"](tokens=parts["numeric"],
                                               category_tokens=parts["categorical"])
    assert raw["valid"].numpy().all()
    np.testing.assert_allclose(raw["embedding"].numpy(), stored["embedding"].numpy(), atol=1e-5)
