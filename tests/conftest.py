"""Shared fixtures: the embedded digits dataset preprocessed once per session, tiny configs."""

from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests never reach the internet: a missing raw file is reported, not downloaded. The download
# tests pass `--download auto` with a local mirror.
os.environ["KERAS_METAMAE_DOWNLOAD"] = "never"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

# A model small enough that a training step takes milliseconds on one CPU core.
TINY_MODEL = dict(
    embed_dim=16,
    encoder_depth=1,
    encoder_heads=2,
    encoder_mlp_dim=32,
    decoder_dim=16,
    decoder_depth=1,
    decoder_heads=2,
    decoder_mlp_dim=32,
    projector_hidden_dim=32,
    projector_dim=16,
)


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory) -> str:
    """Root of preprocessed datasets holding `digits/<version>/` (the real Beam job)."""
    from pipeline import preprocess

    root = str(tmp_path_factory.mktemp("processed"))
    preprocess.run(["--dataset", "digits", "--data_dir", root, "--num_shards", "2"])
    return root


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per core, at most 4. Each worker is a TensorFlow process whose ops
    already use every core, and several tests start training subprocesses of their own, so more
    workers than that only add memory and contention."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


class LocalCloudStorage:
    """The `gcs` fixture: a Cloud Storage emulator (and, for TensorFlow, its TLS proxy) on free
    ports of 127.0.0.1 (tests/fixtures/gcs_emulator.py). `env` is os.environ plus what points
    Beam and TensorFlow at it: give it to the subprocesses that use `gs://`; `url(name)` is a
    fresh `gs://` folder."""

    def __init__(self, env: dict, bucket: str):
        self.env, self.bucket = env, bucket
        self._count = 0

    def url(self, name: str) -> str:
        self._count += 1
        return f"gs://{self.bucket}/{name}-{os.getpid()}-{self._count}"


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
    """One emulator per pytest process (each xdist worker has its own session)."""
    import json
    import subprocess

    from tests.fixtures import gcs_emulator

    folder = str(tmp_path_factory.mktemp("gcs"))
    server = subprocess.Popen([sys.executable, "-m", "tests.fixtures.gcs_emulator", folder],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)
    try:
        ready = json.loads(server.stdout.readline() or "null")
        if not ready:
            raise RuntimeError(f"the storage emulator did not start (exit {server.wait()})")
        env = dict(os.environ, PYTHONPATH=REPO, **gcs_emulator.environment(
            ready["emulator_port"], ready["proxy_port"], ready["ca_file"], folder))
        yield LocalCloudStorage(env, gcs_emulator.BUCKET)
    finally:
        server.kill()
        server.wait()
