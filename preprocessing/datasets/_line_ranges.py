"""Parallel, bounded-memory reading of big line-oriented raw files (CSV, JSON Lines).

A `LineRange` is one Beam read source: `lines_per_range` consecutive lines of one file. For a
plain file the driver scans it once for newline positions and stores the byte offset where each
range starts, so a worker seeks straight there. A gzip file cannot be seeked, so its worker
decompresses from the start and skips the lines before its range (cheap next to parsing, and
spread over the workers). Either way memory stays at one line at a time, and every line keeps
its true 1-based line number for error messages (`BadRecord.path = "<file>:<line>"`).

Not a dataset module: the leading underscore keeps the registry from importing it as one.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
from typing import IO, Iterator

_SCAN_CHUNK = 1 << 24  # bytes read per step while counting lines


@dataclasses.dataclass(frozen=True)
class LineRange:
    """Lines `[first_line, first_line + num_lines)` (1-based) of `path`."""

    path: str
    first_line: int
    num_lines: int
    byte_offset: int | None  # where first_line starts; None for gzip files (no seeking)


def is_gzip(path: str) -> bool:
    return path.endswith(".gz")


def open_text(path: str) -> IO[str]:
    """Opens a plain or gzip text file for reading, decoding UTF-8 (bad bytes replaced so one
    corrupt byte fails one record, not the whole file)."""
    if is_gzip(path):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace",
                                newline="")
    return open(path, "r", encoding="utf-8", errors="replace", newline="")


def _line_starts(path: str, every: int) -> tuple[list[int], int]:
    """Byte offsets of lines 1, 1+every, 1+2*every, ... and the total number of lines."""
    opener = gzip.open if is_gzip(path) else open
    starts, lines, position, last_byte = [0], 0, 0, b"\n"
    with opener(path, "rb") as f:
        while True:
            chunk = f.read(_SCAN_CHUNK)
            if not chunk:
                break
            search_from = 0
            while True:
                nl = chunk.find(b"\n", search_from)
                if nl < 0:
                    break
                lines += 1
                if lines % every == 0:
                    starts.append(position + nl + 1)
                search_from = nl + 1
            position += len(chunk)
            last_byte = chunk[-1:]
    if last_byte != b"\n":  # a last line without a newline still counts
        lines += 1
    if starts and starts[-1] >= position:  # no line starts at end-of-file
        starts.pop()
    return starts, lines


def plan_line_ranges(path: str, lines_per_range: int) -> list[LineRange]:
    """Splits `path` into ranges of `lines_per_range` lines (one pass over the file)."""
    if lines_per_range < 1:
        raise ValueError(f"lines_per_range={lines_per_range}: expected at least 1")
    starts, total = _line_starts(path, lines_per_range)
    ranges = []
    for i, first in enumerate(range(1, total + 1, lines_per_range)):
        offset = None if is_gzip(path) else starts[i]
        ranges.append(LineRange(path, first, min(lines_per_range, total - first + 1), offset))
    return ranges


def iter_lines(source: LineRange) -> Iterator[tuple[int, str]]:
    """Yields `(line_number, line_without_newline)` for the lines of `source`."""
    opener = gzip.open if is_gzip(source.path) else open
    with opener(source.path, "rb") as f:
        number = 1
        if source.byte_offset is not None:
            f.seek(source.byte_offset)
            number = source.first_line
        last = source.first_line + source.num_lines
        for raw in f:
            if number >= last:
                return
            if number >= source.first_line:
                yield number, raw.decode("utf-8", errors="replace").rstrip("\r\n")
            number += 1


def read_first_line(path: str) -> str:
    """The first line of a plain or gzip text file (e.g. a CSV header), without its newline."""
    with open_text(path) as f:
        return f.readline().rstrip("\r\n")
