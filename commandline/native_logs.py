"""TensorFlow's native (C++) start-up log lines, kept off the console.

Importing TensorFlow 2.21 writes 5 to 15 lines through absl before `absl::InitializeLog` has
run, so `TF_CPP_MIN_LOG_LEVEL` cannot hide them: the oneDNN notice, "Could not find cuda
drivers", the CPU feature guard, cuDNN/cuFFT factory registrations on GPU machines, and on a
machine without a GPU an E-level "failed call to cuInit" that reads like a failure and is not.
`hide_native_startup_logs` hides those lines (the first import of `tensorflow` and the first
device query run with stderr captured; every other line captured there is printed as it was)
and sets `TF_CPP_MIN_LOG_LEVEL=2` for the rest of the process and its children, unless the
user set it: INFO and WARNING lines stay hidden, ERROR and FATAL ones are shown.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile

# `I0000 00:00:1796663183.217430   29985 port.cc:153] ...`, absl's banner before its
# initialization, and the CPU feature guard's second line.
NATIVE_LOG_LINE = re.compile(
    r"^(?:[IWE]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^\s:]+:\d+\] "
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|To enable the following instructions: )")


_hiding = False


def hide_native_startup_logs() -> None:
    """Hides TensorFlow's native start-up lines from here on (see the module docstring);
    nothing to do once TensorFlow is imported."""
    global _hiding
    _hiding = True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return
    if not any(isinstance(finder, _QuietTensorFlowImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


@contextlib.contextmanager
def native_lines_hidden():
    """Captures what is written to file descriptor 2 (also by C++ code) in the block; then
    prints every captured line except TensorFlow's native log lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(True)
                    if not NATIVE_LOG_LINE.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def loading_tensorflow_library():
    """Around code that loads a TensorFlow extension without `import tensorflow` (the Beam
    job's TFRecord writer): its start-up lines hidden too, once `hide_native_startup_logs`
    was called."""
    return native_lines_hidden() if _hiding else contextlib.nullcontext()


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` once, as the path finder would, with a loader that executes it (and
    queries the GPUs, where the cuInit line is written) inside `native_lines_hidden`."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        # The module is TensorFlow's own from here on (resources, reloads).
        module.__loader__ = module.__spec__.loader = self.loader
        with native_lines_hidden():
            self.loader.exec_module(module)
            # Lists devices only: logical devices and strategies can still be configured.
            module.config.list_physical_devices("GPU")

    def __getattr__(self, name):  # anything else a loader answers: TensorFlow's loader
        return getattr(self.loader, name)
