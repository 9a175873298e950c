"""Multi-worker training: who the workers are, starting the strategy, and who writes what.

    # on host A (worker 0, the chief)
    python -m keras_metamae.train --worker_hosts A:2222,B:2222 --worker_index 0 --workdir /shared/run
    # on host B (worker 1)
    python -m keras_metamae.train --worker_hosts A:2222,B:2222 --worker_index 1 --workdir /shared/run

`--worker_hosts`/`--worker_index` only build the `TF_CONFIG` that TensorFlow reads; setting
`TF_CONFIG` yourself works the same. Three things TensorFlow leaves to the program:

* The strategy must exist before anything lists devices or runs an op ("Collective ops must be
  configured at program startup"), so `start_strategy` runs first in the process.
* A peer that never connects leaves the others waiting forever inside TensorFlow, and its
  coordination agent takes over SIGTERM (it only logs it, as a preemption notice).
  `start_strategy` first waits, bounded by `--worker_timeout_s`, until every peer's address
  answers (a one-line error otherwise), and gives SIGTERM back its default action (terminate).
* Only the chief may write the run's files. The other workers write to a scratch folder of
  their own, as the TensorFlow multi-worker guide prescribes, removed when they end.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import socket
import sys
import threading
import time

from commandline import filesystem

# Exit code of a user-caused startup failure (a peer that never connected), as other errors.
EXIT_USAGE = 2


class WorkerFlagError(ValueError):
    """`--worker_hosts`/`--worker_index`/`--num_workers` that do not describe a cluster."""


def tf_config_from_flags(worker_hosts: str | None, worker_index: int | None,
                         num_workers: int | None) -> str | None:
    """The `TF_CONFIG` JSON the worker flags describe; None when none of them is given."""
    if worker_hosts is None and worker_index is None and num_workers is None:
        return None
    if not worker_hosts:
        raise WorkerFlagError("--worker_hosts: give every worker's host:port, comma-separated "
                              "and in the same order on every worker (or set TF_CONFIG)")
    hosts = [h.strip() for h in worker_hosts.split(",") if h.strip()]
    for host in hosts:
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise WorkerFlagError(f"--worker_hosts: {host!r} is not host:port")
    if len(set(hosts)) != len(hosts):
        raise WorkerFlagError(f"--worker_hosts: {worker_hosts!r} names a worker twice")
    if num_workers is not None and num_workers != len(hosts):
        raise WorkerFlagError(f"--num_workers={num_workers} but --worker_hosts names "
                              f"{len(hosts)} workers; make them agree (or drop --num_workers)")
    if worker_index is None or not 0 <= worker_index < len(hosts):
        raise WorkerFlagError(f"--worker_index: got {worker_index}, expected this worker's "
                              f"position in --worker_hosts, 0..{len(hosts) - 1}")
    return json.dumps({"cluster": {"worker": hosts},
                       "task": {"type": "worker", "index": worker_index}})


def cluster_from_tf_config() -> tuple[dict, str, int] | None:
    """`(cluster, task_type, task_index)` from `TF_CONFIG`, or None when it is unset."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        return None
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        return cluster, str(task["type"]), int(task["index"])
    except (ValueError, KeyError, TypeError) as e:
        raise WorkerFlagError(f"TF_CONFIG: not a cluster description ({e}); expected "
                              '{"cluster": {"worker": ["host:port", ...]}, '
                              '"task": {"type": "worker", "index": I}}') from None


def is_chief(task_type: str | None, task_index: int | None, cluster: dict | None) -> bool:
    """TensorFlow's rule: the `chief` task if the cluster has one, else worker 0."""
    if cluster is None:
        return True
    if "chief" in cluster:
        return task_type == "chief"
    return task_type == "worker" and task_index == 0


def wait_for_peers(cluster: dict, task_type: str, task_index: int, timeout_s: float) -> None:
    """Returns once every other task's address accepts a TCP connection; exits the process
    with a one-line error after `timeout_s` otherwise.

    TensorFlow's own wait for the peers has no bound and holds the interpreter lock, so no
    Python watchdog could end it. Each worker therefore listens on its own address first (a
    peer's probe then succeeds whether it finds this listener or, a moment later, TensorFlow's
    server on the same port) and probes the others; it hands its port to TensorFlow only when
    all of them answer.
    """
    own = cluster[task_type][task_index]
    peers = [address for job, addresses in cluster.items() for i, address in enumerate(addresses)
             if (job, i) != (task_type, task_index)]
    host, _, port = own.rpartition(":")
    listener = socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", int(port)))
        listener.listen(16)
    except OSError as e:
        listener.close()
        _exit_with(f"error: cannot listen on {own} (this worker's entry of --worker_hosts / "
                   f"TF_CONFIG): {e.strerror or e}; free the port or pick another")
    deadline = time.monotonic() + timeout_s
    missing = list(peers)
    try:
        while missing:
            missing = [address for address in missing if not _answers(address)]
            if missing and time.monotonic() >= deadline:
                _exit_with(f"error: workers {', '.join(missing)} did not connect within "
                           f"--worker_timeout_s={timeout_s:g} s: start every worker with the "
                           f"same --worker_hosts / TF_CONFIG, check that their ports are "
                           f"reachable, or raise --worker_timeout_s")
            if missing:
                time.sleep(0.5)
    finally:
        listener.close()


def _answers(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2.0):
            return True
    except OSError:
        return False


def _exit_with(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    sys.exit(EXIT_USAGE)


def start_strategy(timeout_s: float):
    """`MultiWorkerMirroredStrategy` for `TF_CONFIG`, once every worker has connected.

    Must run before any other TensorFlow call in the process. Collectives time out after
    `timeout_s` (a peer that is alive but stuck); a dead peer is detected by the coordination
    service's heartbeat within about 10 s and surfaces as a `tf.errors.OpError` from `fit`.
    """
    described = cluster_from_tf_config()
    if described is None:
        raise WorkerFlagError("--strategy multiworker: no cluster; give --worker_hosts and "
                              "--worker_index, or set TF_CONFIG")
    cluster, task_type, task_index = described
    wait_for_peers(cluster, task_type, task_index, timeout_s)

    import tensorflow as tf

    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout_s)
    # Backstop for a peer that dies between answering and joining: no Python thread can run
    # while TensorFlow waits, but faulthandler's C timer can end the process.
    faulthandler.dump_traceback_later(timeout_s + 60, exit=True)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        # A first collective: returns only once every worker is up.
        strategy.gather(strategy.run(lambda: tf.constant([0], tf.int32)), axis=0)
    finally:
        faulthandler.cancel_dump_traceback_later()
    # The coordination agent installed a SIGTERM handler that only logs the signal (a
    # preemption notice); give SIGTERM its default action back so it stops the process.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return strategy


def agreed_step(strategy, step: int) -> int:
    """`step` if every worker restored the same one; a ValueError naming them otherwise (a
    workdir that is not on storage every worker sees)."""
    import tensorflow as tf

    steps = strategy.gather(strategy.run(lambda: tf.constant([step], tf.int64)), axis=0)
    steps = [int(s) for s in steps.numpy()]
    if len(set(steps)) > 1:
        raise ValueError(f"--workdir: the workers resumed from different steps {steps}; every "
                         f"worker must see the chief's checkpoints (put --workdir on storage "
                         f"they all share)")
    return step


# The scratch folder this process writes to, removed when it ends (also on errors).
_scratch_in_use: str | None = None


def make_scratch_dir(workdir: str, task_type: str, task_index: int) -> str:
    """Creates the folder where a non-chief worker writes what the chief writes into
    `workdir`, and remembers it for `remove_scratch_dir`."""
    global _scratch_in_use
    path = os.path.join(workdir, f".scratch-{task_type}-{task_index}")
    filesystem.makedirs(path)
    _scratch_in_use = path
    return path


def remove_scratch_dir() -> None:
    """Removes this process's scratch folder, if it made one."""
    global _scratch_in_use
    if _scratch_in_use:
        filesystem.rmtree(_scratch_in_use)
        _scratch_in_use = None
