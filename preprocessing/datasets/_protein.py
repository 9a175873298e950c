"""Shared by the protein readers (`pfam.py`, `tape.py`): amino-acid encoding and streaming of
TAPE's raw record files.

Encoding (DABS): vocabulary `XARNDCQEGHILKMFPSTWYVUOBZJ` (26 ids, `X` = 0 doubles as padding);
a sequence is truncated or right-padded with `X` to 128 residues.

Record files, one per split, in any of these layouts (detected from the file, not its name):
- a JSON array of objects, as in TAPE's raw JSON release (`data_raw/<task>.tar.gz`); streamed
  object by object with `json.JSONDecoder.raw_decode`, never loaded whole;
- JSON Lines (`.jsonl` or `.json` whose first character is `{`): one object per line;
- CSV with a header row naming the fields (`primary`, `clan`, ...).
Records are yielded as `(where, dict)` or `(where, error message)`, where `where` is
`<file>[<record index>]` (JSON array, 0-based) or `<file>:<line>` (JSON Lines and CSV). A
syntax error inside a JSON array cannot be resynchronised, so it ends that file with one error.
"""

from __future__ import annotations

import csv
import json
import os
import re
from typing import Any, Iterator

import numpy as np

VOCAB = "XARNDCQEGHILKMFPSTWYVUOBZJ"
PAD = "X"
SEQ_LEN = 128
_READ_CHUNK = 1 << 20
_MAX_RECORD_CHARS = 1 << 26  # a JSON object larger than this is treated as malformed
_SKIP_RE = re.compile(r"[\s,]*")

_AA_TO_ID = np.full(256, -1, dtype=np.int64)
for _i, _a in enumerate(VOCAB):
    _AA_TO_ID[ord(_a)] = _i


def encode_protein(primary: Any, length: int = SEQ_LEN) -> np.ndarray:
    """Amino-acid string -> int64 ids `[length]` (truncated / padded with X); raises ValueError."""
    if not isinstance(primary, str) or not primary:
        raise ValueError(f"`primary` must be a non-empty amino-acid string, got {primary!r:.60}")
    codes = np.frombuffer(primary[:length].upper().encode("latin-1", errors="replace"), np.uint8)
    ids = _AA_TO_ID[codes]
    if (ids < 0).any():
        bad = primary[int(np.argmax(ids < 0))]
        raise ValueError(f"residue {bad!r} is not in the vocabulary {VOCAB}")
    out = np.zeros(length, dtype=np.int64)  # 0 = X = padding
    out[:len(ids)] = ids
    return out


def _file_kind(path: str) -> str:
    if path.endswith(".csv"):
        return "csv"
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        while True:
            ch = f.read(1)
            if not ch:
                return "jsonl"  # empty file: no records either way
            if not ch.isspace():
                return "json_array" if ch == "[" else "jsonl"


def _iter_json_array(path: str) -> Iterator[tuple[str, dict | str]]:
    decoder = json.JSONDecoder()
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        # `buffer[pos:]` is the unparsed text; it is compacted only when more text is read, so
        # each character is copied O(1) times however many records a chunk holds.
        buffer, pos, eof, index, started = "", 0, False, 0, False

        def read_more() -> bool:
            nonlocal buffer, pos, eof
            chunk = f.read(_READ_CHUNK)
            eof = not chunk
            buffer, pos = buffer[pos:] + chunk, 0
            return bool(chunk)

        while True:
            # Skip whitespace, the opening bracket and the commas between records.
            pos = _SKIP_RE.match(buffer, pos).end()
            if pos < len(buffer) and not started:
                if buffer[pos] != "[":
                    yield f"{path}[0]", "expected a JSON array starting with '['"
                    return
                started, pos = True, pos + 1
                continue
            if pos < len(buffer) and buffer[pos] == "]":
                return
            if pos >= len(buffer):
                if read_more():
                    continue
                if started:
                    yield f"{path}[{index}]", "the JSON array is not closed with ']'"
                return
            try:
                record, end = decoder.raw_decode(buffer, pos)
            except json.JSONDecodeError as e:
                if not eof and len(buffer) - pos < _MAX_RECORD_CHARS and read_more():
                    continue  # the record may just be incomplete so far
                yield (f"{path}[{index}]", f"invalid JSON ({e.msg}); the rest of the file "
                                           f"is skipped")
                return
            where = f"{path}[{index}]"
            index, pos = index + 1, end
            if isinstance(record, dict):
                yield where, record
            else:
                yield where, f"expected a JSON object, got {type(record).__name__}"


def _iter_json_lines(path: str) -> Iterator[tuple[str, dict | str]]:
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                yield where, f"invalid JSON ({e.msg} at column {e.colno})"
                continue
            if isinstance(record, dict):
                yield where, record
            else:
                yield where, f"expected a JSON object, got {type(record).__name__}"


def _iter_csv(path: str) -> Iterator[tuple[str, dict | str]]:
    with open(path, "r", encoding="utf-8", errors="replace", newline="") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header is None:
            return
        for row in rows:
            where = f"{path}:{rows.line_num}"
            if not row:
                continue
            if len(row) != len(header):
                yield where, f"expected {len(header)} columns ({', '.join(header)}), got {len(row)}"
                continue
            yield where, dict(zip(header, row))


def iter_records(path: str) -> Iterator[tuple[str, dict | str]]:
    """Streams the records of one split file; see the module docstring."""
    kind = _file_kind(path)
    if kind == "json_array":
        return _iter_json_array(path)
    if kind == "csv":
        return _iter_csv(path)
    return _iter_json_lines(path)


def find_split_file(data_dir: str, subdir: str, stem: str) -> str | None:
    """`<data_dir>[/<subdir>]/<stem>.{json,jsonl,csv}`, the first that exists."""
    for folder in (data_dir, os.path.join(data_dir, subdir)):
        for ext in (".json", ".jsonl", ".csv"):
            path = os.path.join(folder, stem + ext)
            if os.path.isfile(path):
                return path
    return None
