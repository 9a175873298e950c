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

How the shards store the tokens (`storage`, pipeline version 3)
- `{"dtype", "scale", "compression"}`. Continuous tokens are stored *before* normalization, as
  the raw values in token order (each example's `[num_tokens, token_dim]` laid out as
  `preprocessing.tokenize.raw_to_tokens` lays them out), as little-endian `dtype` bytes in one
  `bytes_list` value of the feature `tokens`. `dtype` is the narrowest of `uint8`, `uint16`,
  `int16`, `float32` that holds every value exactly (uint8 pixels, uint16 EuroSAT bands;
  float32 otherwise); `scale` is what the raw value was multiplied by to get an integer
  (255 for [0, 1] pixels, else 1). The reader turns them into the model's tokens with the
  spec's statistics, the same float32 operations as the old pipeline:
  `tokens = (float32(stored) / scale - mean[c]) / std[c]` for the channel `c` of each value
  (the identity normalization "none" skips the last step). Discrete tokens: `dtype` "int64",
  ids in an `int64_list` as before. `compression` is the shards' TFRecord compression (""
  = none: decompressing GZIP cost more than everything else the reader does).
- Empty (specs of pipeline version 2 and older): `tokens` holds the normalized float32 tokens in
  a `float_list`, in GZIP shards; the reader still reads them.

Mixed-token sequences (`segments`, e.g. the vision-language `mscoco` domain)
- `segments` is a list of dicts, one per part of the ONE token sequence, in sequence order:
  `{"name", "kind": "continuous"|"discrete", "num_tokens", "token_grid", "feature",
  "input_shape", "tokenizer", "patch_shape", "token_dim" (continuous) | "vocab_size" (discrete)}`.
  Empty (the default) for every single-modality dataset, which then behaves exactly as before.
  A discrete segment's `tokenizer` may be `"wordpiece"`: its raw input is text (strings
  `[B]`, `input_shape == []`, or pairs `[B, 2]`, `input_shape == [2]`) turned into
  `num_tokens` BERT WordPiece ids with the vocabulary in `extra["vocabulary"]` (index = id).
- With segments: `tokenizer == "segments"`, `num_tokens` = the total over segments,
  `token_grid == [num_tokens]` (the per-segment grids are in the segments),
  `vocab_size == 0` and `token_dim` = the *packed width* `max(1, continuous token_dims)`.
  `input_shape`/`patch_shape` describe the (single) continuous segment, which the
  `normalization` statistics apply to.
- TFRecords: each segment is its own feature named by `feature`: the continuous segment flat
  float32 `[num_tokens*token_dim]` (conventionally `tokens`), a discrete one int64
  `[num_tokens]` (e.g. `text_tokens`).
- In memory (tf.data batches, the model, `embed_tokens`) the segments are *packed* into one
  float32 tensor `[B, num_tokens, token_dim]` (see `preprocessing.tokenize.pack_segments`):
  the rows of a continuous segment hold its values (zero-padded to the packed width), the
  rows of a discrete segment hold the token id in column 0 and zeros elsewhere (ids are exact
  in float32 below 2**24). So every consumer of `batch["tokens"]` keeps working unchanged.

Windows drawn at read time (`windows`, e.g. `pamap2`)
- `{"length": L, "sampling": "group_label", "splits": {split: {"windows_per_epoch": N,
  "records": R}}}`; empty (the default) for every other dataset.
- A split named here stores one record per variable-length *series* (raw, un-normalized
  float32 `[length, C]` in the feature `series`, with `length`, `label`, `id` and `group`; see
  `preprocessing/series_records.py`) instead of token examples. The tf.data reader
  (`keras_metamae/data/windows.py`) draws `L` consecutive steps at a fresh seeded random offset each
  time an example is needed, normalizes and tokenizes them with the spec, so batches are the
  same `{"tokens", "label", "id"}` as for any dataset. `input_shape`, `num_tokens`, ... describe
  the window (`input_shape[0] == L`).
- `sampling` "group_label": a (group, label) pair (PAMAP2: subject x activity) uniformly, then
  one of that pair's windows uniformly (so a pair split over several series keeps its weight).
- `splits[split].num_examples` is `windows_per_epoch`, what one pass yields (the trainer's
  epoch, the probe's feature set); `records` is the number of stored series.

The evaluation protocol (`protocol`)
- Which splits pretraining reads and which the linear probe trains, selects and reports on:
  `{"pretrain": [...], "probe_train": [...], "probe_val": [...], "probe_test": [...]}` plus
  optional `"probe_batch_size"` (DABS's probe batch where it differs from pretraining).
  Every key is optional; a missing one takes the default `pretrain=["train"]`,
  `probe_train=["train"]`, `probe_val=["val"]` (if that split exists, else none),
  `probe_test=["test"]`. So EuroSAT pretrains on `pretrain` and probes on the held-out
  `transfer_train`/`transfer_test`, and AudioMNIST probes on `train` + `val` as DABS does.
- An unlabelled pool beside labelled data (`custom` with an `unlabeled/` folder) is its own
  split, `unlabeled`, read by pretraining only: `{"pretrain": ["train", "unlabeled"]}`.

Pretrain-only datasets (`task == "none"`)
- A dataset without labels (`custom` without labels.npy, a label column, ...): `metric`
  "none", `num_classes` 0, every example's `label` UNLABELED (-1), and a protocol whose probe
  roles are empty lists. Training runs on it without online evaluation; evaluating its
  encoder needs a labelled dataset of the same token layout (`--transfer_dataset`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

SPEC_FILENAME = "spec.json"
# 2: seeded label-independent order inside shards; protocol.
# 3: continuous tokens stored un-normalized in the raw data's dtype, uncompressed (`storage`).
PIPELINE_VERSION = "3"
# What `storage.dtype` may be for continuous tokens; discrete ids are always "int64".
STORAGE_DTYPES = ("uint8", "uint16", "int16", "float32")
SHARD_COMPRESSIONS = ("", "GZIP")

MODALITIES = (
    "image",
    "multispectral_image",
    "time_series",
    "tabular",
    "token",
    "speech",
    "vision_language",
)
# "column_vocab": categorical csv columns, strings -> ids by per-column vocabularies
# (preprocessing/datasets/_custom_table.py).
TOKENIZERS = ("patch1d", "patch2d", "tabular", "discrete", "segments", "column_vocab")
SEGMENT_KINDS = ("continuous", "discrete")
_SEGMENT_KEYS = {"name", "kind", "num_tokens", "token_grid", "feature", "input_shape",
                 "tokenizer", "patch_shape", "token_dim", "vocab_size"}
_RESERVED_FEATURES = ("label", "id")
PROTOCOL_ROLES = ("pretrain", "probe_train", "probe_val", "probe_test")
WINDOW_SAMPLINGS = ("group_label",)
# "none": a pretrain-only dataset (no labels; see "Pretrain-only datasets" above).
TASKS = ("multiclass", "binary", "multilabel", "regression", "per_token_multiclass", "none")
METRICS = ("accuracy", "weighted_f1", "spearman", "auroc", "none")
# The `label` an unlabelled example carries in the shards (never read by pretraining).
UNLABELED = -1


class SpecError(ValueError):
    """A spec.json that is missing, malformed or inconsistent."""


@dataclasses.dataclass
class SplitInfo:
    """One split of a dataset version: its example count and shard file pattern.

    `file_pattern` is relative to the version directory, e.g.
    `train/data-*-of-00004.tfrecord`. `shard_bytes` (version 3 on; empty before) holds each
    shard file's size in shard order: an uncompressed TFRecord file cut at a record boundary
    reads as a shorter valid file, so the reader compares the sizes before training.
    """

    num_examples: int
    file_pattern: str
    num_shards: int
    shard_bytes: list[int] = dataclasses.field(default_factory=list)


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
    # Mixed-token sequences only (see the module docstring); empty for single-modality data.
    segments: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # Which splits pretraining and the linear probe use (see the module docstring).
    protocol: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Splits whose windows are drawn at read time from stored series (see the module docstring).
    windows: dict[str, Any] = dataclasses.field(default_factory=dict)
    # How the shards store the tokens (see the module docstring); empty before version 3.
    storage: dict[str, Any] = dataclasses.field(default_factory=dict)

    # === protocol ===
    def protocol_splits(self, role: str) -> list[str]:
        """The split names `role` (one of PROTOCOL_ROLES) reads, defaults filled in."""
        if role not in PROTOCOL_ROLES:
            raise ValueError(f"role={role!r}, expected one of {PROTOCOL_ROLES}")
        if role in self.protocol:
            return list(self.protocol[role])
        if role == "probe_val":
            return ["val"] if "val" in self.splits else []
        return ["test"] if role == "probe_test" else ["train"]

    @property
    def is_pretrain_only(self) -> bool:
        """True for a dataset without labels: pretraining only, nothing to probe."""
        return self.task == "none"

    @property
    def probe_batch_size(self) -> int:
        """The probe's batch size fixed by the benchmark (0: use the pretraining batch)."""
        return int(self.protocol.get("probe_batch_size", 0))

    # === derived ===
    @property
    def is_discrete(self) -> bool:
        return self.vocab_size > 0

    @property
    def is_segmented(self) -> bool:
        return bool(self.segments)

    @property
    def tokens_feature_length(self) -> int:
        """Length of the flat `tokens` feature in each tf.train.Example (for segmented specs:
        of the segment whose feature is `tokens`, 0 if none)."""
        if self.is_segmented:
            lengths = segment_feature_lengths(self.segments)
            return lengths.get("tokens", 0)
        return self.num_tokens if self.is_discrete else self.num_tokens * self.token_dim

    @property
    def stores_raw_tokens(self) -> bool:
        """True when the shards hold un-normalized tokens in `storage.dtype` (version 3 on);
        False for older versions, whose shards hold the normalized float32 tokens."""
        return bool(self.storage)

    @property
    def storage_dtype(self) -> str:
        """Element type of the stored continuous tokens ("float32" for old versions)."""
        return str(self.storage.get("dtype", "int64" if self.is_discrete else "float32"))

    @property
    def storage_scale(self) -> float:
        return float(self.storage.get("scale", 1.0))

    @property
    def shard_compression(self) -> str:
        """TFRecord compression of the shards: "" (version 3 on) or "GZIP" (older versions)."""
        return str(self.storage.get("compression", "GZIP"))

    @property
    def windowed_splits(self) -> list[str]:
        """The splits that store series to draw windows from (empty for most datasets)."""
        return sorted(self.windows.get("splits", {}))

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
        if (self.task == "none") != (self.metric == "none"):
            fail(f"task={self.task!r} with metric={self.metric!r}: a pretrain-only dataset "
                 f"has both 'none', a labelled one neither")
        if self.task == "none" and (self.num_classes or any(
                self.protocol.get(role, None) != [] for role in PROTOCOL_ROLES[1:])):
            fail("a pretrain-only dataset (task 'none') has num_classes 0 and empty probe "
                 "splits in its protocol")
        if self.segments or self.tokenizer == "segments":
            self._validate_segments(fail)
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
        unknown = sorted(set(self.protocol) - set(PROTOCOL_ROLES) - {"probe_batch_size"})
        if unknown:
            fail(f"protocol has unknown keys {unknown}; expected {PROTOCOL_ROLES} or probe_batch_size")
        for role in PROTOCOL_ROLES:
            names = self.protocol.get(role, [])
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                fail(f"protocol[{role!r}] must be a list of split names, got {names!r}")
            if self.splits:
                missing = [n for n in names if n not in self.splits]
                if missing:
                    fail(f"protocol[{role!r}] names splits {missing} that the spec does not "
                         f"have ({sorted(self.splits)})")
        if self.windows:
            self._validate_windows(fail)
        if self.storage:
            self._validate_storage(fail)
        for name, split in self.splits.items():
            if split.num_examples < 0 or split.num_shards < 1:
                fail(f"split {name!r} has num_examples={split.num_examples}, "
                     f"num_shards={split.num_shards}")
            if split.shard_bytes and len(split.shard_bytes) != split.num_shards:
                fail(f"split {name!r} lists {len(split.shard_bytes)} shard sizes for "
                     f"num_shards={split.num_shards}")
        return self

    def _validate_storage(self, fail) -> None:
        unknown = sorted(set(self.storage) - {"dtype", "scale", "compression"})
        if unknown:
            fail(f"storage has unknown keys {unknown}; expected dtype, scale, compression")
        dtype = self.storage.get("dtype")
        allowed = ("int64",) if self.is_discrete else STORAGE_DTYPES
        if dtype not in allowed:
            fail(f"storage.dtype={dtype!r}, expected one of {allowed} for "
                 f"{'discrete' if self.is_discrete else 'continuous'} tokens")
        scale = self.storage.get("scale", 1.0)
        if not isinstance(scale, (int, float)) or not scale > 0:
            fail(f"storage.scale={scale!r} must be a positive number")
        if self.storage.get("compression", "") not in SHARD_COMPRESSIONS:
            fail(f"storage.compression={self.storage.get('compression')!r}, expected one of "
                 f"{SHARD_COMPRESSIONS}")

    def _validate_windows(self, fail) -> None:
        w = self.windows
        unknown = sorted(set(w) - {"length", "sampling", "splits"})
        if unknown:
            fail(f"windows has unknown keys {unknown}; expected length, sampling, splits")
        if self.is_discrete or self.is_segmented or self.tokenizer != "patch1d":
            fail(f"windows need a continuous patch1d spec (time series), got "
                 f"tokenizer={self.tokenizer!r}")
        if int(w.get("length", 0)) != int(self.input_shape[0]):
            fail(f"windows.length={w.get('length')} must equal input_shape[0]="
                 f"{self.input_shape[0]} (the window is what gets tokenized)")
        if w.get("sampling") not in WINDOW_SAMPLINGS:
            fail(f"windows.sampling={w.get('sampling')!r}, expected one of {WINDOW_SAMPLINGS}")
        splits = w.get("splits")
        if not isinstance(splits, dict) or not splits:
            fail(f"windows.splits must name at least one split, got {splits!r}")
        for name, entry in splits.items():
            if not isinstance(entry, dict) or int(entry.get("windows_per_epoch", 0)) < 1:
                fail(f"windows.splits[{name!r}] needs windows_per_epoch >= 1, got {entry!r}")
            if self.splits and name not in self.splits:
                fail(f"windows.splits names split {name!r} that the spec does not have "
                     f"({sorted(self.splits)})")

    def _validate_segments(self, fail) -> None:
        if not self.segments:
            fail('tokenizer="segments" needs a non-empty `segments` list')
        if self.tokenizer != "segments":
            fail(f'a spec with segments needs tokenizer="segments", got {self.tokenizer!r}')
        if not isinstance(self.segments, list) or len(self.segments) < 2:
            fail(f"segments must be a list of at least 2 dicts, got {self.segments!r}")
        names, features, total, continuous = set(), set(), 0, []
        for i, seg in enumerate(self.segments):
            where = f"segments[{i}]"
            if not isinstance(seg, dict):
                fail(f"{where} must be a dict, got {type(seg).__name__}")
            missing = sorted({"name", "kind", "num_tokens", "token_grid", "feature"} - set(seg))
            if missing:
                fail(f"{where} lacks {missing}")
            unknown = sorted(set(seg) - _SEGMENT_KEYS)
            if unknown:
                fail(f"{where} has unknown keys {unknown}")
            name, kind, feature = seg["name"], seg["kind"], seg["feature"]
            if name in names:
                fail(f"{where}: segment name {name!r} is used twice")
            if feature in features or feature in _RESERVED_FEATURES or not feature:
                fail(f"{where}: feature {feature!r} is empty, reserved or used twice")
            names.add(name)
            features.add(feature)
            if kind not in SEGMENT_KINDS:
                fail(f"{where}: kind={kind!r}, expected one of {SEGMENT_KINDS}")
            n = int(seg["num_tokens"])
            grid = [int(g) for g in seg["token_grid"]]
            product = 1
            for g in grid:
                product *= g
            if n < 1 or len(grid) not in (1, 2) or product != n:
                fail(f"{where}: token_grid={grid} must be 1-D or 2-D with product "
                     f"num_tokens={n} (>= 1)")
            total += n
            token_dim, vocab = int(seg.get("token_dim", 0)), int(seg.get("vocab_size", 0))
            if kind == "continuous":
                if token_dim < 1 or vocab:
                    fail(f"{where}: a continuous segment needs token_dim > 0 and no vocab_size "
                         f"(got token_dim={token_dim}, vocab_size={vocab})")
                continuous.append(token_dim)
            elif vocab < 2 or token_dim:
                fail(f"{where}: a discrete segment needs vocab_size >= 2 and no token_dim "
                     f"(got vocab_size={vocab}, token_dim={token_dim})")
        if len(continuous) > 1:
            fail("at most one continuous segment is supported (normalization is per spec)")
        if total != self.num_tokens:
            fail(f"num_tokens={self.num_tokens} must be the total over segments ({total})")
        if list(self.token_grid) != [self.num_tokens]:
            fail(f"token_grid={self.token_grid} must be [num_tokens]=[{self.num_tokens}] for a "
                 f"segmented spec (the per-segment grids are in segments)")
        packed = max([1] + continuous)
        if self.token_dim != packed or self.vocab_size != 0:
            fail(f"a segmented spec needs token_dim = the packed width {packed} and "
                 f"vocab_size = 0 (got token_dim={self.token_dim}, vocab_size={self.vocab_size})")

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
        from preprocessing.atomic_files import write_text_atomically

        return write_text_atomically(os.path.join(directory, SPEC_FILENAME), self.to_json())


def segment_spec(spec: DatasetSpec, segment: dict[str, Any]) -> DatasetSpec:
    """A single-modality view of one segment of a segmented spec: its tokenizer, shapes and,
    if continuous, the spec's normalization and storage."""
    continuous = segment["kind"] == "continuous"
    return dataclasses.replace(
        spec, name=f"{spec.name}/{segment['name']}",
        input_shape=list(segment.get("input_shape", [segment["num_tokens"]])),
        tokenizer=segment.get("tokenizer", "patch2d" if continuous else "discrete"),
        patch_shape=list(segment.get("patch_shape", [])),
        num_tokens=int(segment["num_tokens"]), token_grid=list(segment["token_grid"]),
        token_dim=int(segment.get("token_dim", 0)), vocab_size=int(segment.get("vocab_size", 0)),
        normalization=spec.normalization if continuous else {},
        storage=(spec.storage if continuous else
                 {"dtype": "int64", "compression": spec.shard_compression}) if spec.storage else {},
        segments=[])


def packed_width(segments: list[dict[str, Any]]) -> int:
    """Width of the packed in-memory token tensor: max(1, continuous token_dims)."""
    return max([1] + [int(s["token_dim"]) for s in segments if s["kind"] == "continuous"])


def token_segments(segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The segments as the encoder sees them: without the raw text shape of a WordPiece
    segment (one caption `[]` and a question + answer pair `[2]` give the same 32 ids), so
    mscoco's encoder transfers to vqa."""
    return [{k: v for k, v in s.items() if not (k == "input_shape" and s.get("tokenizer") == "wordpiece")}
            for s in segments]


def token_layout_difference(spec, other) -> str | None:
    """The first token-contract field (num_tokens, token_dim, vocab_size, segments) in which two
    specs differ, None when an encoder of one reads the other's tokens. Segments compare as the
    encoder sees them (`token_segments`)."""
    for field in ("num_tokens", "token_dim", "vocab_size", "segments"):
        if field == "segments":
            same = token_segments(spec.segments or []) == token_segments(other.segments or [])
        else:
            same = getattr(spec, field) == getattr(other, field)
        if not same:
            return field
    return None


def segment_feature_lengths(segments: list[dict[str, Any]]) -> dict[str, int]:
    """TFRecord feature name -> flat length per example, for each segment."""
    return {s["feature"]: int(s["num_tokens"]) * (int(s["token_dim"]) if s["kind"] == "continuous" else 1)
            for s in segments}


def load_spec(path: str) -> DatasetSpec:
    """Loads a spec from `spec.json` or from the dataset version directory holding it."""
    from commandline import filesystem

    if not path.endswith(SPEC_FILENAME) and filesystem.isdir(path):
        path = os.path.join(path, SPEC_FILENAME)
    if not filesystem.exists(path):
        raise SpecError(
            f"{path}: no dataset spec here. Run `python -m pipeline.preprocess --dataset NAME "
            f"--data_dir DIR` first, and pass the version directory that holds spec.json."
        )
    try:
        d = json.loads(filesystem.read_text(path))
    except json.JSONDecodeError as e:
        raise SpecError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise SpecError(f"{path}: expected a JSON object, got {type(d).__name__}")
    return DatasetSpec.from_dict(d, where=path)
