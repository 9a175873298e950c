"""Fetching a dataset's official raw files: resumable, checksummed, atomic.

`fetch(remote, folder)` streams `remote.url` into `<folder>/<filename>.part`, prints progress,
checks the size and checksum, and only then renames the file to `<folder>/<filename>`. So a
file under its real name is always complete and verified; an interrupted download leaves only
the `.part` file, and the next call resumes it with an HTTP Range request when the server
allows (a 2.8 GB HIGGS.csv.gz or a 30 GB LibriSpeech tarball is not restarted from zero).

Which files each dataset needs, with their published checksums, is `official_files.py`.
The pipeline calls `ensure_raw_files` only after a reader said its raw files are missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import IO

_CHUNK = 1 << 20
_PROGRESS_EVERY_S = 1.0
_USER_AGENT = "keras-metamae-preprocess (+python urllib)"


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """An official raw file: where it is published and how to check what arrived.

    `sha256` / `md5` / `size` are the published values (None when nobody publishes one; the
    download then only checks the size the server announces and prints the sha256 it got).
    `checksum_source` says where the published value comes from.
    """

    url: str
    filename: str
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None
    checksum_source: str = ""

    def describe(self) -> str:
        size = f", {human_bytes(self.size)}" if self.size else ""
        return f"{self.filename} ({self.url}{size})"


class DownloadError(RuntimeError):
    """The file arrived but is wrong (checksum, size), or the server refused it."""


class NetworkUnavailable(DownloadError):
    """The server could not be reached (offline, DNS failure, timeout, connection refused)."""


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} GB"


def mirrored_url(remote: RemoteFile, mirror: str | None) -> str:
    """`remote.url`, or `<mirror>/<filename>` when a mirror (e.g. a company cache) is given."""
    if not mirror:
        return remote.url
    return mirror.rstrip("/") + "/" + urllib.parse.quote(remote.filename)


class _Progress:
    """One status line on a terminal (rewritten in place), every ~10% otherwise (CI logs)."""

    def __init__(self, name: str, total: int | None, start_bytes: int, stream: IO[str]):
        self.name, self.total, self.stream = name, total, stream
        self.start_bytes = start_bytes
        self.started = self.last = time.monotonic()
        self.last_decile = -1
        self.tty = bool(getattr(stream, "isatty", lambda: False)())

    def update(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < _PROGRESS_EVERY_S:
            return
        decile = int(10 * done / self.total) if self.total else -1
        if not self.tty and not final and decile == self.last_decile:
            return
        self.last, self.last_decile = now, decile
        rate = (done - self.start_bytes) / max(now - self.started, 1e-6)
        of = f" / {human_bytes(self.total)} ({100 * done / self.total:.0f}%)" if self.total else ""
        line = f"{self.name}: {human_bytes(done)}{of} at {human_bytes(rate)}/s"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _open(url: str, offset: int, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the .part already holds the whole file
            return None
        raise DownloadError(f"{url}: the server answered HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise NetworkUnavailable(f"{url}: could not connect ({reason})") from e


def _hash_existing(path: str, hashers) -> int:
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            for h in hashers:
                h.update(chunk)
            done += len(chunk)
    return done


def fetch(remote: RemoteFile, folder: str, *, mirror: str | None = None, timeout: float = 30.0,
          stream: IO[str] | None = None) -> str:
    """Downloads `remote` into `folder` and returns the final path (see the module docstring).

    Raises NetworkUnavailable when the server cannot be reached, DownloadError when what
    arrived is wrong (the bad bytes are deleted) or incomplete (the `.part` is kept to resume).
    """
    stream = stream or sys.stderr
    os.makedirs(folder, exist_ok=True)
    final = os.path.join(folder, remote.filename)
    if os.path.exists(final):
        return final
    part = final + ".part"
    url = mirrored_url(remote, mirror)
    with open(part + ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise DownloadError(f"{part} is being downloaded by another process; wait for it "
                                f"to finish (or stop it) and run again") from e
        try:
            if not os.path.exists(final):  # another process may have finished it meanwhile
                _download_locked(remote, url, part, final, timeout, stream)
        finally:
            os.unlink(part + ".lock")
    return final


def _download_locked(remote: RemoteFile, url: str, part: str, final: str, timeout: float,
                     stream: IO[str]) -> None:
    sha256, md5 = hashlib.sha256(), hashlib.md5()
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    response = _open(url, offset, timeout)
    if response is not None and offset and response.status != 206:
        offset = 0  # the server ignored the Range header: start again from byte 0
    mode = "ab" if offset else "wb"
    if offset:
        _hash_existing(part, (sha256, md5))
        stream.write(f"{remote.filename}: resuming {part} at {human_bytes(offset)}\n")
    done = offset
    if response is not None:
        with response:
            length = response.headers.get("Content-Length")
            announced = offset + int(length) if length is not None else None
            total = remote.size or announced
            if remote.size and announced and announced != remote.size:
                raise DownloadError(
                    f"{url}: the server announces {announced} bytes, but the official "
                    f"{remote.filename} has {remote.size} ({remote.checksum_source}); "
                    f"not downloading it")
            stream.write(f"downloading {remote.filename} from {url} to {os.path.dirname(final)}/\n")
            progress = _Progress(remote.filename, total, offset, stream)
            with open(part, mode) as out:
                try:
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        sha256.update(chunk)
                        md5.update(chunk)
                        done += len(chunk)
                        progress.update(done)
                except (socket.timeout, ConnectionError, OSError) as e:
                    raise DownloadError(f"{url}: the connection broke after {human_bytes(done)}; "
                                        f"{part} is kept and the next run resumes it ({e})") from e
            progress.update(done, final=True)
            if announced is not None and done != announced:
                raise DownloadError(f"{url}: got {done} of {announced} bytes; {part} is kept and "
                                    f"the next run resumes it")
    _verify(remote, url, part, done, sha256.hexdigest(), md5.hexdigest(), stream)
    os.replace(part, final)


def _verify(remote: RemoteFile, url: str, part: str, size: int, sha256: str, md5: str,
            stream: IO[str]) -> None:
    problems = []
    if remote.size is not None and size != remote.size:
        problems.append(f"size {size} bytes, expected {remote.size}")
    if remote.sha256 and sha256 != remote.sha256:
        problems.append(f"sha256 {sha256}, expected {remote.sha256}")
    if remote.md5 and md5 != remote.md5:
        problems.append(f"md5 {md5}, expected {remote.md5}")
    if problems:
        os.unlink(part)  # wrong bytes are never resumed from
        raise DownloadError(f"{url}: the downloaded {remote.filename} is not the official file "
                            f"({'; '.join(problems)}; published in {remote.checksum_source}). "
                            f"It was deleted. If the URL moved, put the official file in "
                            f"{os.path.dirname(part)}/ yourself.")
    if remote.sha256 or remote.md5:
        stream.write(f"{remote.filename}: checksum verified ({'sha256' if remote.sha256 else 'md5'})\n")
    else:
        stream.write(f"{remote.filename}: no published checksum to verify against; "
                     f"sha256 of what arrived: {sha256}\n")


def ensure_raw_files(files: list[RemoteFile], folder: str, *, mirror: str | None = None,
                     timeout: float = 30.0, stream: IO[str] | None = None) -> list[str]:
    """Fetches every file of `files` that is not in `folder` yet; returns their paths."""
    created = not os.path.isdir(folder)
    try:
        return [fetch(f, folder, mirror=mirror, timeout=timeout, stream=stream) for f in files]
    except DownloadError:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only if empty: a kept .part stays with its folder
        raise
