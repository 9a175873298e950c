"""Files on a local disk or in an object store (`gs://bucket/...`), through one set of calls.

Local paths go through `os`, `shutil` and `open`, as fast as before; a URL goes through
`tf.io.gfile` (TensorFlow is imported only then). What differs on an object store, and what
the callers rely on:

- writing one object is atomic: it becomes visible whole when the writer closes, so a small
  file (`write_text`) needs no temporary name there;
- a "rename" is a copy and a delete, object by object, and a "folder" is a name prefix: a
  half-renamed folder can be seen. Whoever publishes several objects writes the data first and
  the object that makes them valid (a manifest, spec.json) last, and readers trust only what
  such a manifest lists.
"""

from __future__ import annotations

import os
import re
import shutil

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme(path: str) -> str | None:
    """`gs` for `gs://bucket/x`; None for a local path."""
    match = _URL.match(path)
    return match.group(1) if match else None


def is_url(path: str) -> bool:
    return scheme(path) is not None


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def known_schemes() -> list[str]:
    """The URL schemes TensorFlow can read and write here (`gs`, ...)."""
    return sorted(s for s in _gfile().get_registered_schemes() if s not in ("", "file", "ram"))


def absolute(path: str) -> str:
    """A local path made absolute (so a recorded path means the same from anywhere); a URL as
    it is, without a trailing slash."""
    return path.rstrip("/") if is_url(path) else os.path.abspath(os.path.expanduser(path))


def exists(path: str) -> bool:
    return _gfile().exists(path) if is_url(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return _gfile().isdir(path) if is_url(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
    if is_url(path):
        return _gfile().exists(path) and not _gfile().isdir(path)
    return os.path.isfile(path)


def makedirs(path: str) -> None:
    if is_url(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
    """The names in folder `path` (a URL's sub-folders without their trailing `/`)."""
    if is_url(path):
        return sorted({name.rstrip("/") for name in _gfile().listdir(path)})
    return os.listdir(path)


def glob(pattern: str) -> list[str]:
    if is_url(pattern):
        return sorted(_gfile().glob(pattern))
    import glob as local_glob

    return sorted(local_glob.glob(pattern))


def size(path: str) -> int:
    """Bytes in file `path`."""
    return _gfile().stat(path).length if is_url(path) else os.path.getsize(path)


def open_file(path: str, mode: str = "r"):
    return _gfile().GFile(path, mode) if is_url(path) else open(path, mode)


def read_text(path: str) -> str:
    """The text of file `path`; FileNotFoundError when there is none (also for a URL)."""
    if not is_url(path):
        with open(path) as f:
            return f.read()
    try:
        with _gfile().GFile(path) as f:
            return f.read()
    except _not_found():
        raise FileNotFoundError(f"no such object: {path}") from None


def write_object(path: str, data: str | bytes) -> None:
    """Writes `path` in one piece: on an object store it appears whole or not at all."""
    with open_file(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def copy(source: str, destination: str) -> None:
    if is_url(source) or is_url(destination):
        _gfile().copy(source, destination, overwrite=True)
    else:
        shutil.copyfile(source, destination)


def remove(path: str) -> None:
    """Removes file `path`; nothing if it is not there."""
    if not is_url(path):
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        return
    try:
        _gfile().remove(path)
    except _not_found():
        pass


def rmtree(path: str) -> None:
    """Removes folder `path` and everything in it; nothing if it is not there."""
    if is_url(path):
        try:
            _gfile().rmtree(path)
        except _not_found():
            pass
    else:
        shutil.rmtree(path, ignore_errors=True)


def rename(source: str, destination: str) -> None:
    """Local: atomic `os.replace`. URL: copy and delete (of every object under a folder)."""
    if is_url(source):
        _gfile().rename(source, destination, overwrite=True)
    else:
        os.replace(source, destination)


def files_under(prefix: str) -> list[str]:
    """Every file under folder `prefix`, as names relative to it (folders left out)."""
    if not is_url(prefix):
        return sorted(os.path.relpath(os.path.join(folder, name), prefix)
                      for folder, _, names in os.walk(prefix) for name in names)
    found = []
    for folder, _, names in _gfile().walk(prefix):
        relative = folder[len(prefix):].strip("/")
        found += [f"{relative}/{name}" if relative else name for name in names]
    return sorted(found)


def move_files(source: str, destination: str, last: tuple[str, ...] = ()) -> None:
    """Moves every file under `source` to the same name under `destination`, one by one, the
    names in `last` (relative, if present) after all others and in that order; then removes
    what is left of `source`. On an object store each move is a copy and a delete: whoever
    lists `destination` meanwhile sees some files and not others, and the ones in `last` show
    that the others are complete."""
    names = files_under(source)
    ordered = [name for name in names if name not in last] + [n for n in last if n in names]
    for name in ordered:
        rename(f"{source}/{name}", f"{destination}/{name}")
    rmtree(source)


def _not_found():
    import tensorflow as tf

    return tf.errors.NotFoundError
