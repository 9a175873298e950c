"""The package's Python API (the README example, run as written) and its installation:
console scripts and declared dependencies."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO


def readme_api_example() -> str:
    text = open(os.path.join(REPO, "README.md")).read()
    block = re.search(r"<!-- api-example:start -->\n```python\n(.*?)```", text, re.S)
    assert block, "README.md lost its API example"
    return block.group(1)


def test_readme_api_example_runs(digits_data_dir, tmp_path, monkeypatch):
    os.makedirs(tmp_path / "data")
    os.symlink(digits_data_dir, tmp_path / "data" / "processed")
    monkeypatch.chdir(tmp_path)
    printed = subprocess.run([sys.executable, "-c", readme_api_example()], capture_output=True,
                             text=True, timeout=600, env=dict(os.environ, PYTHONPATH=REPO))
    assert printed.returncode == 0, printed.stderr[-3000:]
    assert printed.stdout.strip().splitlines()[-1] == "(64, 64)"  # digits preset: batch 64, d 64


def test_import_is_light_and_names_resolve():
    probe = ("import sys, keras_metamae as km; assert 'tensorflow' not in sys.modules; "
             "print(sorted(km.__all__)); km.load_spec")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "model_from_spec" in result.stdout and "embed" in result.stdout
    import keras_metamae

    with pytest.raises(AttributeError):
        keras_metamae.no_such_name  # noqa: B018


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    # Built from a copy: setuptools writes build/ and *.egg-info beside setup.py.
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("keras_metamae", "pipeline", "preprocessing", "commandline"):
        shutil.copytree(os.path.join(REPO, name), source / name, ignore=ignore)
    for name in ("setup.py", "requirements.txt"):
        shutil.copy(os.path.join(REPO, name), source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(source)], check=True, timeout=300,
                   cwd=str(source))
    (path,) = [os.path.join(out, f) for f in os.listdir(out) if f.endswith(".whl")]
    return path


def test_wheel_declares_dependencies_and_console_scripts(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith("METADATA"))).decode()
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    requires = re.findall(r"^Requires-Dist: (\S+)", metadata, re.M)
    assert any(r.startswith("tensorflow") for r in requires)
    assert any(r.startswith("apache-beam") for r in requires) and "pytest" not in " ".join(requires)
    for script in ("metamae-preprocess", "metamae-train", "metamae-evaluate", "metamae-export",
                   "metamae-reproduce", "metamae-compare"):
        assert f"{script} = keras_metamae.console:" in entry_points
    assert any(n.startswith("commandline/") for n in names)
    assert any(n.startswith("pipeline/") for n in names) and any(
        n.startswith("preprocessing/datasets/") for n in names)


def test_installed_console_script_runs(wheel, tmp_path):
    """Installs the wheel (no dependencies: they are this venv's) into a fresh prefix outside
    the repository and runs a console script from there."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), wheel], check=True, timeout=300)
    script = target / "bin" / "metamae-reproduce"
    assert script.exists()
    result = subprocess.run([sys.executable, str(script), "--plan"], capture_output=True,
                            text=True, timeout=300, cwd=str(tmp_path),
                            env=dict(os.environ, PYTHONPATH=str(target)))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--domain eurosat" in result.stdout
