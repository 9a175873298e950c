"""Writes a trained model's encoder into its run directory as a new export version.

Layout: `<workdir>/export/encoder/<version>/` with integer versions (TF Serving's model base
path is `<workdir>/export/encoder`). Each version holds the SavedModel (`saved_model.py`'s
signatures), `encoder.keras` (the encoder as a Keras model on tokens, for fine-tuning),
`spec.json` (the token contract it serves) and `export_info.json` (the checkpoint step).
"""

from __future__ import annotations

import json
import logging
import os
import uuid

from commandline import filesystem

from keras_metamae.rundir import RunDir
from keras_metamae.rundir.run_dir import EXPORT_INFO
from keras_metamae.serving.saved_model import KERAS_ENCODER
from keras_metamae.serving.saved_model import build_archive
from keras_metamae.serving.saved_model import encoder_keras_model


def export_encoder(model, spec, workdir: str, version: int | None = None,
                   step: int | None = None) -> str:
    """Writes the encoder of a trained model to `<workdir>/export/encoder/<version>/` (the
    next free version by default); returns that folder.

    The SavedModel is written to a temporary folder and renamed, so TF Serving (which polls
    the base path for new versions) never sees a half-written version. On an object store,
    where that rename is a copy per file, the files are moved with `saved_model.pb` and then
    `export_info.json` last: a poller that lists the version early finds no SavedModel yet
    (TF Serving retries a failed load), and `RunDir.export_versions` counts a version only
    once its export_info.json is there; what a killed export left is removed here first.
    """
    run_dir = RunDir(workdir)
    base = run_dir.export_base
    for folder in run_dir.remove_unfinished_exports():
        logging.warning("removed %s, left by an interrupted export", folder)
    filesystem.makedirs(base)
    final = run_dir.export_dir(version or run_dir.next_export_version())
    # On an object store a version is its export_info.json (and TensorFlow's stat cache may
    # still see a folder just removed above).
    if filesystem.exists(os.path.join(final, EXPORT_INFO) if filesystem.is_url(final) else final):
        raise FileExistsError(f"{final} already exists; versions are never overwritten")
    tmp = os.path.join(base, f".tmp-{uuid.uuid4().hex}")
    try:
        build_archive(model.encoder, spec).write_out(tmp, verbose=False)
        encoder_keras_model(model.encoder, spec).save(os.path.join(tmp, KERAS_ENCODER))
        # Written next to the model so a consumer knows the token contract it serves.
        filesystem.write_object(os.path.join(tmp, "spec.json"), spec.to_json())
        if step is None:
            step = int(model.optimizer.iterations.numpy()) if model.optimizer else 0
        filesystem.write_object(os.path.join(tmp, EXPORT_INFO), json.dumps({"step": int(step)}))
        if filesystem.is_url(final):
            filesystem.move_files(tmp, final, last=("saved_model.pb", EXPORT_INFO))
        else:
            os.replace(tmp, final)
    finally:
        if filesystem.exists(tmp):
            filesystem.rmtree(tmp)
    return final
