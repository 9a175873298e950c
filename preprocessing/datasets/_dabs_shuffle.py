"""DABS's seeded DataFrame shuffle, in NumPy: the rule behind its EuroSAT and Pfam splits.

DABS shuffles a frame with pandas' `frame.sample(frac=1, random_state=42)` and cuts it with
`head(math.ceil(p * n))` / `tail(math.floor((1 - p) * n))`. pandas draws that sample as
`numpy.random.RandomState(42).choice(n, n, replace=False)` (no weights), which is
`RandomState(42).permutation(n)`: row j of the shuffled frame is record `permutation[j]`. So
the splits follow from a record's index and the record count, with no pandas and no global
shuffle (tests/test_image_tabular_protocol.py checks this against pandas itself).

For every n up to 300,000, `ceil(p * n) + floor((1 - p) * n) == n` with p = 0.9 as Python
computes it, so DABS's head and tail partition the frame.

Not a dataset module: the leading underscore keeps the registry from importing it as one.
"""

from __future__ import annotations

import functools
import math

import numpy as np

DABS_SEED = 42  # DABS's RANDOM_SEED, fixed: not `--seed`, so the sets are the reference's


@functools.lru_cache(maxsize=4)
def shuffled_positions(count: int, seed: int = DABS_SEED) -> np.ndarray:
    """position[i]: the row that record i lands on in `sample(frac=1, random_state=seed)` of
    a `count`-row frame (read-only)."""
    order = np.random.RandomState(seed).permutation(count)
    position = np.empty(count, dtype=np.int64)
    position[order] = np.arange(count, dtype=np.int64)
    position.flags.writeable = False
    return position


def head_rows(proportion: float, count: int) -> int:
    """How many rows DABS's `head(math.ceil(proportion * count))` keeps (the float product as
    DABS computes it); the tail is the other `count - head_rows(...)`."""
    return math.ceil(proportion * count)
