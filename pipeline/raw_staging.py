"""Raw files on an object store (`--raw_data_dir gs://bucket/raw/eurosat`), copied to a local
folder before the readers open them.

The readers read raw formats with local file APIs (zip archives, GeoTIFFs, pickles, wav files),
so a remote raw folder is mirrored under `--raw_cache_dir` first: each file whose local copy is
missing or has another size is copied under a temporary name and renamed, so an interrupted
copy is redone by the next run and a finished one is not copied twice. The workers of the local
runner and of a Dask cluster on a shared disk read that copy; a runner whose workers cannot see
the driver's disk (Dataflow) needs the raw files where its workers can read them.
"""

from __future__ import annotations

import logging
import os

from commandline import filesystem

# The local mirror of `gs://bucket/some/folder` is `<cache>/gs/bucket/some/folder`.
DEFAULT_CACHE = os.path.join("data", "raw", ".remote")


class RawStagingError(ValueError):
    """A remote raw folder that holds nothing to copy."""


def local_mirror(url: str, cache_dir: str) -> str:
    """The local folder that mirrors remote folder `url`."""
    scheme, _, rest = url.partition("://")
    return os.path.join(os.path.abspath(cache_dir), scheme, *rest.strip("/").split("/"))


def stage(url: str, local: str) -> tuple[int, int]:
    """Copies what `local` lacks of the files under `url`; (files copied, bytes copied)."""
    try:
        names = filesystem.files_under(url)
    except Exception as e:  # tf.errors.OpError: no such bucket, no access, no network
        raise RawStagingError(f"cannot list {url} (--raw_data_dir): {str(e).strip()[:200]}; "
                              f"check the URL and this machine's access to it") from e
    if not names:
        raise RawStagingError(f"no files under {url} (--raw_data_dir): put the raw files there, "
                              f"or pass the folder that holds them")
    copied = copied_bytes = 0
    for name in names:
        source, target = f"{url.rstrip('/')}/{name}", os.path.join(local, name)
        size = filesystem.size(source)
        if os.path.isfile(target) and os.path.getsize(target) == size:
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        partial = f"{target}.part-{os.getpid()}"
        filesystem.copy(source, partial)
        os.replace(partial, target)
        copied, copied_bytes = copied + 1, copied_bytes + size
    logging.info("copied %d of %d raw files (%d bytes) from %s to %s", copied, len(names),
                 copied_bytes, url, local)
    return copied, copied_bytes
