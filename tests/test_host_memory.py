"""keras_metamae/training/host_memory.py: glibc keeps freed memory, and `--keep_freed_memory` reaches it."""

import os
import subprocess
import sys

import pytest

from keras_metamae.training import host_memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Two 20 MB blocks malloc'ed, written and freed, four times. With glibc's defaults the freed
# 40 MB at the top of the heap is trimmed every time, so every round faults its pages in again.
_ROUNDS = """
import ctypes, resource, sys
sys.path.insert(0, {repo!r})
from keras_metamae.training import host_memory
applied = host_memory.keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 20 << 20

def page_faults_of_one_round():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [libc.malloc(SIZE) for _ in range(2)]
    for block in blocks:
        ctypes.memset(block, 1, SIZE)
    for block in blocks:
        libc.free(block)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

print(applied, *[page_faults_of_one_round() for _ in range(4)])
"""


def _faults(mode: str) -> tuple[str, list[int]]:
    out = subprocess.run([sys.executable, "-c",
                          _ROUNDS.format(repo=REPO), mode],
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0], [int(n) for n in out[1:]]


@pytest.mark.skipif(host_memory._glibc() is None, reason="glibc's mallopt only")
def test_freed_blocks_are_reused_without_page_faults():
    applied, kept = _faults("keep")
    assert applied == "True"
    pages = 2 * (20 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert kept[0] >= pages // 2  # the first round faults its pages in
    assert max(kept[1:]) < pages // 100  # later rounds reuse them
    # The control: glibc's defaults return the memory, and every round faults again.
    default_applied, default = _faults("default")
    assert default_applied == "None" and min(default[1:]) >= pages // 2


def test_keep_freed_memory_flag(monkeypatch):
    from keras_metamae import config
    from keras_metamae.training.build import apply_host_settings

    calls = []
    monkeypatch.setattr(host_memory, "keep_freed_memory", lambda: calls.append(1) or True)
    assert config.resolve("digits", {}).keep_freed_memory is True
    assert apply_host_settings(config.resolve("digits", {})) is True
    assert not apply_host_settings(config.resolve("digits", {"keep_freed_memory": False}))
    assert calls == [1]
