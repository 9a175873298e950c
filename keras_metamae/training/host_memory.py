"""glibc malloc settings for a training or reading process: keep freed memory for reuse.

A training step and the tf.data reader allocate and free the same large host buffers over and
over (activations and their gradients, batches of 64 EuroSAT examples of 106 KB each). With
glibc's defaults, freed memory beyond a few tens of MB goes back to the kernel (`munmap`, heap
trimming), and the next allocation of the same size faults every page in again and has the
kernel zero it. In a profile of the EuroSAT reader (`perf record`), page faults and page
clearing took ~8% of the process's CPU time.

`keep_freed_memory` raises three `mallopt` thresholds so the process keeps what it frees and
reuses it:
- M_MMAP_THRESHOLD: blocks below 32 MB (glibc's largest setting on 64-bit) come from the heap,
  not from their own `mmap`.
- M_TRIM_THRESHOLD: up to 1 GB of free memory at the top of a heap is kept instead of being
  returned.
- M_TOP_PAD: a heap grows 64 MB at a time, not just as much as one allocation needs.

Measured on a 2-core CPU (see BENCHMARKS.md "Reading these numbers"): the EuroSAT reader
~17% more examples per CPU-second, the MetaMAE second-order step ~6% faster, MAE ~4%; the
process's peak RSS ~7% higher. With another allocator preloaded (tcmalloc, jemalloc via
`LD_PRELOAD`) these settings are moot: `mallopt` may then be that allocator's, which can accept
them (True) and ignore them.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt parameters (glibc's <malloc.h>).
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

TRIM_THRESHOLD_BYTES = 1 << 30
TOP_PAD_BYTES = 64 << 20
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc refuses more than HEAP_MAX_SIZE / 2 = 32 MB on 64-bit

SETTINGS = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
            (M_TOP_PAD, TOP_PAD_BYTES))


def _glibc():
    """The process's C library when it is glibc, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None  # musl, or an allocator without glibc's mallopt
    return libc


def keep_freed_memory() -> bool:
    """Applies `SETTINGS` to this process's malloc; True when glibc accepted all of them, False
    on another C library or platform (nothing changed). Process-wide and for the rest of the
    process: glibc then stops adapting its thresholds to the allocations it sees."""
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return all(libc.mallopt(param, value) == 1 for param, value in SETTINGS)


__all__ = ["keep_freed_memory", "SETTINGS"]
