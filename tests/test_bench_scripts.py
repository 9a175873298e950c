"""The step benchmark scripts: what they say when something is missing, and a CPU smoke run."""

import os
import stat
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")


def _run(script, *args, timeout=600):
    return subprocess.run([sys.executable, os.path.join(REPO, "bench", script), *args],
                          capture_output=True, text=True, cwd=REPO, env=ENV, timeout=timeout)


def _fake_python(tmp_path, found):
    """An executable that answers the script's import probe like a Python with `found`."""
    path = tmp_path / "python"
    path.write_text("#!/bin/sh\necho '" + found + "'\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_compare_reference_without_anything_names_every_missing_piece(tmp_path):
    result = _run("compare_reference.py", "--torch_python", str(tmp_path / "no-python"),
                  "--output", str(tmp_path / "B.md"))
    assert result.returncode == 2
    assert "--reference_dir" in result.stderr
    assert str(tmp_path / "no-python") in result.stderr and "does not exist" in result.stderr
    assert not (tmp_path / "B.md").exists()


def test_compare_reference_names_models_py_and_timm_when_missing(tmp_path):
    python = _fake_python(tmp_path, '{"torch": true, "timm": false}')
    result = _run("compare_reference.py", "--torch_python", python, "--reference_dir",
                  str(tmp_path), "--output", str(tmp_path / "B.md"))
    assert result.returncode == 2
    assert "models.py" in result.stderr
    assert f"timm in {python}" in result.stderr
    assert "torch in" not in result.stderr  # torch was found


def test_compare_reference_is_ready_when_nothing_is_missing(tmp_path):
    sys.path.insert(0, REPO)
    from bench import compare_reference

    (tmp_path / "models.py").write_text("")
    python = _fake_python(tmp_path, '{"torch": true, "timm": true}')
    assert compare_reference.missing_requirements(str(tmp_path), python) == []


def test_gpu_bench_without_a_gpu_exits_2_and_says_so(tmp_path):
    result = _run("gpu_bench.py", "--output", str(tmp_path / "B.md"), timeout=300)
    assert result.returncode == 2
    assert "no GPU" in result.stderr and "--allow_cpu --tiny" in result.stderr
    assert not (tmp_path / "B.md").exists()


def test_gpu_bench_tiny_cpu_smoke_run_writes_its_table(tmp_path):
    out = tmp_path / "B.md"
    result = _run("gpu_bench.py", "--allow_cpu", "--tiny", "--steps", "2", "--configs",
                  "eurosat", "--kinds", "mae,meta2", "--precisions", "float32", "--xla", "off",
                  "--output", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    assert "<!-- gpu_bench:start -->" in text and "Tiny smoke-test config" in text
    assert "examples/s" in text and "tf.data reader alone" in text
    rows = [line for line in text.splitlines() if line.startswith("| eurosat")]
    assert len(rows) == 2 and not any("skipped" in row for row in rows)


# A stand-in for a PyTorch environment and the reference's models.py: just enough of their
# interface (written here, not taken from either) to run the comparison's protocol end to end.
_FAKE_TORCH = '''
__version__ = "0.0-fake"
_threads = [1]
def set_num_threads(n): _threads[0] = n
def get_num_threads(): return _threads[0]
def manual_seed(seed): pass
def randn(*shape): return shape
class _AdamW:
    def __init__(self, params, lr, weight_decay): self.params = list(params)
    def zero_grad(self, set_to_none=True): pass
    def step(self): pass
class optim:
    AdamW = _AdamW
'''
_FAKE_MODELS = '''
class _Loss:
    def backward(self): pass
class _Attention:
    fused_attn = True
class MAE:
    def __init__(self, **kwargs):
        self.kwargs, self.attention = kwargs, _Attention()
    def modules(self): return [self, self.attention]
    def train(self): pass
    def parameters(self): return []
    def __call__(self, batch): return {"loss": _Loss()}
class MetaMAE(MAE):
    pass
'''


def test_compare_reference_runs_both_sides_in_turns_and_writes_its_table(tmp_path):
    fake = tmp_path / "fake_env"
    fake.mkdir()
    (fake / "torch.py").write_text(_FAKE_TORCH)
    (fake / "timm.py").write_text('__version__ = "0.0-fake"\n')
    reference = tmp_path / "reference"
    reference.mkdir()
    (reference / "models.py").write_text(_FAKE_MODELS)
    python = tmp_path / "torch_python"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={fake} exec {sys.executable} \"$@\"\n")
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "B.md"
    out.write_text("# Benchmarks\n")
    result = _run("compare_reference.py", "--torch_python", str(python), "--reference_dir",
                  str(reference), "--kinds", "mae", "--rounds", "1", "--warmup", "1",
                  "--output", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    assert "<!-- compare_reference:start -->" in text
    assert "torch 0.0-fake" in text and "timm 0.0-fake" in text and "load average" in text
    row = next(line for line in text.splitlines() if line.startswith("| MAE |"))
    gflop = float(row.split("|")[5])  # our step's static FLOP count, from the traced graph
    assert 30 < gflop < 60  # the EuroSAT MAE step: ~43 GFLOP


def test_ts_reader_reads_a_uea_file_and_refuses_what_it_cannot(tmp_path):
    """bench/compare_real_data.py reads UCR/UEA `.ts` files (BasicMotions in the aeon wheel):
    a small multivariate file in that format, header comments and all."""
    sys.path.insert(0, REPO)
    from bench.compare_real_data import parse_ts

    text = ("#A comment line of the archive\n@problemName Tiny\n@timeStamps false\n"
            "@missing false\n@univariate false\n@dimensions 2\n@equalLength true\n"
            "@seriesLength 3\n@classLabel true Walking Running\n@data\n"
            "1.0,2.0,3.0:4.0,5.0,6.0:Walking\n"
            "0.5,0.25,-1:7,8,9:Running\n")
    inputs, labels = parse_ts(text)
    assert inputs.shape == (2, 3, 2) and labels == ["Walking", "Running"]
    np.testing.assert_array_equal(inputs[0], [[1, 4], [2, 5], [3, 6]])
    with pytest.raises(ValueError, match="@equalLength"):
        parse_ts(text.replace("@equalLength true", "@equalLength false"))
    with pytest.raises(ValueError, match="series 2"):
        parse_ts(text.replace("0.5,0.25", "0.5,abc"))
    with pytest.raises(ValueError, match="no @data"):
        parse_ts("@problemName Tiny\n")
