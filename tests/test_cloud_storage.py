"""`gs://` end to end against a local Cloud Storage emulator (the `gcs` fixture): Beam's
FileSystems and TensorFlow's gfile reach it, the digits pipeline runs on it, and an interrupted
publish leaves nothing a reader would take."""

from __future__ import annotations

import subprocess
import sys

from keras_metamae.data import records as data_records
from preprocessing.spec import load_spec
from tests.conftest import REPO, TINY_MODEL


def _python(gcs, code: str, *args: str, timeout: int = 120) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=gcs.env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_beam_writes_what_tensorflow_reads_through_the_emulator(gcs):
    folder = gcs.url("interop")
    _python(gcs, """
import sys
from apache_beam.io.filesystems import FileSystems
with FileSystems.create(sys.argv[1] + "/beam.txt") as f:
    f.write(b"from beam")
""", folder)
    out = _python(gcs, """
import sys
import tensorflow as tf
folder = sys.argv[1]
tf.io.gfile.makedirs(folder + "/empty_dir")  # a zero-length `dir/` object
with tf.io.gfile.GFile(folder + "/tf.txt", "w") as f:
    f.write("from tf")
print(tf.io.gfile.GFile(folder + "/beam.txt").read(), sorted(tf.io.gfile.listdir(folder)))
""", folder)
    assert out.split("\n")[0] == "from beam ['beam.txt', 'empty_dir/', 'tf.txt']"


TINY_FLAGS = [f"--{k}={v}" for k, v in dict(
    TINY_MODEL, batch_size=16, checkpoint_every=2, validation_steps=1, warmup_steps=1).items()]


def _command(gcs, module: str, *args: str, timeout: int = 240) -> str:
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=gcs.env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{module} {args}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def test_digits_end_to_end_on_gcs_with_a_resume(gcs):
    """preprocess -> train -> train resumed -> evaluate -> export over what a killed export
    left -> the exported SavedModel loaded from gs:// in a fresh process; nothing temporary
    left behind."""
    root = gcs.url("digits")
    data_dir, workdir = f"{root}/processed", f"{root}/run"
    out = _command(gcs, "pipeline.preprocess", "--dataset", "digits", "--data_dir", data_dir,
                   "--num_shards", "2")
    assert f"to {data_dir}/digits/" in out
    train = ["keras_metamae.train", "--dataset", "digits", "--data_dir", data_dir,
             "--workdir", workdir, *TINY_FLAGS]
    _command(gcs, *train, "--steps=2", "--noexport")
    # Online evaluation at steps 2 and 4: its projector files go to the bucket too.
    out = _command(gcs, *train, "--steps=4", "--eval_every=2", "--online_eval_examples=64")
    assert f"Resumed from step 2 of 4 ({workdir}/checkpoints)" in out
    assert f"encoder      {workdir}/export/encoder/1" in out
    out = _command(gcs, "keras_metamae.evaluate", "--workdir", workdir, "--epochs=1",
                   "--probe=paper", "--nobaseline")
    assert "digits: accuracy = " in out
    listing = _python(gcs, """
import json, sys
import numpy as np
import tensorflow as tf
from commandline import cli
from keras_metamae import export as export_command
workdir = sys.argv[1]
# What an export killed while moving its files leaves: a version without export_info.json.
base = workdir + "/export/encoder"
for name in ("2/variables/variables.index", ".tmp-0123/saved_model.pb"):
    with tf.io.gfile.GFile(f"{base}/{name}", "w") as f:
        f.write("partial")
assert cli.call_program(export_command, ["--workdir", workdir, "--step", "2"]) == 0
assert json.loads(tf.io.gfile.GFile(base + "/2/export_info.json").read()) == {"step": 2}
assert sorted(tf.io.gfile.listdir(base)) == ["1/", "2/"], tf.io.gfile.listdir(base)
export = workdir + "/export/encoder/1"
spec = json.loads(tf.io.gfile.GFile(export + "/spec.json").read())
loaded = tf.saved_model.load(export)
raw = np.random.default_rng(0).uniform(0, 16, [2, *spec["input_shape"]]).astype("float32")
out = loaded.signatures["serving_default"](inputs=tf.constant(raw))
assert all(np.isfinite(v.numpy()).all() for v in out.values()), out
print(json.loads(tf.io.gfile.GFile(export + "/export_info.json").read())["step"])
root = sys.argv[2]
for folder, _, names in tf.io.gfile.walk(root):
    for name in names:
        print(folder.rstrip("/")[len(root):] + "/" + name)
""", workdir, root).split("\n")
    assert listing[0] == f"Exported the encoder at step 2 to {workdir}/export/encoder/2"
    assert listing[2] == "4"  # version 1: train's export of its last step
    objects = [name for name in listing[3:] if name]
    assert "/run/checkpoints/ckpt-000000004.weights.h5" in objects
    assert "/run/eval/digits.json" in objects
    assert "/run/tensorboard/online_eval/projector_config.pbtxt" in objects
    assert "/run/tensorboard/online_eval/queries.sprite.png" in objects
    assert "/processed/digits/3/spec.json" in objects
    assert not [name for name in objects if ".tmp-" in name or ".write-check-" in name], objects


# Runs the job with a kill (SIGKILL: no clean-up runs) right after the first object is moved
# into the version folder, i.e. in the middle of publishing it.
_KILLED_IN_PUBLISH = """
import os, signal, sys
from commandline import filesystem
from pipeline import preprocess

move = filesystem.rename

def move_then_die(source, destination):
    move(source, destination)
    if "/digits/3/" in destination:
        os.kill(os.getpid(), signal.SIGKILL)

filesystem.rename = move_then_die
preprocess.run(["--dataset", "digits", "--data_dir", sys.argv[1], "--num_shards", "2"])
"""

_READ_THEN_RERUN = """
import json, sys
import tensorflow as tf
from keras_metamae import data
from keras_metamae.data.errors import DataError
from pipeline import preprocess

data_dir = sys.argv[1]
print("builds:", [n for n in tf.io.gfile.listdir(data_dir + "/digits") if n.startswith(".tmp-")])
print("version:", sorted(tf.io.gfile.listdir(data_dir + "/digits/3")))
try:
    print("reader took", data.find_dataset_dir(data_dir, "digits"))
except DataError as e:
    print("reader refused:", e)
result = preprocess.run(["--dataset", "digits", "--data_dir", data_dir, "--num_shards", "2"])
print("hash", result.spec.content_hash)
print("after:", sorted(tf.io.gfile.listdir(data_dir + "/digits")))
"""


def test_a_publish_killed_midway_on_gcs_leaves_no_version_and_a_rerun_completes(
        gcs, digits_data_dir):
    data_dir = gcs.url("killed")
    _command(gcs, "pipeline.preprocess", "--dataset", "digits", "--data_dir", data_dir,
                     "--num_shards", "2")
    killed = subprocess.run([sys.executable, "-c", _KILLED_IN_PUBLISH, data_dir], cwd=REPO,
                            env=gcs.env, capture_output=True, text=True, timeout=240)
    assert killed.returncode == -9, killed.stderr[-3000:]
    done = subprocess.run([sys.executable, "-c", _READ_THEN_RERUN, data_dir], cwd=REPO,
                          env=gcs.env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    # The old version's spec.json went first, one shard had arrived, the build was left.
    assert lines[0].startswith("builds: ['.tmp-") and lines[1] == "version: ['test/']", lines
    assert lines[2].startswith("reader refused: no preprocessed version of 'digits' in "), lines
    assert "removed unfinished build" in done.stderr and "publishing was interrupted" in done.stderr
    # The rerun publishes the same bytes as the local job.
    local = load_spec(data_records.find_dataset_dir(digits_data_dir, "digits"))
    assert lines[-2:] == [f"hash {local.content_hash}", "after: ['3/']"], lines


def test_a_bucket_that_cannot_be_written_is_one_error_line(gcs):
    done = subprocess.run([sys.executable, "-m", "pipeline.preprocess", "--dataset", "digits",
                           "--data_dir", "gs://no-such-bucket/processed"], cwd=REPO,
                          env=gcs.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(
        "error: cannot write in gs://no-such-bucket/processed: "), done.stderr[-3000:]
    assert "(--data_dir gs://no-such-bucket/processed): pass a bucket" in errors[0]


def test_a_raw_folder_on_gcs_is_copied_once_then_read(gcs, tmp_path):
    """`--raw_data_dir gs://...`: the dry run says what it would copy; the job copies the raw
    files into --raw_cache_dir and reads them there; a rerun copies nothing again."""
    import numpy as np

    local = tmp_path / "arrays"
    local.mkdir()
    rng = np.random.default_rng(0)
    np.save(local / "inputs.npy", rng.normal(size=(40, 8)).astype(np.float32))
    np.save(local / "labels.npy", rng.integers(0, 2, 40))
    raw = gcs.url("raw") + "/arrays"
    _python(gcs, """
import sys
import tensorflow as tf
for name in ("inputs.npy", "labels.npy"):
    tf.io.gfile.copy(f"{sys.argv[1]}/{name}", f"{sys.argv[2]}/{name}")
""", str(local), raw)
    cache, out = tmp_path / "cache", tmp_path / "processed"
    job = ["pipeline.preprocess", "--dataset", "custom", "--format", "npy", "--raw_data_dir",
           raw, "--raw_cache_dir", str(cache), "--name", "arrays", "--data_dir", str(out),
           "--num_shards", "1", "--runner=FnApiRunner"]
    mirror = cache / "gs" / raw[len("gs://"):]
    dry = _command(gcs, *job, "--dry_run")
    assert f"raw input    {mirror} (would be copied from {raw}: 2 files" in dry, dry
    assert not cache.exists()
    first = _command(gcs, *job)
    assert f"raw files: 2 copied" in first and f"from {raw} to {mirror}" in first, first
    assert sorted(p.name for p in mirror.iterdir()) == ["inputs.npy", "labels.npy"]
    spec = load_spec(str(out / "arrays" / "3"))
    assert sum(s.num_examples for s in spec.splits.values()) == 40
    again = _command(gcs, *job)
    assert "raw files: 0 copied (0.0 MB)" in again and "(all there already)" in again, again
