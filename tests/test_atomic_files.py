"""Files written atomically honour the umask (a shared data folder stays readable)."""

from __future__ import annotations

import os
import stat

import pytest

from preprocessing.atomic_files import write_text_atomically


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_mode_follows_the_umask_and_no_temp_file_is_left(tmp_path, umask_022):
    path = str(tmp_path / "spec.json")
    write_text_atomically(path, "{}\n")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # mkstemp alone gives 0600
    assert open(path).read() == "{}\n"
    write_text_atomically(path, "[]\n", fsync=True)
    assert open(path).read() == "[]\n" and os.listdir(tmp_path) == ["spec.json"]


def test_config_spec_and_eval_json_are_group_readable(tmp_path, umask_022):
    from keras_metamae import config as config_lib
    from keras_metamae.evaluation.run import write_json
    from preprocessing.spec import DatasetSpec

    paths = [config_lib.TrainConfig().save(str(tmp_path / "w"))]
    paths.append(str(tmp_path / "w" / "eval" / "digits.json"))
    write_json(paths[-1], {"value": 1.0})
    spec = DatasetSpec(name="toy", modality="tabular", input_shape=[4], tokenizer="tabular",
                       patch_shape=[1], num_tokens=4, token_grid=[4], token_dim=1)
    paths.append(spec.save(str(tmp_path)))
    for path in paths:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, path


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = str(tmp_path / "config.json")
    write_text_atomically(path, "old")

    with pytest.raises(TypeError):
        write_text_atomically(path, 123)  # type: ignore[arg-type]
    assert open(path).read() == "old" and os.listdir(tmp_path) == ["config.json"]
