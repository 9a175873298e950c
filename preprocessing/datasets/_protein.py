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

TAPE's official distribution is LMDB (`data_pytorch/<task>.tar.gz`, extracting to
`<task>/<task>_<split>.lmdb/` folders holding `data.mdb` and `lock.mdb`), read like TAPE's own
`tape/datasets.py::LMDBDataset`: key `b"num_examples"` holds a pickled int and keys
`str(i).encode()` for i in range(num_examples) a pickled dict per protein with the same fields as
the JSON (`primary`, `protein_length`, task fields; numpy arrays/scalars are turned into plain
lists/numbers so both formats parse alike). An LMDB split is read in index ranges of
`LMDB_RECORDS_PER_SOURCE` records, each range opening the environment on its own (read-only,
`lock=False`) and reading record by record, so reading is parallel and memory-bounded. A record
that does not unpickle or is not a dict yields `(<lmdb dir>[<key>], error message)`; a folder that
is not an LMDB environment or has no `num_examples` raises `LmdbError` naming the folder.
Records are unpickled with an allow-list of globals (numpy's array/scalar/dtype reconstructors and
`_codecs.encode`), so a crafted file cannot call other functions; any other global makes the
record bad.

`ensure_extracted` turns an official `<data_dir>/<task>.tar.gz` into `<data_dir>/<task>/...`
once: its `.lmdb` folders (and `.json`/`.jsonl` split files, for TAPE's raw JSON tarball of the
same name) are extracted into a hidden temp folder beside it and renamed into place.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import tarfile
import uuid
import zlib
from typing import Any, Iterator

import numpy as np

from preprocessing.datasets._numpy_unpickle import NumpyUnpickler
from preprocessing.datasets.base import RawDataMissing

VOCAB = "XARNDCQEGHILKMFPSTWYVUOBZJ"
PAD = "X"
SEQ_LEN = 128
_READ_CHUNK = 1 << 20
_MAX_RECORD_CHARS = 1 << 26  # a JSON object larger than this is treated as malformed
_SKIP_RE = re.compile(r"[\s,]*")
LMDB_SUFFIX = ".lmdb"
LMDB_RECORDS_PER_SOURCE = 5000  # records per Beam read source of an LMDB split
NUM_EXAMPLES_KEY = b"num_examples"
TAPE_LMDB_URL = "http://s3.amazonaws.com/songlabdata/proteindata/data_pytorch/{task}.tar.gz"

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
    """Streams the records of one split file or LMDB folder; see the module docstring."""
    if is_lmdb(path):
        return iter_lmdb(path, 0, lmdb_num_examples(path))
    kind = _file_kind(path)
    if kind == "json_array":
        return _iter_json_array(path)
    if kind == "csv":
        return _iter_csv(path)
    return _iter_json_lines(path)


def find_split_file(data_dir: str, subdir: str, stem: str) -> str | None:
    """`<data_dir>[/<subdir>]/<stem>.{json,jsonl,csv}` or the LMDB folder `<stem>.lmdb/`, the
    first that exists (record files before the LMDB folder, `data_dir` before `subdir`)."""
    for folder in (data_dir, os.path.join(data_dir, subdir)):
        for ext in (".json", ".jsonl", ".csv"):
            path = os.path.join(folder, stem + ext)
            if os.path.isfile(path):
                return path
        path = os.path.join(folder, stem + LMDB_SUFFIX)
        if os.path.isdir(path):
            return os.path.normpath(path)
    return None


# === LMDB (TAPE's data_pytorch release) ===
class LmdbError(RawDataMissing):
    """An LMDB split folder that cannot be opened or has no usable `num_examples`; the message
    names the folder. A RawDataMissing, so the command line reports it like missing raw data."""


def is_lmdb(path: str) -> bool:
    return os.path.isdir(path)


# (module, name) pairs a TAPE record may reference; anything else is refused.
def _loads(raw: bytes) -> Any:
    return NumpyUnpickler(io.BytesIO(raw)).load()


def _plain(value: Any) -> Any:
    """numpy arrays/scalars -> lists/numbers, as the JSON release stores them."""
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    return value


def _open_lmdb(path: str):
    import lmdb

    if not os.path.isdir(path):
        raise LmdbError(f"{path}: LMDB folder not found")
    try:
        # As TAPE's LMDBDataset: read-only, no lock file writes, no readahead.
        return lmdb.open(path, max_readers=1, readonly=True, lock=False, readahead=False,
                         meminit=False)
    except lmdb.Error as e:
        raise LmdbError(f"{path}: not a readable LMDB folder ({type(e).__name__}: {e}); "
                        f"expected TAPE's <task>_<split>.lmdb/ holding data.mdb") from None


def lmdb_num_examples(path: str) -> int:
    """The record count stored under `num_examples`; raises LmdbError naming the folder."""
    import lmdb

    env = _open_lmdb(path)
    try:
        with env.begin() as txn:
            raw = txn.get(NUM_EXAMPLES_KEY)
    except lmdb.Error as e:
        raise LmdbError(f"{path}: unreadable LMDB ({type(e).__name__}: {e})") from None
    finally:
        env.close()
    if raw is None:
        raise LmdbError(f"{path}: the LMDB has no `num_examples` key (TAPE's .lmdb folders store "
                        f"the record count there); the folder is corrupt or not a TAPE split")
    try:
        count = _plain(_loads(raw))
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same
        raise LmdbError(f"{path}: `num_examples` does not unpickle "
                        f"({type(e).__name__}: {e})") from None
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise LmdbError(f"{path}: `num_examples` is {count!r:.40}, expected a count >= 0")
    return count


def iter_lmdb(path: str, start: int, stop: int) -> Iterator[tuple[str, dict | str]]:
    """Records `start..stop-1` of one LMDB split as `(<path>[<key>], dict or error)`."""
    env = _open_lmdb(path)
    try:
        with env.begin() as txn:
            for index in range(start, stop):
                where = f"{path}[{index}]"
                raw = txn.get(str(index).encode())
                if raw is None:
                    yield where, f"key {index!r} is missing (num_examples says it should exist)"
                    continue
                try:
                    record = _loads(raw)
                except Exception as e:  # noqa: BLE001 - a corrupt value is one bad record
                    yield where, f"the record does not unpickle ({type(e).__name__}: {e})"
                    continue
                if not isinstance(record, dict):
                    yield where, f"expected a pickled dict, got {type(record).__name__}"
                    continue
                yield where, {key: _plain(value) for key, value in record.items()}
    finally:
        env.close()


def split_sources(split: str, path: str, records_per_source: int | None = None) -> list[tuple]:
    """Read sources of one split: `(split, file)` for a record file (read whole), or
    `(split, lmdb_dir, start, stop)` index ranges of `LMDB_RECORDS_PER_SOURCE` records for an
    LMDB folder."""
    if not is_lmdb(path):
        return [(split, path)]
    records_per_source = records_per_source or LMDB_RECORDS_PER_SOURCE
    count = lmdb_num_examples(path)
    return [(split, path, start, min(start + records_per_source, count))
            for start in range(0, count, records_per_source)]


def iter_source(source: tuple) -> Iterator[tuple[str, dict | str]]:
    """The records of one source from `split_sources`."""
    if len(source) == 4:
        _, path, start, stop = source
        return iter_lmdb(path, start, stop)
    _, path = source
    return iter_records(path)


# === official tarball ===
_EXTRACT_PREFIX = ".extract-"
# `<anything>/<stem>.lmdb/<file>` and `<anything>/<stem>.json[l]`
_LMDB_MEMBER_RE = re.compile(r"(?:^|/)([^/]+\.lmdb)/([^/]+)$")
_JSON_MEMBER_RE = re.compile(r"(?:^|/)([^/]+\.jsonl?)$")


def tarball_path(data_dir: str, task: str) -> str:
    return os.path.join(data_dir, f"{task}.tar.gz")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_extractions(data_dir: str, task: str) -> None:
    prefix = f".{task}.tar.gz{_EXTRACT_PREFIX}"
    for name in os.listdir(data_dir):
        pid = name[len(prefix):].split("-")[0]
        if name.startswith(prefix) and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(os.path.join(data_dir, name), ignore_errors=True)


def extract_tarball(tarball: str, data_dir: str, task: str, last: str = "") -> list[str]:
    """Extracts the `.lmdb` folders (and `.json`/`.jsonl` split files) of `tarball` into
    `<data_dir>/<task>/`, atomically: everything goes to a hidden temp folder in `data_dir`
    first, which is then renamed to `<data_dir>/<task>` (or, when that folder exists, each item
    is renamed into it, `last` - the train split - at the end, so a split found there is always
    complete). Items already in place are kept. Returns the extracted item names; raises
    RawDataMissing when the archive is unreadable or holds no split."""
    target = os.path.join(data_dir, task)
    _remove_stale_extractions(data_dir, task)
    tmp = os.path.join(data_dir, f".{task}.tar.gz{_EXTRACT_PREFIX}{os.getpid()}-{uuid.uuid4().hex}")
    try:
        os.makedirs(tmp)
        items = set()
        with tarfile.open(tarball, mode="r|*") as tf:
            for member in tf:
                name = member.name.replace("\\", "/")
                if not member.isfile() or ".." in name.split("/"):
                    continue
                lmdb_match = _LMDB_MEMBER_RE.search(name)
                json_match = None if lmdb_match else _JSON_MEMBER_RE.search(name)
                if lmdb_match:
                    item, dest = lmdb_match.group(1), os.path.join(tmp, *lmdb_match.groups())
                elif json_match:
                    item = json_match.group(1)
                    dest = os.path.join(tmp, item)
                else:
                    continue
                if item.startswith("._"):  # macOS resource forks
                    continue
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with tf.extractfile(member) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                items.add(item)
        if not items:
            raise RawDataMissing(f"{tarball} holds no <split>.lmdb/ folder (nor .json split "
                                 f"file); expected TAPE's {TAPE_LMDB_URL.format(task=task)}")
        if not os.path.exists(target):
            try:
                os.rename(tmp, target)  # one rename: all splits appear at once
                return sorted(items)
            except OSError:
                if not os.path.isdir(target):
                    raise
        os.makedirs(target, exist_ok=True)
        for item in sorted(items, key=lambda i: (i.startswith(last + "."), i)):
            dest = os.path.join(target, item)
            if os.path.exists(dest):
                continue
            try:
                os.rename(os.path.join(tmp, item), dest)
            except OSError:
                if not os.path.exists(dest):  # not a concurrent run that got there first
                    raise
        return sorted(items)
    except RawDataMissing:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise RawDataMissing(
            f"{tarball}: cannot extract it into {data_dir} ({type(e).__name__}: {e}); "
            f"re-download {TAPE_LMDB_URL.format(task=task)} or extract it yourself "
            f"(tar xzf {os.path.basename(tarball)} in {data_dir})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_extracted(data_dir: str, task: str, train_stem: str) -> bool:
    """Extracts `<data_dir>/<task>.tar.gz` (see `extract_tarball`) when the train split is not
    under `data_dir` yet; True when it did. Later calls find the split and do nothing."""
    if find_split_file(data_dir, task, train_stem) is not None:
        return False
    tarball = tarball_path(data_dir, task)
    if not os.path.isfile(tarball):
        return False
    items = extract_tarball(tarball, data_dir, task, last=train_stem)
    if find_split_file(data_dir, task, train_stem) is None:
        raise RawDataMissing(f"{tarball} has no {train_stem}{LMDB_SUFFIX}/ (it holds "
                             f"{', '.join(items)}); expected TAPE's "
                             f"{TAPE_LMDB_URL.format(task=task)}")
    return True
