"""Reading a dataset's files whether they are still in the official archive or extracted.

Official downloads are `.tar.gz`/`.tgz`/`.tar` or `.zip` archives. Extracted folders are read
file by file; tar archives are *streamed* (gzip cannot seek, and streaming keeps memory bounded
by one member). To read one archive in parallel, a read task is `(archive, shard, num_shards)`:
every task streams the archive but decodes only the members whose name hashes to its shard, so
the expensive part (decoding audio/images) is spread over workers.

Member paths are always POSIX paths relative to `data_dir` (extracted) or to the archive root,
and readers match them with regular expressions on their tail, so `data_dir` may point at the
folder holding the archive, at the extracted tree or anywhere above the dataset's own folder.
"""

from __future__ import annotations

import os
import re
import tarfile
import zipfile
import zlib
from typing import Iterable, Iterator

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
# Extracted trees deeper than this below data_dir are not searched (keeps os.walk bounded).
_MAX_DEPTH = 8


class ArchiveError(OSError):
    """An archive that cannot be opened or is truncated; `path` names it."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def is_archive(path: str) -> bool:
    return os.path.isfile(path) and path.endswith(ARCHIVE_SUFFIXES)


def shard_of(name: str, num_shards: int) -> int:
    """A stable shard number for a member name (crc32: same on every machine and run)."""
    return zlib.crc32(name.encode()) % num_shards


def walk_files(root: str, pattern: str) -> list[str]:
    """Sorted relative POSIX paths of files under `root` whose relative path matches `pattern`
    (`re.search`); archives are never descended into."""
    regex = re.compile(pattern)
    found = []
    if not os.path.isdir(root):
        return found
    base_depth = root.rstrip(os.sep).count(os.sep)
    for current, dirs, files in os.walk(root):
        if current.count(os.sep) - base_depth >= _MAX_DEPTH:
            dirs[:] = []
        dirs.sort()
        for f in files:
            rel = os.path.relpath(os.path.join(current, f), root).replace(os.sep, "/")
            if regex.search(rel):
                found.append(rel)
    return sorted(found)


def archives_in(data_dir: str, names: Iterable[str]) -> list[str]:
    """The official archives among `names` present in data_dir (or data_dir itself if it is one)."""
    if is_archive(data_dir):
        return [data_dir]
    return [os.path.join(data_dir, n) for n in names if is_archive(os.path.join(data_dir, n))]


def iter_archive(archive: str, pattern: str, shard: int = 0,
                 num_shards: int = 1) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) for the members matching `pattern` (and the shard), in archive order.

    Raises ArchiveError when the archive is unreadable or ends early; members yielded before
    that stay valid.
    """
    regex = re.compile(pattern)

    def wanted(name: str) -> bool:
        return bool(regex.search(name)) and (num_shards == 1 or shard_of(name, num_shards) == shard)

    try:
        if archive.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    if not info.is_dir() and wanted(info.filename):
                        yield info.filename, zf.read(info)
            return
        with tarfile.open(archive, mode="r|*") as tf:
            for member in tf:
                if member.isfile() and wanted(member.name):
                    handle = tf.extractfile(member)
                    yield member.name, handle.read()
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as e:
        raise ArchiveError(archive, f"unreadable or truncated archive ({type(e).__name__}: {e})") from None


def read_small_files(data_dir: str, archive_names: Iterable[str],
                     patterns: dict[str, str]) -> dict[str, tuple[str, bytes]]:
    """Finds metadata files (label lists, split lists) by pattern: `{key: (where, bytes)}`.

    Extracted files win; otherwise the archives are streamed until every key is found.
    Keys that are nowhere are missing from the result (the caller names them in its error).
    """
    found: dict[str, tuple[str, bytes]] = {}
    for key, pattern in patterns.items():
        hits = walk_files(data_dir, pattern) if os.path.isdir(data_dir) else []
        if hits:
            path = os.path.join(data_dir, hits[0])
            with open(path, "rb") as f:
                found[key] = (path, f.read())
    missing = {k: re.compile(p) for k, p in patterns.items() if k not in found}
    for archive in archives_in(data_dir, archive_names):
        if not missing:
            break
        combined = "|".join(f"(?:{p.pattern})" for p in missing.values())
        for name, data in iter_archive(archive, combined):
            for key, regex in list(missing.items()):
                if regex.search(name):
                    found[key] = (f"{archive}:{name}", data)
                    del missing[key]
            if not missing:
                break
    return found


def iter_source_files(source: tuple) -> Iterator[tuple[str, str, bytes | Exception]]:
    """Runs one read task from `file_sources`: yields `(where, relative path, bytes or error)`.

    A file that cannot be read yields its OSError instead of bytes; an archive that breaks
    mid-stream yields one ArchiveError (where = the archive) and stops.
    """
    kind = source[0]
    if kind == "files":
        _, root, rels = source
        for rel in rels:
            path = os.path.join(root, rel)
            try:
                with open(path, "rb") as f:
                    yield path, rel, f.read()
            except OSError as e:
                yield path, rel, e
    elif kind == "archive":
        _, archive, pattern, shard, num_shards = source
        try:
            for name, data in iter_archive(archive, pattern, shard, num_shards):
                yield f"{archive}:{name}", name, data
        except ArchiveError as e:
            yield archive, "", e
    else:
        raise ValueError(f"unknown read task kind {kind!r}")


def file_sources(data_dir: str, archive_names: Iterable[str], pattern: str,
                 files_per_source: int = 256, archive_shards: int = 8) -> list[tuple]:
    """Read tasks for the files matching `pattern`: chunks of extracted files when any exist
    under data_dir, else `archive_shards` streaming tasks per official archive."""
    if os.path.isdir(data_dir):
        rels = walk_files(data_dir, pattern)
        if rels:
            return [("files", data_dir, tuple(rels[i:i + files_per_source]))
                    for i in range(0, len(rels), files_per_source)]
    return [("archive", archive, pattern, shard, archive_shards)
            for archive in archives_in(data_dir, archive_names)
            for shard in range(archive_shards)]
