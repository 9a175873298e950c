"""`gs://` end to end against a local Cloud Storage emulator (the `gcs` fixture): Beam's
FileSystems and TensorFlow's gfile reach it, the digits pipeline runs on it, and an interrupted
publish leaves nothing a reader would take."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


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
