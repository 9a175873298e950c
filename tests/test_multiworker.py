"""Multi-worker training on a loopback cluster: two `python -m keras_metamae.train` processes on
127.0.0.1 (free ports), a tiny model. Every process runs in its own process group, killed in a
finalizer whatever happens to the test."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from keras_metamae.training import multiworker
from tests.conftest import REPO, TINY_MODEL

TIMEOUT_S = 150  # per launch; a 2-step run takes about 50 s on 2 shared cores


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def train_command(data_dir, workdir, hosts, index, *extra):
    argv = [sys.executable, "-m", "keras_metamae.train", "--data_dir", data_dir,
            "--workdir", workdir, "--worker_hosts", ",".join(hosts), "--worker_index", str(index),
            "--batch_size", "16", "--log_every", "1", "--checkpoint_every", "1",
            "--validation_steps", "1", "--export=false", "--warmup_steps", "1",
            # Keras' per-step lines (compared across workers below); no online evaluation.
            "--progress", "keras", "--eval_every", "0"]
    for key, value in TINY_MODEL.items():
        argv += [f"--{key}", str(value)]
    return argv + list(extra)


@pytest.fixture
def launch(tmp_path, request):
    """Starts a process in a new session and logs to files; kills its group at teardown."""
    started = []

    def start(argv, name, tf_config=None):
        out = open(tmp_path / f"{name}.out", "w+")
        err = open(tmp_path / f"{name}.err", "w+")
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0", PYTHONUNBUFFERED="1")
        env.pop("TF_CONFIG", None)
        if tf_config:
            env["TF_CONFIG"] = tf_config
        proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=err, env=env,
                                start_new_session=True)
        proc.out_path, proc.err_path = out.name, err.name
        started.append((proc, out, err))
        return proc

    def kill_all():
        for proc, out, err in started:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
            out.close()
            err.close()

    request.addfinalizer(kill_all)
    return start


def read(path) -> str:
    with open(path) as f:
        return f.read()


def wait_all(procs, timeout_s=TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    for proc in procs:
        assert proc.returncode == 0, read(proc.err_path)[-3000:]


def wait_for_text(proc, path, text, timeout_s=TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in read(path):
            return
        assert proc.poll() is None, f"exited {proc.returncode} before {text!r}:\n" + read(
            proc.err_path)[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"no {text!r} in {path} within {timeout_s} s")


def test_two_workers_train_resume_and_a_killed_peer_is_reported(digits_data_dir, tmp_path,
                                                                   launch):
    workdir = str(tmp_path / "run")
    hosts = [f"127.0.0.1:{p}" for p in free_ports(2)]
    # 1. Two steps of a global batch of 16 split 8 + 8 across the workers.
    procs = [launch(train_command(digits_data_dir, workdir, hosts, i, "--steps", "2",
                                  "--export=true"), f"a{i}") for i in range(2)]
    wait_all(procs)
    outputs = [read(p.out_path) for p in procs]
    assert all("steps        0 -> 2" in out for out in outputs), outputs
    # Both workers took the same steps: the same logged losses.
    # (Keras' progress line: "1/1 - <time> - <time>/step - contrastive_accuracy: ... - loss: ...")
    loss_lines = [[line.split("/step - ", 1)[1] for line in out.splitlines()
                   if "loss" in line and "/step - " in line] for out in outputs]
    assert loss_lines[0] and loss_lines[0] == loss_lines[1]
    # Only the chief wrote the workdir; the other worker's scratch folder is gone.
    assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json", "dataset_spec.json",
                                           "export", "tensorboard", "train_summary.json"]
    assert os.listdir(os.path.join(workdir, "export", "encoder")) == ["1"]
    # The workers end together (the other waits for the chief's export): no crashed-peer report.
    assert "unhealthy" not in read(procs[0].err_path)
    assert json.load(open(os.path.join(workdir, "checkpoints", "latest.json")))["step"] == 2
    assert len(os.listdir(os.path.join(workdir, "tensorboard", "train"))) >= 1

    # 2. A rerun resumes both workers from the chief's checkpoint. SIGTERM to worker 1 (a
    # preempted machine) stops both workers after the same step; the chief writes it.
    hosts = [f"127.0.0.1:{p}" for p in free_ports(2)]
    procs = [launch(train_command(digits_data_dir, workdir, hosts, i, "--steps", "100000",
                                  "--checkpoint_every", "1000"), f"b{i}") for i in range(2)]
    for proc in procs:
        wait_for_text(proc, proc.out_path, "Resumed from step 2 of 100000")
    wait_for_text(procs[1], procs[1].out_path, "Epoch 4/")  # steps 3 and 4 are done
    assert os.path.isdir(os.path.join(workdir, ".scratch-worker-1"))
    procs[1].send_signal(signal.SIGTERM)
    wait_all_with(procs, 143)
    lines = [[line for line in read(p.err_path).splitlines() if line.startswith("interrupted:")]
             for p in procs]
    step = json.load(open(os.path.join(workdir, "checkpoints", "latest.json")))["step"]
    assert step >= 4
    assert lines[0] == [f"interrupted: a signal to another worker stopped training at step "
                        f"{step} of 100000; checkpoint written ({workdir}/checkpoints); resume "
                        f"with the same command: python -m keras_metamae.train "
                        f"{' '.join(procs[0].args[3:])}"], read(procs[0].err_path)[-3000:]
    assert len(lines[1]) == 1 and lines[1][0].startswith(
        f"interrupted: SIGTERM stopped training at step {step} of 100000"), lines[1]
    assert not os.path.exists(os.path.join(workdir, ".scratch-worker-1"))

    # 3. Resumed from that step, a chief that dies (SIGKILL) is reported by worker 1, which
    # exits with a clear error instead of hanging and removes its scratch folder.
    hosts = [f"127.0.0.1:{p}" for p in free_ports(2)]
    procs = [launch(train_command(digits_data_dir, workdir, hosts, i, "--steps", "100000"),
                    f"c{i}") for i in range(2)]
    for proc in procs:
        wait_for_text(proc, proc.out_path, f"Resumed from step {step} of 100000")
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait(timeout=30)
    procs[1].wait(timeout=90)
    err = read(procs[1].err_path)
    assert procs[1].returncode == 1, err[-3000:]
    assert "error: multi-worker training stopped: another worker failed" in err
    assert not os.path.exists(os.path.join(workdir, ".scratch-worker-1"))


def wait_all_with(procs, status, timeout_s=TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    for proc in procs:
        assert proc.returncode == status, read(proc.err_path)[-3000:]


def test_a_peer_that_never_connects_is_reported(digits_data_dir, tmp_path, launch):
    hosts = [f"127.0.0.1:{p}" for p in free_ports(2)]
    # Worker 1 never starts: worker 0 gives up after --worker_timeout_s, with a one-line error.
    proc = launch(train_command(digits_data_dir, str(tmp_path / "a"), hosts, 0, "--steps", "2",
                                "--worker_timeout_s", "5"), "alone")
    proc.wait(timeout=90)
    err = read(proc.err_path)
    assert proc.returncode == 2, err[-3000:]
    assert f"error: workers {hosts[1]} did not connect within --worker_timeout_s=5 s" in err
    assert not os.path.exists(tmp_path / "a")  # nothing written


# One second-order train_step on a fixed global batch of 8 (masks fixed by the batch's noise),
# float64, plain SGD(1.0): writes the weight update (= -gradient) of every trainable variable.
STEP_SCRIPT = """
import json, os, sys
import numpy as np
from keras_metamae.training import multiworker
tiny, out = json.loads(sys.argv[1]), sys.argv[2]
# The strategy before any other TensorFlow call, as the trainer does.
strategy = multiworker.start_strategy(120) if os.environ.get("TF_CONFIG") else None
import keras, tensorflow as tf
from keras_metamae.methods.metamae import MetaMAE
strategy = strategy or tf.distribute.get_strategy()
rng = np.random.default_rng(0)
batch = {"tokens": rng.normal(size=(8, 16, 4)), "mask_noise": rng.uniform(size=(8, 16)),
         "nearby_noise": rng.uniform(size=(8, 16))}
keras.utils.set_random_seed(0)
with strategy.scope():
    model = MetaMAE(num_tokens=16, token_grid=[4, 4], token_dim=4, mask_ratio=0.5,
                    nearby_ratio=0.5, inner_lr=0.5, contrast_weight=0.5, seed=0,
                    dtype="float64", **tiny)
    model.build()
    model.compile(optimizer=keras.optimizers.SGD(1.0))
    model.optimizer.build(model.trainable_variables)
before = [v.numpy() for v in model.trainable_variables]

def worker_share(context):  # worker i gets rows [i * 8 / n, (i + 1) * 8 / n)
    n, i = context.num_input_pipelines, context.input_pipeline_id
    return tf.data.Dataset.from_tensors({k: v[i * 8 // n:(i + 1) * 8 // n]
                                         for k, v in batch.items()})

@tf.function
def step(data):
    return strategy.run(model.train_step, args=(data,))

step(next(iter(strategy.distribute_datasets_from_function(worker_share))))
np.savez(out, *[v.numpy() - b for v, b in zip(model.trainable_variables, before)])
"""


def test_two_worker_second_order_step_equals_one_process(tmp_path, launch):
    """The global-batch update of 2 workers (4 + 4 rows; synchronized BatchNorm, keys of the
    contrastive loss gathered across workers, outer loss / replicas) equals that of one process
    on all 8 rows, to float64 precision."""
    tiny = json.dumps(TINY_MODEL)
    alone = launch([sys.executable, "-c", STEP_SCRIPT, tiny, str(tmp_path / "alone.npz")],
                   "alone")
    hosts = [f"127.0.0.1:{p}" for p in free_ports(2)]
    workers = [launch([sys.executable, "-c", STEP_SCRIPT, tiny, str(tmp_path / f"w{i}.npz")],
                      f"w{i}", tf_config=json.dumps({"cluster": {"worker": hosts},
                                                     "task": {"type": "worker", "index": i}}))
               for i in range(2)]
    wait_all([alone, *workers])
    expected = np.load(tmp_path / "alone.npz")
    assert len(expected.files) > 10
    assert sum(np.abs(expected[name]).sum() for name in expected.files) > 0
    for i in range(2):
        got = np.load(tmp_path / f"w{i}.npz")
        assert got.files == expected.files
        for name in expected.files:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-9, atol=1e-12,
                                       err_msg=f"worker {i}, variable {name}")


@pytest.mark.parametrize("flags, message", [
    (dict(worker_hosts="a:1,b:2", worker_index=2, num_workers=None), "--worker_index: got 2"),
    (dict(worker_hosts="a:1,b:2", worker_index=0, num_workers=3), "--num_workers=3"),
    (dict(worker_hosts="a,b:2", worker_index=0, num_workers=None), "'a' is not host:port"),
    (dict(worker_hosts=None, worker_index=1, num_workers=2), "--worker_hosts: give every"),
])
def test_worker_flags_are_checked(flags, message):
    with pytest.raises(multiworker.WorkerFlagError, match=message.replace("[", r"\[")):
        multiworker.tf_config_from_flags(**flags)


def test_worker_flags_build_tf_config():
    config = json.loads(multiworker.tf_config_from_flags("h0:1000,h1:1001", 1, 2))
    assert config == {"cluster": {"worker": ["h0:1000", "h1:1001"]},
                      "task": {"type": "worker", "index": 1}}
    assert multiworker.tf_config_from_flags(None, None, None) is None
    assert multiworker.is_chief("worker", 0, config["cluster"])
    assert not multiworker.is_chief("worker", 1, config["cluster"])
    assert not multiworker.is_chief("worker", 0, {"chief": ["c:1"], "worker": ["w:1"]})
