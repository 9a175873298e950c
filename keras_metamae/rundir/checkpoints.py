"""Crash-safe checkpoints in `<workdir>/checkpoints/`.

A checkpoint is `ckpt-<step>.weights.h5` (model weights *and* optimizer state, including the
step counter that drives the learning-rate schedule) plus `latest.json` naming it. Both are
written to a temporary file, flushed to disk and renamed, so a kill at any instant leaves
either the previous checkpoint or the new one, never a half-written file under a real name.
Loading falls back to the newest readable checkpoint if the named one is damaged.

On an object store (`gs://...`) each checkpoint is one object, uploaded whole by Keras (it
writes the file locally and copies it): an object appears complete or not at all, so it is
written under its final name, and `latest.json` after it.

The record also keeps the state of every random generator of the model (masking, dropout):
the weights file holds variables only, and a resumed run must draw what the uninterrupted run
would have drawn.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time

import numpy as np

from commandline import filesystem
from preprocessing.atomic_files import write_text_atomically

CHECKPOINT_GLOB = "ckpt-*.weights.h5"
_STEP_RE = re.compile(r"ckpt-(\d+)\.weights\.h5$")
LATEST = "latest.json"


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CheckpointManager:
    """Saves, lists, prunes and restores step-numbered checkpoints of a compiled model.

    Args:
        directory: where checkpoints live (created if needed).
        keep: how many of the newest checkpoints to keep.
        create: create `directory` now; False for a reader that must not write (a non-chief
            worker restoring from the chief's checkpoints).
    """

    def __init__(self, directory: str, keep: int = 3, create: bool = True):
        self.directory = directory
        self.keep = keep
        if create:
            filesystem.makedirs(directory)

    def steps(self) -> list[int]:
        found = []
        for path in filesystem.glob(os.path.join(self.directory, CHECKPOINT_GLOB)):
            m = _STEP_RE.search(os.path.basename(path))
            if m:
                found.append(int(m.group(1)))
        return sorted(found)

    def path_for(self, step: int) -> str:
        return os.path.join(self.directory, f"ckpt-{step:09d}.weights.h5")

    def save(self, model, step: int, extra: dict | None = None) -> str:
        final = self.path_for(step)
        if filesystem.is_url(final):
            model.save_weights(final, overwrite=True)
        else:
            self._save_local(model, final, step)
        record = {"step": step, "file": os.path.basename(final), "time": time.time()}
        if getattr(model, "weights_format", None) is not None:
            record["weights_format"] = model.weights_format
        record["rng_state"] = random_generator_states(model)
        record.update(extra or {})
        write_text_atomically(os.path.join(self.directory, LATEST), json.dumps(record) + "\n",
                              fsync=True)
        self._prune()
        return final

    def _save_local(self, model, final: str, step: int) -> None:
        # Keras picks the format from the suffix, so the temporary name keeps `.weights.h5`.
        tmp = os.path.join(self.directory, f".tmp-{os.getpid()}-{step}.weights.h5")
        model.save_weights(tmp, overwrite=True)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.directory)

    def _prune(self) -> None:
        steps = self.steps()
        for step in steps[: max(0, len(steps) - self.keep)]:
            filesystem.remove(self.path_for(step))
        if filesystem.is_url(self.directory):
            return  # no temporary files there
        # Temporary files left by a process that was killed mid-save.
        for tmp in filesystem.glob(os.path.join(self.directory, ".tmp-*")):
            if str(os.getpid()) not in os.path.basename(tmp):
                try:
                    os.remove(tmp)
                except FileNotFoundError:
                    pass

    def latest_record(self) -> dict | None:
        path = os.path.join(self.directory, LATEST)
        try:
            return json.loads(filesystem.read_text(path))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def check_weights_format(self, expected: int | None) -> None:
        """Raises a one-line ValueError if there are checkpoints and `latest.json` records a
        weights format other than `expected` (a record without one is format 1); nothing to
        check when `expected` is None (a model that declares no `weights_format`)."""
        record = self.latest_record()
        if expected is None or record is None or not self.steps():
            return
        found = record.get("weights_format", 1)
        if found != expected:
            raise ValueError(
                f"{self.directory}: these checkpoints hold weights format {found} but this "
                f"version of the model has format {expected} (the set of weights changed, see "
                f"WEIGHTS_FORMAT in keras_metamae/methods/base.py); they cannot be loaded: use a new "
                f"--workdir, or the keras-metamae version that wrote them."
            )

    def restore(self, model, step: int | None = None) -> int:
        """Loads the newest readable checkpoint into `model` (or the one of `step`, which must
        be kept: no fallback then); returns its step (0 if none). Raises ValueError if
        `latest.json` records a different weights format (see `check_weights_format`), or if
        `step` is not a kept checkpoint."""
        self.check_weights_format(getattr(model, "weights_format", None))
        if step is not None:
            if step not in self.steps():
                raise ValueError(f"{self.directory}: no checkpoint of step {step}; the kept "
                                 f"steps are {self.steps() or 'none'}")
            model.load_weights(self.path_for(step))
            self._restore_random_generators(model, step)
            return step
        candidates = sorted(self.steps(), reverse=True)
        record = self.latest_record()
        if record and record.get("step") in candidates:
            candidates.remove(record["step"])
            candidates.insert(0, record["step"])
        for step in candidates:
            path = self.path_for(step)
            try:
                model.load_weights(path)
            except Exception as e:  # a damaged file: try the one before it
                logging.warning("checkpoint %s is unreadable (%s); trying an older one", path, e)
                continue
            self._restore_random_generators(model, step)
            return step
        return 0

    def _restore_random_generators(self, model, step: int) -> None:
        """The generators' state recorded with `step` (only the newest checkpoint's is kept);
        without it training goes on from the generators' initial state, not as it would have."""
        record = self.latest_record() or {}
        states = record.get("rng_state") if record.get("step") == step else None
        if states is None:
            logging.warning("%s: no random-generator state recorded for step %d; masks drawn "
                            "from here differ from an uninterrupted run's", self.directory, step)
            return
        set_random_generator_states(model, states)


def _generator_variables(model) -> list:
    # Every keras.random.SeedGenerator of the model and its layers, in the model's own order.
    return [v for v in model.variables if v.name == "seed_generator_state"]


def random_generator_states(model) -> list[list[int]]:
    """The state of each of the model's random generators, as JSON-able ints."""
    return [[int(x) for x in v.numpy()] for v in _generator_variables(model)]


def set_random_generator_states(model, states: list[list[int]]) -> None:
    """Sets what `random_generator_states` returned; ValueError if the model has another
    number of generators (another architecture)."""
    variables = _generator_variables(model)
    if len(variables) != len(states):
        raise ValueError(f"the checkpoint records {len(states)} random generators, the model "
                         f"has {len(variables)}")
    for variable, state in zip(variables, states):
        variable.assign(np.asarray(state, dtype=variable.dtype))
