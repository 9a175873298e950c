"""Parallel, bounded-memory reading of big line-oriented raw files (CSV, JSON Lines).

A `LineRange` is one Beam read source: `lines_per_range` consecutive lines of one file. For a
plain file the driver scans it once for newline positions and stores the byte offset where each
range starts, so a worker seeks straight there. A gzip file cannot be seeked: the stream must be
decompressed from its start. So a process that decompresses one keeps checkpoints of the
decompressor every CHECKPOINT_EVERY decompressed bytes (a copy of zlib's state, ~40 KB), and a
range starts from the nearest checkpoint before it: each process decompresses a file about once
whatever the number of ranges and the order they come in (the driver's own scan leaves its
checkpoints to an in-process runner). Lines are read in blocks found in C (`iter_text_blocks`,
for parsers that take many lines at once) or one at a time (`iter_lines`); memory stays at one
block, and every line keeps its true 1-based line number for error messages
(`BadRecord.path = "<file>:<line>"`).

Not a dataset module: the leading underscore keeps the registry from importing it as one.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import io
import os
import threading
import zlib
from typing import IO, Iterator

_SCAN_CHUNK = 1 << 24  # bytes read per step while counting lines
_READ_CHUNK = 1 << 20  # bytes read per step while reading a range (compressed, for gzip)
# Decompressed bytes between two checkpoints of a gzip stream, and files whose checkpoints a
# process keeps (HIGGS.csv.gz: ~230 checkpoints, ~10 MB).
CHECKPOINT_EVERY = 32 << 20
_CHECKPOINTED_FILES = 4
# `LineRange.num_lines` of a range that runs to the end of its file.
OPEN_ENDED = 1 << 62


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


class _GzipStream:
    """Decompressed chunks of a (possibly multi-member) gzip file, from its start or from a
    checkpoint: `(compressed offset, zlib decompressor)` taken by `checkpoint()`."""

    def __init__(self, path: str, checkpoint: tuple[int, "zlib._Decompress"] | None = None):
        self._file = open(path, "rb")
        offset, decompressor = checkpoint or (0, None)
        self._file.seek(offset)
        self.offset = offset
        self._zlib = decompressor.copy() if decompressor else zlib.decompressobj(16 + zlib.MAX_WBITS)

    def read(self) -> bytes:
        """The next decompressed bytes; b"" at the end of the file."""
        while True:
            raw = self._file.read(_READ_CHUNK)
            if not raw:
                if not self._zlib.eof and self.offset:
                    raise EOFError(f"{self._file.name}: compressed file ended before the "
                                   f"end-of-stream marker was reached")
                return b""
            self.offset += len(raw)
            out = self._zlib.decompress(raw)
            while self._zlib.eof and self._zlib.unused_data.strip(b"\0"):  # the next member
                rest = self._zlib.unused_data
                self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
                out += self._zlib.decompress(rest)
            if out:
                return out

    def checkpoint(self) -> tuple[int, "zlib._Decompress"]:
        return self.offset, self._zlib.copy()

    def close(self) -> None:
        self._file.close()


# {(path, size, mtime): {line number: (compressed offset, decompressor, the bytes of that line
# already decompressed)}} of the gzip files this process read.
_checkpoints: collections.OrderedDict = collections.OrderedDict()
_checkpoints_lock = threading.Lock()


def _file_key(path: str) -> tuple[str, int, int]:
    stat = os.stat(path)
    return os.path.abspath(path), stat.st_size, stat.st_mtime_ns


def _remember(key, number: int, stream: _GzipStream, carry: bytes) -> None:
    """Notes that line `number` starts with `carry` at `stream`'s current position."""
    with _checkpoints_lock:
        points = _checkpoints.setdefault(key, {})
        _checkpoints.move_to_end(key)
        if number not in points:
            points[number] = (*stream.checkpoint(), carry)
        while len(_checkpoints) > _CHECKPOINTED_FILES:
            _checkpoints.popitem(last=False)


def _nearest(key, line: int) -> tuple[int, tuple | None, bytes]:
    """(line number, checkpoint, carry) to start reading at, for line `line`."""
    with _checkpoints_lock:
        points = _checkpoints.get(key, {})
        before = [n for n in points if n <= line]
        if not before:
            return 1, None, b""
        number = max(before)
        offset, decompressor, carry = points[number]
        return number, (offset, decompressor), carry


class _Chunks:
    """The file's bytes in chunks from line `line`'s neighbourhood: `number` is the line that
    starts with `carry`; a gzip stream leaves checkpoints as it goes (see the module docstring)."""

    def __init__(self, path: str, line: int, byte_offset: int | None):
        self._gzip = is_gzip(path)
        self._since_checkpoint = 0
        if self._gzip:
            self._key = _file_key(path)
            self.number, checkpoint, self.carry = _nearest(self._key, line)
            self._stream = _GzipStream(path, checkpoint)
        else:
            self._stream = open(path, "rb", buffering=0)
            self.number, self.carry = 1, b""
            if byte_offset is not None:
                self._stream.seek(byte_offset)
                self.number = line

    def read(self) -> bytes:
        return self._stream.read() if self._gzip else self._stream.read(_READ_CHUNK)

    def consumed(self, number: int, carry: bytes, size: int) -> None:
        """The caller has split `size` more bytes: line `number` starts with `carry` (a gzip
        stream takes a checkpoint there every CHECKPOINT_EVERY bytes)."""
        self._since_checkpoint += size
        if self._gzip and self._since_checkpoint >= CHECKPOINT_EVERY:
            _remember(self._key, number, self._stream, carry)
            self._since_checkpoint = 0

    def close(self) -> None:
        self._stream.close()


def _line_starts(path: str, every: int) -> tuple[list[int], int]:
    """Byte offsets of lines 1, 1+every, 1+2*every, ... and the total number of lines."""
    import numpy as np

    chunks = _Chunks(path, 1, None)
    starts, lines, position, last_byte = [0], 0, 0, b"\n"
    try:
        while True:
            chunk = chunks.read()
            if not chunk:
                break
            newlines = chunk.count(b"\n")
            # The k-th newline of this chunk ends line `lines + k`: a range starts after it when
            # that is a multiple of `every`.
            first = every - lines % every
            if newlines >= first:
                ends = np.flatnonzero(np.frombuffer(chunk, np.uint8) == ord("\n"))
                starts += [position + int(ends[k]) + 1 for k in range(first - 1, newlines, every)]
            lines += newlines
            position += len(chunk)
            last_byte = chunk[-1:]
            if newlines:
                tail = chunk[chunk.rindex(b"\n") + 1:]
                chunks.consumed(lines + 1, tail, len(chunk))
    finally:
        chunks.close()
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


def plan_balanced_line_ranges(path: str, min_lines: int, max_gzip_ranges: int,
                              grain: int = 10_000) -> list[LineRange]:
    """Ranges of at least `min_lines` lines (so a small file still spreads over a few workers);
    a gzip file gets at most `max_gzip_ranges` of them, because each range's worker
    decompresses everything before it (more ranges: more work in total). One pass over the
    file, recording where every `grain`-th line starts; consecutive grains are then joined."""
    ranges = plan_line_ranges(path, grain)
    per_range = -(-min_lines // grain)
    if is_gzip(path):
        per_range = max(per_range, -(-len(ranges) // max_gzip_ranges))
    return [LineRange(path, group[0].first_line, sum(r.num_lines for r in group), group[0].byte_offset)
            for group in (ranges[i:i + per_range] for i in range(0, len(ranges), per_range))]


def plan_gzip_line_ranges(path: str, min_lines: int, max_ranges: int,
                          sample_bytes: int = 8 << 20) -> list[LineRange]:
    """Ranges of a gzip file without decompressing all of it (the planning pass would cost as
    much as the workers' own decompression): the line count is estimated from the first
    `sample_bytes` decompressed bytes and the file's size, and the last range is open-ended,
    so every line is read however far off the estimate is (a high estimate only leaves the
    last ranges empty; the workers' checkpoints make an empty range cheap). A file whose whole
    content fits in the sample gets exact ranges."""
    stream = _GzipStream(path)
    try:
        sample = b""
        while len(sample) < sample_bytes:
            chunk = stream.read()
            if not chunk:
                return plan_balanced_line_ranges(path, min_lines, max_ranges)
            sample += chunk
        compressed = stream.offset
    finally:
        stream.close()
    estimate = os.path.getsize(path) / compressed * sample.count(b"\n")
    count = max(1, min(max_ranges, int(estimate // min_lines)))
    per_range = max(1, -(-int(estimate) // count))
    ranges = [LineRange(path, 1 + i * per_range, per_range, None) for i in range(count - 1)]
    return ranges + [LineRange(path, 1 + (count - 1) * per_range, OPEN_ENDED, None)]


def iter_text_blocks(source: LineRange, max_lines: int) -> Iterator[tuple[int, bytes, int]]:
    """Yields `(number of its first line, text, number of lines)` blocks of at most `max_lines`
    consecutive lines of `source`, in file order. `text` is the block's lines joined by b"\\n"
    (no newline after the last one): one bytes object per block, for parsers that take many
    lines at once, instead of one per line."""
    import numpy as np

    chunks = _Chunks(source.path, source.first_line, source.byte_offset)
    try:
        number, carry = chunks.number, chunks.carry  # line `number` starts with `carry`
        while number < source.first_line:  # skip to the range: count newlines, chunk by chunk
            chunk = chunks.read()
            if not chunk:
                return
            newlines = chunk.count(b"\n")
            if number + newlines < source.first_line:
                number += newlines
                if newlines:
                    carry = chunk[chunk.rindex(b"\n") + 1:]
                    chunks.consumed(number, carry, len(chunk))
                else:
                    carry += chunk
                continue
            ends = np.flatnonzero(np.frombuffer(chunk, np.uint8) == ord("\n"))
            carry = chunk[ends[source.first_line - number - 1] + 1:]
            number = source.first_line
        remaining = source.num_lines
        while remaining > 0:
            chunk = chunks.read()
            text = carry + chunk
            # Where each complete line ends (its newline), found in C.
            ends = np.flatnonzero(np.frombuffer(text, np.uint8) == ord("\n")).tolist()
            carry = text[ends[-1] + 1:] if ends else text
            if not chunk and carry:  # end of file: a last line without a newline still counts
                ends.append(len(text))
                carry = b""
            if len(ends) <= remaining:
                chunks.consumed(number + len(ends), carry, len(chunk))
            count = min(len(ends), remaining)
            start = 0
            for i in range(0, count, max_lines):
                end = ends[min(i + max_lines, count) - 1]
                yield number + i, text[start:end], min(max_lines, count - i)
                start = end + 1
            number += count
            remaining -= count
            if not chunk:
                return
    finally:
        chunks.close()


def iter_line_blocks(source: LineRange, max_lines: int) -> Iterator[tuple[int, list[bytes]]]:
    """Yields `(number of its first line, lines)` blocks of at most `max_lines` consecutive
    lines of `source`, each line as bytes without its newline, in file order."""
    for first, text, _ in iter_text_blocks(source, max_lines):
        yield first, text.split(b"\n")


def iter_lines(source: LineRange) -> Iterator[tuple[int, str]]:
    """Yields `(line_number, line_without_newline)` for the lines of `source`."""
    for first, lines in iter_line_blocks(source, 4096):
        for i, raw in enumerate(lines):
            yield first + i, raw.decode("utf-8", errors="replace").rstrip("\r\n")


def read_first_line(path: str) -> str:
    """The first line of a plain or gzip text file (e.g. a CSV header), without its newline."""
    with open_text(path) as f:
        return f.readline().rstrip("\r\n")
