"""The Beam job on a real distributed engine: a dask.distributed scheduler and 2 worker processes
on 127.0.0.1 (pipeline/runners.py, DESIGN.md "one final leaf"). The shards and content_hash must
equal the local FnApiRunner's; a cluster that cannot import the project is a one-line error.

Every process a test starts is in its own process group and killed in a finalizer, also when the
test fails; every wait is bounded.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import apache_beam as beam
import numpy as np
import pytest

from commandline import cli
from pipeline import preprocess, runners
from preprocessing import registry
from preprocessing.spec import load_spec

distributed = pytest.importorskip("distributed")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASK = os.path.join(os.path.dirname(sys.executable), "dask")
START_TIMEOUT_S = 90
JOB_TIMEOUT_S = 240


# === the graph itself (no cluster) ===
def _graph_shape(dataset: str, data_dir: str | None, tmp_path, **options):
    """(final leaves, transforms with side inputs, transforms with several outputs) of the job's
    graph, built without running it."""
    from apache_beam.pipeline import PipelineVisitor

    reader = registry.get_reader(dataset, data_dir=data_dir, **options)
    spec = reader.spec_template()
    p = beam.Pipeline(runner=runners.make_pipeline([]).runner)
    preprocess.build_graph(p, reader, spec, reader.list_sources(), str(tmp_path), 42, 2)

    class Shape(PipelineVisitor):
        def __init__(self):
            self.produced, self.consumed = {}, set()
            self.side_inputs, self.multi_output = [], []

        def visit_transform(self, node):
            for pcoll in node.outputs.values():
                self.produced[pcoll] = node.full_label
            self.consumed.update(node.inputs)
            self.consumed.update(si.pvalue for si in node.side_inputs)
            if node.side_inputs:
                self.side_inputs.append(node.full_label)
            if len(node.outputs) > 1:
                self.multi_output.append(node.full_label)

    shape = Shape()
    p.visit(shape)
    leaves = sorted({label for pcoll, label in shape.produced.items() if pcoll not in shape.consumed})
    return leaves, shape.side_inputs, shape.multi_output


@pytest.mark.parametrize("dataset", ["digits", "custom"])
def test_graph_has_one_final_leaf_and_nothing_only_the_local_runner_keeps_apart(
        dataset, tmp_path):
    """Beam's DaskRunner computes only the last leaf, merges a multi-output ParDo's outputs into
    one collection, and recomputes a side input's upstream graph inside every task reading it."""
    data_dir, options = None, {}
    if dataset == "custom":
        data_dir = _write_custom_npy(tmp_path / "raw")
        options = {"format": "npy", "patch_shape": "2,2"}
    leaves, side_inputs, multi_output = _graph_shape(dataset, data_dir, tmp_path / "build", **options)
    assert len(leaves) == 1, leaves
    assert leaves[0].startswith("WriteManifest/"), leaves
    assert side_inputs == [], side_inputs
    assert multi_output == [], multi_output


def test_dask_runner_is_accepted_by_its_short_name():
    assert runners.is_dask(["--runner", "DaskRunner"])
    assert runners.is_dask([f"--runner={runners.DASK_RUNNER_CLASS}"])
    assert not runners.is_dask([])
    pipeline = runners.make_pipeline(["--runner", "DaskRunner"])
    assert type(pipeline.runner).__name__ == "DaskRunner"
    # One source per Dask partition (= task) unless the user partitions.
    assert runners.with_dask_defaults(["--runner=DaskRunner"], 8)[-1] == "--dask_npartitions=8"
    assert runners.with_dask_defaults(["--dask_partition_size=3"], 8) == ["--dask_partition_size=3"]


# === a loopback cluster ===
def _start(cmd: list[str], log_path: str, env: dict[str, str], cwd: str) -> subprocess.Popen:
    log = open(log_path, "wb")
    try:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)
    finally:
        log.close()  # the child holds its own descriptor


def _kill_all(processes: list[subprocess.Popen]) -> None:
    for proc in processes:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for proc in processes:
        try:
            proc.wait(timeout=3)  # a Dask worker may linger trying to reconnect: no need to wait
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)


def _logs(folder) -> str:
    return "\n".join(f"--- {path}\n{open(path, errors='replace').read()[-3000:]}"
                     for path in sorted(glob.glob(os.path.join(folder, "*.log"))))


def start_cluster(request, folder, worker_pythonpaths: list[str | None]) -> str:
    """A scheduler (which can import the project) and one worker per entry of
    `worker_pythonpaths` (None: a worker that cannot, started outside the repository), all on
    127.0.0.1; returns the scheduler address. Torn down by a finalizer of `request`."""
    os.makedirs(folder, exist_ok=True)
    processes: list[subprocess.Popen] = []
    request.addfinalizer(lambda: _kill_all(processes))
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    base.update(TF_CPP_MIN_LOG_LEVEL="2", KERAS_METAMAE_DOWNLOAD="never")
    scheduler_file = os.path.join(folder, "scheduler.json")
    processes.append(_start([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0",
                             "--no-dashboard", "--scheduler-file", scheduler_file],
                            os.path.join(folder, "scheduler.log"), dict(base, PYTHONPATH=REPO), REPO))
    deadline = time.monotonic() + START_TIMEOUT_S
    while not os.path.exists(scheduler_file):
        assert processes[0].poll() is None, _logs(folder)
        assert time.monotonic() < deadline, "the scheduler did not start\n" + _logs(folder)
        time.sleep(0.2)
    time.sleep(0.2)  # the file is written in one go, but let it land
    address = json.load(open(scheduler_file))["address"]
    for i, pythonpath in enumerate(worker_pythonpaths):
        env = dict(base, PYTHONPATH=pythonpath) if pythonpath else base
        processes.append(_start([DASK, "worker", address, "--nthreads", "1", "--no-nanny",
                                 "--no-dashboard", "--name", f"w{i}",
                                 "--local-directory", os.path.join(folder, f"w{i}")],
                                os.path.join(folder, f"worker{i}.log"), env,
                                REPO if pythonpath else folder))
    with distributed.Client(address, timeout=START_TIMEOUT_S, set_as_default=False) as client:
        try:
            client.wait_for_workers(len(worker_pythonpaths), timeout=START_TIMEOUT_S)
        except TimeoutError:
            pytest.fail("the Dask workers did not join\n" + _logs(folder))
    return address


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory) -> str:
    return start_cluster(request, str(tmp_path_factory.mktemp("dask")), [REPO, REPO])


def _write_custom_npy(folder) -> str:
    """Fixed train/val/test splits (3 sources), float 4x4x1 examples, one NaN row (a bad record)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 150), ("val", 40), ("test", 40)):
        os.makedirs(os.path.join(folder, split), exist_ok=True)
        inputs = rng.normal(3.0, 2.0, size=(n, 4, 4, 1)).astype(np.float32)
        if split == "train":
            inputs[7, 0, 0, 0] = np.nan
        np.save(os.path.join(folder, split, "inputs.npy"), inputs)
        np.save(os.path.join(folder, split, "labels.npy"), rng.integers(0, 3, size=n))
    return str(folder)


def _run_cli(argv: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_METAMAE_DOWNLOAD="never")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.preprocess", *argv], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the job did not finish within {JOB_TIMEOUT_S} s:\n{out[-2000:]}\n{err[-4000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _files(version_dir: str) -> dict[str, bytes]:
    return {os.path.relpath(path, version_dir): open(path, "rb").read()
            for path in sorted(glob.glob(os.path.join(version_dir, "*", "*.tfrecord")))}


@pytest.mark.parametrize("dataset", ["digits", "custom"])
def test_dask_cluster_writes_the_same_shards_as_the_local_runner(dataset, cluster, tmp_path):
    argv = ["--dataset", dataset, "--num_shards", "2"]
    if dataset == "custom":
        argv += ["--format", "npy", "--patch_shape", "2,2", "--raw_data_dir",
                 _write_custom_npy(tmp_path / "raw"), "--max_bad_fraction", "0.05"]
    local = preprocess.run(argv + ["--data_dir", str(tmp_path / "local")])

    dask_out = str(tmp_path / "dask")
    done = _run_cli(argv + ["--data_dir", dask_out, "--", "--runner", "DaskRunner",
                            "--dask_client_address", cluster])
    assert done.returncode == 0, done.stderr[-4000:]
    spec = load_spec(local.version_dir.replace(str(tmp_path / "local"), dask_out))

    assert spec.content_hash == local.spec.content_hash
    assert spec.normalization == local.spec.normalization  # merged in source order: same floats
    assert {k: v.num_examples for k, v in spec.splits.items()} == \
        {k: v.num_examples for k, v in local.spec.splits.items()}
    local_files = _files(local.version_dir)
    assert len(local_files) == 2 * len(local.spec.splits)
    assert _files(os.path.join(dask_out, spec.name, spec.pipeline_version)) == local_files
    if dataset == "custom":  # the bad record went to the report, not into a shard list
        assert [b["path"].rsplit(os.sep, 2)[-2:] for b in local.bad_records] == [["train", "inputs.npy[7]"]]
        assert "skipped 1 bad records" in done.stdout


def test_workers_that_cannot_import_the_project_are_a_one_line_error(request, tmp_path, capsys):
    address = start_cluster(request, str(tmp_path / "dask"), [None])
    out = tmp_path / "out"
    code = cli.call_program(preprocess, ["--dataset", "digits", "--data_dir", str(out), "--",
                                         "--runner", "DaskRunner", "--dask_client_address", address])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.count("\n") == 0 and err.startswith("error: Dask worker "), err
    assert "No module named 'pipeline'" in err and "PYTHONPATH" in err, err
    assert f"--dask_client_address {address}" in err, err
    assert not out.exists()  # checked before anything is written
