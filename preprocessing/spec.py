"""The token contract: `DatasetSpec`, written as `spec.json` next to the shards.

The trainer, the evaluator and the exported serving signature read only this file and the
TFRecord shards; they never import a dataset reader. See DESIGN.md ("The token contract").

Conventions
- `input_shape` is the raw example's shape, channels-last as TensorFlow stores it:
  images `[H, W, C]`, time-series and spectrogram frames `[T, C]`, tabular rows `[F]`,
  discrete sequences `[L]`.
- `patch_shape` is the token size along the leading axes: `[ph, pw]` (2-D), `[p]` (1-D).
- Continuous tokens have `token_dim > 0` and `vocab_size == 0`; discrete tokens the reverse.
- `token_grid` is the token layout used for the Nearby-S support set: `[T]` or `[rows, cols]`.
- `normalization` holds per-channel `mean` and `std` applied *before* tokenization
  (`x - mean) / std`, and `source`: `"pipeline"` (computed on the train split by the Beam
  job) or `"dabs"` (the fixed published statistics). Empty for discrete tokens.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any

SPEC_FILENAME = "spec.json"
PIPELINE_VERSION = "1"

MODALITIES = (
    "image",
    "multispectral_image",
    "time_series",
    "tabular",
    "token",
    "speech",
    "vision_language",
)
TOKENIZERS = ("patch1d", "patch2d", "tabular", "discrete")
TASKS = ("multiclass", "binary", "multilabel", "regression", "per_token_multiclass")
METRICS = ("accuracy", "weighted_f1", "spearman", "auroc")


class SpecError(ValueError):
    """A spec.json that is missing, malformed or inconsistent."""


@dataclasses.dataclass
class SplitInfo:
    """One split of a dataset version: its example count and shard file pattern.

    `file_pattern` is relative to the version directory, e.g.
    `train/data-*-of-00004.tfrecord.gz`.
    """

    num_examples: int
    file_pattern: str
    num_shards: int


@dataclasses.dataclass
class DatasetSpec:
    """Everything the model side needs to know about a preprocessed dataset version."""

    name: str
    modality: str
    input_shape: list[int]
    tokenizer: str
    patch_shape: list[int]
    num_tokens: int
    token_grid: list[int]
    token_dim: int = 0
    vocab_size: int = 0
    input_dtype: str = "float32"
    normalization: dict[str, Any] = dataclasses.field(default_factory=dict)
    task: str = "multiclass"
    metric: str = "accuracy"
    num_classes: int = 0
    label_names: list[str] = dataclasses.field(default_factory=list)
    # Shape of the `label` feature per example: [] for one class id or one regression value,
    # [num_classes] for multilabel, [num_tokens] for per-token labels.
    label_shape: list[int] = dataclasses.field(default_factory=list)
    label_dtype: str = "int64"
    pretrain_dataset: str = ""  # for transfer sets: the DABS pretraining domain they belong to
    splits: dict[str, SplitInfo] = dataclasses.field(default_factory=dict)
    pipeline_version: str = PIPELINE_VERSION
    command: str = ""
    content_hash: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    # === derived ===
    @property
    def is_discrete(self) -> bool:
        return self.vocab_size > 0

    @property
    def tokens_feature_length(self) -> int:
        """Length of the flat `tokens` feature in each tf.train.Example."""
        return self.num_tokens if self.is_discrete else self.num_tokens * self.token_dim

    @property
    def is_image_like(self) -> bool:
        return self.tokenizer == "patch2d"

    # === validation ===
    def validate(self, where: str = "spec") -> "DatasetSpec":
        def fail(msg):
            raise SpecError(f"{where}: {msg}")

        if self.modality not in MODALITIES:
            fail(f"modality={self.modality!r}, expected one of {MODALITIES}")
        if self.tokenizer not in TOKENIZERS:
            fail(f"tokenizer={self.tokenizer!r}, expected one of {TOKENIZERS}")
        if self.task not in TASKS:
            fail(f"task={self.task!r}, expected one of {TASKS}")
        if self.metric not in METRICS:
            fail(f"metric={self.metric!r}, expected one of {METRICS}")
        if (self.token_dim > 0) == (self.vocab_size > 0):
            fail(
                f"exactly one of token_dim ({self.token_dim}) and vocab_size "
                f"({self.vocab_size}) must be > 0"
            )
        grid = 1
        for g in self.token_grid:
            grid *= int(g)
        if len(self.token_grid) not in (1, 2) or grid != self.num_tokens:
            fail(
                f"token_grid={self.token_grid} must be 1-D or 2-D with product "
                f"num_tokens={self.num_tokens}"
            )
        for name, split in self.splits.items():
            if split.num_examples < 0 or split.num_shards < 1:
                fail(f"split {name!r} has num_examples={split.num_examples}, "
                     f"num_shards={split.num_shards}")
        return self

    # === JSON ===
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "spec") -> "DatasetSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SpecError(f"{where}: unknown fields {unknown}")
        d = dict(d)
        try:
            d["splits"] = {k: SplitInfo(**v) for k, v in d.get("splits", {}).items()}
            spec = cls(**d)
        except TypeError as e:
            raise SpecError(f"{where}: {e}") from None
        return spec.validate(where)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save(self, directory: str) -> str:
        """Writes `<directory>/spec.json` atomically (temp file, then rename)."""
        self.validate(os.path.join(directory, SPEC_FILENAME))
        path = os.path.join(directory, SPEC_FILENAME)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".spec-", suffix=".json.tmp")
        with os.fdopen(fd, "w") as f:
            f.write(self.to_json())
        os.replace(tmp, path)
        return path


def load_spec(path: str) -> DatasetSpec:
    """Loads a spec from `spec.json` or from the dataset version directory holding it."""
    if os.path.isdir(path):
        path = os.path.join(path, SPEC_FILENAME)
    if not os.path.exists(path):
        raise SpecError(
            f"{path}: no dataset spec here. Run `python -m pipeline.preprocess --dataset NAME "
            f"--output_dir DIR` first, and pass the version directory that holds spec.json."
        )
    try:
        with open(path) as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise SpecError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise SpecError(f"{path}: expected a JSON object, got {type(d).__name__}")
    return DatasetSpec.from_dict(d, where=path)
