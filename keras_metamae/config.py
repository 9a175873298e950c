"""Per-dataset presets (paper Table 8 + DABS batch sizes) and the resolved training config.

Each preset states the exact command that uses it. Flags given on the command line override
the preset; the resolved config is written to `<workdir>/config.json` so a run can be repeated.

    # Paper-scale EuroSAT pretraining (GPU): 100k steps, batch 64, alpha 0.1, lambda 1.0
    python -m pipeline.preprocess --dataset eurosat --raw_data_dir data/raw/eurosat
    python -m keras_metamae.train --dataset eurosat --workdir workdirs/eurosat

    # The embedded default (CPU, minutes)
    python -m keras_metamae.train
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from commandline import filesystem
from keras_metamae import methods
from preprocessing.atomic_files import write_text_atomically

# The architecture of paper Table 7: encoder d=256, ff=512, 8 heads, 12 blocks; decoder
# d=128, ff=256, 4 heads, n blocks; projector 256 -> 1024 -> 128.
PAPER_ARCHITECTURE = dict(
    embed_dim=256,
    encoder_depth=12,
    encoder_heads=8,
    encoder_mlp_dim=512,
    decoder_dim=128,
    decoder_heads=4,
    decoder_mlp_dim=256,
    projector_hidden_dim=1024,
    projector_dim=128,
)

# Paper Table 8: (alpha, lambda, decoder depth, P_drop) for MetaMAE; mask ratio and batch
# size from the DABS benchmark. Transfer sets use the preset of their pretraining domain.
TABLE_8 = {
    #             inner_lr contrast decoder_depth dropout mask_ratio batch
    "pamap2":      (0.5, 1.0, 4, 0.1, 0.85, 256),
    "higgs":       (1.0, 1.0, 6, 0.1, 0.50, 256),
    "eurosat":     (0.1, 1.0, 4, 0.0, 0.85, 64),
    "genomics":    (0.1, 0.01, 2, 0.0, 0.50, 32),
    "pfam":        (0.1, 1.0, 4, 0.0, 0.15, 128),
    "librispeech": (0.1, 1.0, 4, 0.0, 0.85, 64),
    "wafermap":    (0.1, 0.1, 6, 0.0, 0.15, 128),
    "imagenet32":  (0.1, 0.1, 4, 0.0, 0.85, 64),
    "mscoco":      (0.5, 0.1, 2, 0.0, 0.50, 64),
}

# The embedded default is 8x8 digits (16 tokens): a model a laptop CPU trains in minutes,
# with the hyper-parameters the paper found to work across modalities (alpha 0.5,
# lambda 0.1; Appendix B, Table 9).
DIGITS_PRESET = dict(
    embed_dim=64,
    encoder_depth=4,
    encoder_heads=4,
    encoder_mlp_dim=128,
    decoder_dim=32,
    decoder_depth=2,
    decoder_heads=4,
    decoder_mlp_dim=64,
    projector_hidden_dim=256,
    projector_dim=64,
    inner_lr=0.5,
    contrast_weight=0.1,
    dropout=0.0,
    mask_ratio=0.5,
    batch_size=64,
    steps=1500,
    # Not the paper's recipe: a 10x larger rate for a 1,500-step demo, so warmed up and
    # decayed to zero (the final weights are not those of a noisy constant-rate step).
    lr_schedule="warmup_cosine",
    warmup_steps=50,
    learning_rate=1e-3,
    checkpoint_every=500,
    log_every=100,
    # Online kNN/probe at steps 0, 300, ..., 1500 on 1,000 training digits against the 191
    # validation ones: 3.3% of `make demo`'s MetaMAE run, 4.4% of its faster MAE run
    # (train_summary.json `online_eval`).
    eval_every=300,
    online_eval_examples=1000,
)


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on. Field names match the command-line flags."""

    dataset: str = "digits"
    preset: str = ""  # which preset the defaults came from (see `preset_name`)
    data_dir: str = ""  # root of processed datasets (preprocess and train --data_dir), absolute
    workdir: str = ""
    model: str = "metamae"  # a pretraining method: keras_metamae/methods/ METHODS
    steps: int = 100_000
    batch_size: int = 64
    seed: int = 0
    # === model (paper Table 7) ===
    embed_dim: int = 256
    encoder_depth: int = 12
    encoder_heads: int = 8
    encoder_mlp_dim: int = 512
    dropout: float = 0.0
    decoder_dim: int = 128
    decoder_depth: int = 4
    decoder_heads: int = 4
    decoder_mlp_dim: int = 256
    projector_hidden_dim: int = 1024
    projector_dim: int = 128
    # === MetaMAE (paper Table 8) ===
    mask_ratio: float = 0.85
    inner_lr: float = 0.5
    contrast_weight: float = 0.1
    nearby_ratio: float = 0.1
    inner_steps: int = 1
    first_order: bool = False
    temperature: float = 0.5
    # === the DABS baselines (keras_metamae/methods/) ===
    # Share of tokens ShED replaces and Capri masks (DABS's `corruption_rate`, 0.15 for every
    # domain); DABS-2.0 MAE masks `mask_ratio` as MetaMAE and MAE do.
    corruption_rate: float = 0.15
    # === optimizer: AdamW at a constant learning rate (paper Appendix A, the reference) ===
    learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    # "constant" | "warmup_cosine" (linear warm-up over warmup_steps to learning_rate, then
    # cosine decay to 0 at `steps`; warmup_steps is used by warmup_cosine only).
    lr_schedule: str = "constant"
    warmup_steps: int = 1000
    clip_norm: float = 0.0  # 0 = off; Keras clips per replica
    # === systems ===
    strategy: str = "auto"  # auto | default | mirrored | multiworker | onedevice
    mixed_precision: str = "float32"  # float32 | bfloat16 | float16
    jit_compile: str = "auto"  # auto (Keras decides; off under a strategy) | on | off
    # TensorFloat-32 matmuls on NVIDIA GPUs that have them (TensorFlow's default). The paper's
    # reference ran full float32: the Table 8 presets turn it off, --allow_tf32 turns it on.
    allow_tf32: bool = True
    # The attention core XLA-compiled in training (keras_metamae/models/layers.py `attention_core`),
    # on every device and under any strategy; false runs the same ops uncompiled.
    xla_attention: bool = True
    # glibc malloc keeps freed host memory for reuse (keras_metamae/training/host_memory.py): fewer page
    # faults per step and per batch read; false leaves the C library's defaults.
    keep_freed_memory: bool = True
    log_every: int = 100
    checkpoint_every: int = 1000
    checkpoint_minutes: float = 30.0
    keep_checkpoints: int = 3
    max_bad_steps: int = 20
    validation_steps: int = 10
    export: bool = True
    # === online evaluation (keras_metamae/evaluation/online.py) ===
    # kNN + converged probe on a fixed labelled subset every this many steps (0: off); at the
    # paper's 100k steps, 20 points plus the random-initialised encoder's at step 0.
    eval_every: int = 5000
    online_eval_examples: int = 2000  # at most this many bank and this many query examples

    def make_model(self, spec):
        """The pretraining method `model` names (`keras_metamae/methods/`), on the tokens of a
        dataset spec, with this config's settings; uncompiled, weights not yet created."""
        return methods.from_spec(self.model, spec, **dataclasses.asdict(self))

    def apply_matmul_precision(self) -> None:
        """`allow_tf32`: TensorFlow runs float32 matmuls as TensorFloat-32 on NVIDIA GPUs that
        have it (Ampere and later) unless told not to; paper presets run full float32, as the
        reference did, in training and in evaluation. No effect on CPUs."""
        import tensorflow as tf

        tf.config.experimental.enable_tensor_float_32_execution(bool(self.allow_tf32))

    def validate(self) -> "TrainConfig":
        def fail(flag, msg):
            raise ValueError(f"--{flag}: {msg}")

        if self.model not in methods.METHOD_NAMES:
            fail("model", f"got {self.model!r}, expected one of {', '.join(methods.METHOD_NAMES)}")
        if not 0.0 < self.mask_ratio < 1.0:
            fail("mask_ratio", f"got {self.mask_ratio}, expected a value in (0, 1)")
        if not 0.0 < self.corruption_rate < 1.0:
            fail("corruption_rate", f"got {self.corruption_rate}, expected a value in (0, 1)")
        if not 0.0 <= self.nearby_ratio <= 1.0:
            fail("nearby_ratio", f"got {self.nearby_ratio}, expected a value in [0, 1]")
        if self.steps < 1:
            fail("steps", f"got {self.steps}, expected >= 1")
        if self.batch_size < 2:
            fail("batch_size", f"got {self.batch_size}, expected >= 2 (contrast needs negatives)")
        if self.inner_steps < 1:
            fail("inner_steps", f"got {self.inner_steps}, expected >= 1")
        if self.decoder_depth < 0:
            fail("decoder_depth", f"got {self.decoder_depth}, expected >= 0")
        if self.embed_dim % self.encoder_heads:
            fail("encoder_heads", f"embed_dim {self.embed_dim} is not divisible by {self.encoder_heads}")
        if self.decoder_dim % self.decoder_heads:
            fail("decoder_heads", f"decoder_dim {self.decoder_dim} is not divisible by {self.decoder_heads}")
        if self.strategy not in ("auto", "default", "mirrored", "multiworker", "onedevice"):
            fail("strategy", f"got {self.strategy!r}")
        if self.mixed_precision not in ("float32", "bfloat16", "float16"):
            fail("mixed_precision", f"got {self.mixed_precision!r}, expected float32|bfloat16|float16")
        if self.lr_schedule not in ("constant", "warmup_cosine"):
            fail("lr_schedule", f"got {self.lr_schedule!r}, expected constant|warmup_cosine")
        if self.warmup_steps < 0:
            fail("warmup_steps", f"got {self.warmup_steps}, expected >= 0")
        if self.jit_compile not in ("auto", "on", "off"):
            fail("jit_compile", f"got {self.jit_compile!r}, expected auto|on|off")
        if self.eval_every < 0:
            fail("eval_every", f"got {self.eval_every}, expected >= 0 (0 turns it off)")
        for flag in ("log_every", "checkpoint_every", "keep_checkpoints", "max_bad_steps",
                     "online_eval_examples"):
            if getattr(self, flag) < 1:
                fail(flag, f"got {getattr(self, flag)}, expected >= 1")
        return self

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    def save(self, directory: str) -> str:
        filesystem.makedirs(directory)
        return write_text_atomically(os.path.join(directory, "config.json"), self.to_json())

    @classmethod
    def load(cls, path: str) -> "TrainConfig":
        d = json.loads(filesystem.read_text(path))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{path}: unknown config fields {unknown}")
        return cls(**d)


# Datasets whose Table 8 row has another name: the paper's WaferMap row is pretrained on the
# unlabeled maps (`wafermap-unlabeled`); the labeled `wafermap` set is its transfer set.
TABLE_8_DOMAIN = {"wafermap-unlabeled": "wafermap"}
GENERIC_PRESET = "generic"


def preset_name(dataset: str, pretrain_dataset: str = "") -> str:
    """Which preset a dataset trains with: "digits", a Table 8 row (the dataset's own, or its
    pretraining domain's for a transfer set), or "generic" for data of the user's own."""
    if dataset == "digits":
        return "digits"
    for name in (dataset, pretrain_dataset):
        name = TABLE_8_DOMAIN.get(name, name)
        if name in TABLE_8:
            return name
    return GENERIC_PRESET


def describe_preset(name: str) -> str:
    """One line saying which preset ran, printed by train and written to config.json."""
    if name == "digits":
        return "digits (embedded default: small model, alpha 0.5, lambda 0.1, warm-up + cosine)"
    if name == GENERIC_PRESET:
        return ("generic (no paper Table 8 row for this dataset: Table 7 architecture, "
                f"alpha {TrainConfig.inner_lr}, lambda {TrainConfig.contrast_weight} as paper "
                f"Table 9, mask {TrainConfig.mask_ratio}; set them by flag)")
    inner_lr, contrast, depth, dropout, mask_ratio, batch = TABLE_8[name]
    return (f"paper Table 8 row {name!r}: alpha {inner_lr}, lambda {contrast}, decoder depth "
            f"{depth}, dropout {dropout}, mask ratio {mask_ratio}, batch {batch}, float32 "
            f"matmuls (no TF32)")


def preset(dataset: str, pretrain_dataset: str = "") -> dict[str, Any]:
    """Preset values for a dataset (a transfer set uses its pretraining domain's row)."""
    name = preset_name(dataset, pretrain_dataset)
    if name == "digits":
        return dict(DIGITS_PRESET, preset=name)
    values: dict[str, Any] = dict(PAPER_ARCHITECTURE, preset=name)
    if name in TABLE_8:
        inner_lr, contrast, depth, dropout, mask_ratio, batch = TABLE_8[name]
        values.update(
            allow_tf32=False,  # the reference's float32 matmuls
            inner_lr=inner_lr,
            contrast_weight=contrast,
            decoder_depth=depth,
            dropout=dropout,
            mask_ratio=mask_ratio,
            batch_size=batch,
        )
    return values


PRESET_NAMES = ("digits", GENERIC_PRESET, *TABLE_8)


# What each field means, with the paper's symbol where it has one: the train command's --help.
FIELD_HELP = {
    "preset": "Take the defaults of this preset (a Table 8 row such as eurosat, generic or "
              "digits) instead of the dataset's own, e.g. for your own multi-spectral tiles.",
    "model": "The pretraining method: metamae, mae, dabs-mae, emix, shed, capri "
             "(keras_metamae/methods/).",
    "steps": "Pretraining steps (the paper: 100k).",
    "batch_size": "Global batch size B (Algorithm 1), split over the replicas.",
    "seed": "Seed of the weights, the masks and the data order.",
    "embed_dim": "Width of the encoder f_theta (Table 7).",
    "encoder_depth": "Transformer blocks of f_theta (Table 7).",
    "encoder_heads": "Attention heads of f_theta (Table 7).",
    "encoder_mlp_dim": "MLP width of f_theta's blocks (Table 7).",
    "dropout": "P_drop of Table 8: dropout in the encoder.",
    "decoder_dim": "Width of the decoder g_phi.",
    "decoder_depth": "Transformer blocks of the decoder g_phi (Table 8's decoder depth).",
    "decoder_heads": "Attention heads of g_phi.",
    "decoder_mlp_dim": "MLP width of g_phi's blocks.",
    "projector_hidden_dim": "Hidden width of the projector h_psi of the contrastive loss.",
    "projector_dim": "Output width of h_psi: z = h_psi(Z) in Eq. 3.",
    "mask_ratio": "Share of tokens masked (the query set Q_x); Table 8's mask ratio.",
    "inner_lr": "alpha of Eq. 2: the step size of the latent update "
                "Z* = Z - alpha * grad_Z L_MAE (Table 8).",
    "contrast_weight": "lambda of Eq. 5: weight of the task-contrastive loss (Table 8).",
    "nearby_ratio": "r of Algorithm 1: share of Nearby-S tokens added to the inner step's "
                    "support set (the paper: 0.1).",
    "inner_steps": "Latent adaptation steps of Eq. 2 (the paper: 1; Table 15 tries more).",
    "first_order": "Drop the second-order term of the inner step (an ablation; the paper "
                   "differentiates through it).",
    "temperature": "tau of Eq. 4: temperature of the contrastive loss (the paper: 0.5).",
    "corruption_rate": "Share of tokens ShED replaces and Capri masks (DABS's "
                       "corruption_rate, 0.15).",
    "learning_rate": "beta of Algorithm 1: AdamW's learning rate (the paper: 1e-4).",
    "weight_decay": "AdamW's weight decay (the paper: 1e-4).",
    "lr_schedule": "constant (the paper) or warmup_cosine (linear warm-up over "
                   "--warmup_steps, then cosine decay to 0 at --steps).",
    "warmup_steps": "Warm-up steps of --lr_schedule warmup_cosine.",
    "clip_norm": "Clip each replica's gradient to this global norm; 0: off.",
    "strategy": "auto, default, mirrored, multiworker or onedevice (tf.distribute).",
    "mixed_precision": "float32, bfloat16 or float16 compute (variables stay float32).",
    "jit_compile": "auto (Keras decides; off under a strategy), on or off.",
    "allow_tf32": "TensorFloat-32 matmuls on NVIDIA GPUs; the paper presets turn it off.",
    "xla_attention": "XLA-compile the attention core (false: the same ops uncompiled).",
    "keep_freed_memory": "Let glibc keep freed host memory for reuse (fewer page faults).",
    "log_every": "Steps per logged chunk: TensorBoard scalars, validation, progress.",
    "checkpoint_every": "Checkpoint every this many steps (and at the end).",
    "checkpoint_minutes": "Also checkpoint when this many minutes have passed.",
    "keep_checkpoints": "How many of the newest checkpoints to keep.",
    "max_bad_steps": "Stop after this many consecutive steps with a non-finite loss.",
    "validation_steps": "Validation batches at each --log_every (the same ones each time).",
    "export": "Export the encoder as a SavedModel at the end.",
    "eval_every": "kNN + linear probe on a labelled subset every this many steps; 0: off.",
    "online_eval_examples": "Examples in online evaluation's bank and query sets (at most).",
}


def resolve(dataset: str, overrides: dict[str, Any], pretrain_dataset: str = "") -> TrainConfig:
    """Defaults <- preset(dataset) <- explicit overrides (flags the user actually set).

    `--preset NAME` picks a preset explicitly (e.g. the `eurosat` row for your own
    multi-spectral tiles); otherwise the dataset's own row, its pretraining domain's, or generic.
    """
    chosen = overrides.get("preset")
    if chosen and chosen not in PRESET_NAMES:
        raise ValueError(f"--preset: got {chosen!r}, expected one of {list(PRESET_NAMES)}")
    if chosen == "digits":
        values = preset("digits")
    elif chosen:
        values = preset(chosen if chosen in TABLE_8 else "", "")
        values["preset"] = chosen
    else:
        values = preset(dataset, pretrain_dataset)
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["dataset"] = dataset
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown config fields {unknown}")
    return TrainConfig(**values).validate()
