"""TensorFlow's native start-up lines are hidden; every other line written meanwhile is kept."""

from __future__ import annotations

import os
import subprocess
import sys

from commandline.native_logs import NATIVE_LOG_LINE, native_lines_hidden
from tests.conftest import REPO

STARTUP = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796663183.217430   29985 port.cc:153] oneDNN custom operations are on.\n"
    "E0000 00:00:1796663192.020643   29985 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error\n"
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild\n"
)


def test_native_lines_written_to_the_descriptor_are_dropped_and_others_kept(capfd):
    with native_lines_hidden():
        os.write(2, STARTUP.encode())
        print("a warning of our own", file=sys.stderr)
        os.write(2, b"W0000 00:00:1.5   7 root_dataset.cc:364] Optimization loop failed\n")
    assert capfd.readouterr().err == "a warning of our own\n"


def test_only_log_lines_match():
    assert all(NATIVE_LOG_LINE.match(line) for line in STARTUP.splitlines())
    for kept in ("train 2/2 steps 100% | done", "error: no split 'train' (--dataset)",
                 "I0000 is not a log line without its time and source"):
        assert not NATIVE_LOG_LINE.match(kept)


# A program as the commands are (commandline/cli.py): its main imports TensorFlow and runs an op.
PROGRAM = """
import sys
from commandline import cli

def define_flags(flag_values):
    pass

def main(invocation):
    import tensorflow as tf
    print("sum", int(tf.constant(1) + 1), file=sys.stderr)

cli.run_program(sys.modules[__name__])
"""


def test_a_command_importing_tensorflow_prints_no_native_line_unless_verbose():
    def stderr_of(*flags):
        done = subprocess.run([sys.executable, "-c", PROGRAM, *flags], cwd=REPO, text=True,
                              capture_output=True, timeout=300,
                              env=dict(os.environ, PYTHONPATH=REPO))
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stderr

    quiet = stderr_of()
    assert quiet == "sum 2\n", quiet
    verbose = stderr_of("--verbose")
    assert "sum 2" in verbose
    assert [line for line in verbose.splitlines() if NATIVE_LOG_LINE.match(line)], verbose
