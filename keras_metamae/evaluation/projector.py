"""The online-evaluation queries' encoder features for TensorBoard's embedding projector.

Online evaluation (`online.OnlineEvaluation`) embeds the same labelled queries at every
evaluation. This writes two of those embeddings next to its event files: the random-initialised
encoder's (step 0, kept) and the newest (replaced at each evaluation), each a TSV of features
(what the projector's `tensor_path` reads), with a metadata TSV of labels and, for image-like
data, a sprite of thumbnails; `projector_config.pbtxt` lists them. PCA, t-SNE or UMAP of the
two in TensorBoard's Projector tab shows whether classes separate as pretraining goes on.

Every file is written under a temporary name and renamed (locally), or as one whole object (on
an object store): TensorBoard may read at any time.
"""

from __future__ import annotations

import io
import os

import numpy as np

from commandline import filesystem
from preprocessing.atomic_files import write_text_atomically

CONFIG_FILE = "projector_config.pbtxt"
# Thumbnail side in the sprite; the projector wants every thumbnail the same size.
THUMBNAIL = 32
# TensorBoard refuses sprites larger than this many pixels per side.
MAX_SPRITE_SIDE = 8192


def label_text(spec, label) -> str:
    """A label as the projector shows it: the class name when the spec has one."""
    value = np.asarray(label)
    if value.ndim == 0 and np.issubdtype(value.dtype, np.integer):
        names = list(getattr(spec, "label_names", None) or [])
        index = int(value)
        return names[index] if 0 <= index < len(names) else str(index)
    if value.ndim == 0:
        return f"{float(value):.4g}"
    return " ".join(f"{float(v):.4g}" for v in value.ravel())  # label sets, vectors


def thumbnails(spec, tokens) -> np.ndarray:
    """`[N, THUMBNAIL, THUMBNAIL, 3]` uint8 images of image-like tokens (each scaled to its own
    range; more than 3 channels shown as the first 3)."""
    from PIL import Image

    from preprocessing import tokenize

    raw = tokenize.tokens_to_raw(np.asarray(tokens, np.float32), spec).numpy()
    raw = raw[..., :3] if raw.shape[-1] >= 3 else np.repeat(raw[..., :1], 3, axis=-1)
    low = raw.min(axis=(1, 2, 3), keepdims=True)
    span = np.maximum(raw.max(axis=(1, 2, 3), keepdims=True) - low, 1e-12)
    images = np.round(255 * (raw - low) / span).astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(image).resize((THUMBNAIL, THUMBNAIL),
                                                               Image.NEAREST))
                     for image in images])


def _sprite(images: np.ndarray) -> np.ndarray:
    """Thumbnails in a square grid, row by row (the projector's order)."""
    per_row = int(np.ceil(np.sqrt(len(images))))
    sprite = np.full((per_row * THUMBNAIL, per_row * THUMBNAIL, 3), 255, np.uint8)
    for i, image in enumerate(images):
        row, col = divmod(i, per_row)
        sprite[row * THUMBNAIL:(row + 1) * THUMBNAIL, col * THUMBNAIL:(col + 1) * THUMBNAIL] = image
    return sprite


def _replace(path: str, write) -> None:
    """`write(file object)` into `path`, whole: a renamed temporary file, or one object."""
    buffer = io.BytesIO()
    write(buffer)
    if filesystem.is_url(path):
        filesystem.write_object(path, buffer.getvalue())
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(buffer.getvalue())
    os.replace(tmp, path)


class ProjectorWriter:
    """Writes the step-0 and newest query embeddings of one online evaluation into `logdir`.

    Args:
        logdir: the online evaluation's TensorBoard folder (its event files are there).
        spec: the dataset spec (label names; image-like data gets a sprite).
        labels: the queries' labels, in the order their features will come.
        images: optional `[N, THUMBNAIL, THUMBNAIL, 3]` thumbnails of the queries.
    """

    def __init__(self, logdir: str, spec, labels, images=None):
        self.logdir = logdir
        self.entries: dict[str, int] = {}  # file stem -> step
        filesystem.makedirs(logdir)
        if filesystem.exists(os.path.join(logdir, "queries.step0.tsv")):  # a resumed run's
            self.entries["queries.step0"] = 0
        self.metadata = "queries.labels.tsv"
        write_text_atomically(os.path.join(logdir, self.metadata),
                              "".join(label_text(spec, y) + "\n" for y in labels))
        self.sprite = None
        if images is not None and len(images) and (
                int(np.ceil(np.sqrt(len(images)))) * THUMBNAIL <= MAX_SPRITE_SIDE):
            from PIL import Image

            self.sprite = "queries.sprite.png"
            _replace(os.path.join(logdir, self.sprite),
                     lambda tmp: Image.fromarray(_sprite(images)).save(tmp, format="PNG"))

    def write(self, step: int, features) -> None:
        """The features of evaluation `step`: kept as step 0's, or as the newest."""
        stem = "queries.step0" if step == 0 else "queries.newest"
        features = np.asarray(features, np.float32)
        _replace(os.path.join(self.logdir, f"{stem}.tsv"),
                 lambda tmp: np.savetxt(tmp, features, fmt="%.6g", delimiter="\t"))
        self.entries[stem] = step
        self._write_config()

    def _write_config(self) -> None:
        from google.protobuf import text_format
        from tensorboard.plugins import projector

        config = projector.ProjectorConfig()
        for stem, step in sorted(self.entries.items(), key=lambda item: item[1]):
            embedding = config.embeddings.add()
            embedding.tensor_name = f"online-eval queries, step {step}"
            embedding.tensor_path = f"{stem}.tsv"
            embedding.metadata_path = self.metadata
            if self.sprite:
                embedding.sprite.image_path = self.sprite
                embedding.sprite.single_image_dim.extend([THUMBNAIL, THUMBNAIL])
        write_text_atomically(os.path.join(self.logdir, CONFIG_FILE),
                              text_format.MessageToString(config))
