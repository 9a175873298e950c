"""Writing a small text file so that readers see the old file or the new one, never half of it.

`tempfile.mkstemp` creates its file with mode 0600 whatever the umask, so a file renamed into a
shared data folder or workdir would be unreadable by everyone else; the mode is set from the
umask as `open()` would.
"""

from __future__ import annotations

import os
import tempfile

from commandline import filesystem


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomically(path: str, text: str, *, fsync: bool = False) -> str:
    """Writes `text` to a temp file beside `path` and renames it over `path`; returns `path`.
    On an object store (`gs://...`) one object write is already all or nothing."""
    if filesystem.is_url(path):
        filesystem.write_object(path, text)
        return path
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
