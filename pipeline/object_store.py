"""Publishing a dataset version on an object store (`--data_dir gs://...`).

On a local disk the job builds the version in a temporary folder and renames it into place
(pipeline/preprocess.py). On an object store a rename is a copy and a delete per object, and
anyone listing the prefix meanwhile sees a half-moved folder; only a single object appears
atomically. So here `spec.json` is the manifest, and the protocol is:

1. the job writes its shards under the build prefix `.tmp-<pid>-<hex>/` (unseen by readers);
2. `publish`: the old version's spec.json is deleted first (from then on no reader takes that
   version), then its other objects; the build's shards are moved under `<version>/`; the new
   spec.json, which names every shard with its size, is written last;
3. readers (keras_metamae/data/records.py) take only a version holding spec.json, and only the
   shards it names, checking each one's size.

A job killed at any point leaves no spec.json beside data it does not describe: either the old
version whole, or no version. `recover` (at the start of the next run) removes a build whose
process is gone and a version folder without spec.json.
"""

from __future__ import annotations

import os

from commandline import filesystem
from preprocessing.spec import SPEC_FILENAME


def publish(work_dir: str, version_dir: str) -> None:
    """Moves the finished build `work_dir` to `version_dir`, its spec.json last (see above)."""
    filesystem.remove(os.path.join(version_dir, SPEC_FILENAME))
    filesystem.rmtree(version_dir)
    filesystem.move_files(work_dir, version_dir, last=(SPEC_FILENAME,))


def recover(dataset_dir: str, version_dir: str, process_alive) -> list[str]:
    """Cleans up after runs that were killed; returns what it removed.

    - `.tmp-<pid>-<hex>/`: a build (or the rest of one being moved) whose process is gone;
    - `version_dir` without spec.json: a publish killed before its last step.
    """
    actions = []
    if not filesystem.isdir(dataset_dir):
        return actions
    for name in filesystem.listdir(dataset_dir):
        if name.startswith(".tmp-"):
            pid = name.split("-")[1]
            if pid.isdigit() and process_alive(int(pid)):
                continue
            filesystem.rmtree(os.path.join(dataset_dir, name))
            actions.append(f"removed unfinished build {dataset_dir}/{name}")
    if (filesystem.isdir(version_dir)
            and not filesystem.exists(os.path.join(version_dir, SPEC_FILENAME))):
        filesystem.rmtree(version_dir)
        actions.append(f"removed {version_dir}, whose publishing was interrupted")
    return actions
