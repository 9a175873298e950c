"""`RunDir`: everything a training run directory (`--workdir`) holds, and the one place that
knows its layout.

    <workdir>/
      config.json              the resolved TrainConfig (paths absolute)
      dataset_spec.json        the token contract the run was trained on
      checkpoints/             ckpt-<step>.weights.h5 + latest.json (checkpoints.py)
      tensorboard/             train/, validation/, online_eval/, eval/
      export/encoder/<v>/      SavedModel versions for TF Serving (serving/export.py)
      eval/<dataset>[-random].json   linear-evaluation records
      train_summary.json       the last training command's summary

Train, evaluate, export, the online evaluation and reproduce reach a run directory through a
`RunDir`; nothing else parses one. The workdir alone says what was trained (config.json and
dataset_spec.json), so it can be evaluated and exported from anywhere, also after being moved.
"""

from __future__ import annotations

import json
import os

from commandline import cli, filesystem
from keras_metamae import config as config_lib
from keras_metamae.rundir.checkpoints import CheckpointManager
from preprocessing.atomic_files import write_text_atomically

CONFIG = "config.json"
DATASET_SPEC = "dataset_spec.json"
TRAIN_SUMMARY = "train_summary.json"
EXPORT_SUBDIR = os.path.join("export", "encoder")
# Beside each exported version's saved_model.pb: which checkpoint step it holds.
EXPORT_INFO = "export_info.json"

# Fields that change what a checkpoint contains: a workdir cannot be resumed with others.
ARCHITECTURE_FIELDS = (
    "model", "embed_dim", "encoder_depth", "encoder_heads", "encoder_mlp_dim", "decoder_dim",
    "decoder_depth", "decoder_heads", "decoder_mlp_dim", "projector_hidden_dim",
    "projector_dim", "dataset",
)
# The token contract a checkpoint was trained on; a resumed run must see the same one.
CONTRACT_FIELDS = ("num_tokens", "token_dim", "vocab_size", "token_grid", "input_shape",
                   "segments")


class RunDir:
    """A training run directory. `path` need not exist yet (a run about to start).

    Args:
        path: the workdir.
    """

    def __init__(self, path: str):
        self.path = path

    def __repr__(self) -> str:
        return f"RunDir({self.path!r})"

    # === paths ===
    def file(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    @property
    def config_path(self) -> str:
        return self.file(CONFIG)

    @property
    def spec_path(self) -> str:
        return self.file(DATASET_SPEC)

    @property
    def checkpoint_dir(self) -> str:
        return self.file("checkpoints")

    @property
    def tensorboard_dir(self) -> str:
        return self.file("tensorboard")

    @property
    def eval_tensorboard_dir(self) -> str:
        """Where the linear evaluations' TensorBoard scalars go."""
        return os.path.join(self.tensorboard_dir, "eval")

    @property
    def export_base(self) -> str:
        """TF Serving's model base path: one integer-named folder per exported version."""
        return self.file(EXPORT_SUBDIR)

    @property
    def train_summary_path(self) -> str:
        return self.file(TRAIN_SUMMARY)

    def eval_path(self, dataset: str, encoder_kind: str = "pretrained") -> str:
        """Where the linear evaluation of `dataset` is recorded (the random-encoder baseline
        gets its own file)."""
        suffix = "" if encoder_kind == "pretrained" else f"-{encoder_kind}"
        return self.file("eval", f"{dataset}{suffix}.json")

    # === config and spec ===
    def load_config(self) -> config_lib.TrainConfig:
        """The run's TrainConfig; cli.UserError when this is not a training workdir."""
        if not filesystem.isfile(self.config_path):
            raise cli.UserError("not a training workdir, it has no config.json",
                                self.config_path, "pass the --workdir of a training run "
                                "(python -m keras_metamae.train --workdir DIR)")
        return config_lib.TrainConfig.load(self.config_path)

    def load(self):
        """(config, the DatasetSpec the encoder was trained on), from the workdir alone (a
        workdir older than its spec copy falls back to the processed data config.json names).
        Raises cli.UserError naming what is missing."""
        from preprocessing.spec import load_spec

        config = self.load_config()
        if filesystem.isfile(self.spec_path):
            return config, load_spec(self.spec_path)
        from keras_metamae import data

        # Absolute as train records it (an older workdir's relative path: from here).
        return config, load_spec(data.find_dataset_dir(filesystem.absolute(config.data_dir),
                                                       config.dataset))

    def check_config(self, config: config_lib.TrainConfig) -> None:
        """ValueError when the run recorded here has another architecture than `config`
        (its checkpoints would not load)."""
        if not filesystem.exists(self.config_path):
            return
        previous = config_lib.TrainConfig.load(self.config_path)
        # The dataset first: another dataset's preset differs in its architecture too, and
        # "embed_dim=64 vs 256" would hide that the workdir belongs to another dataset.
        if previous.dataset != config.dataset:
            raise ValueError(
                f"this workdir was trained on {previous.dataset!r}, not on {config.dataset!r} "
                f"({self.config_path}): pass a new --workdir for {config.dataset}, or "
                f"--dataset {previous.dataset} to resume it")
        for name in ARCHITECTURE_FIELDS:
            old, new = getattr(previous, name), getattr(config, name)
            if old != new:
                raise ValueError(
                    f"this workdir was trained with {name}={old!r} but now {name}={new!r} "
                    f"({self.config_path}): use the same flags to resume it, or a new --workdir")

    def record_spec(self, spec, version_dir: str) -> None:
        """Records the dataset's spec here; refuses (ValueError) to resume on a different
        token contract."""
        if filesystem.exists(self.spec_path):
            from preprocessing.spec import load_spec

            previous = load_spec(self.spec_path)  # defaults filled in for older specs
            for name in CONTRACT_FIELDS:
                old, new = getattr(previous, name), getattr(spec, name)
                if old != new:
                    raise ValueError(
                        f"the data has {name}={new} but this workdir was trained on "
                        f"{name}={old} ({self.spec_path} vs {version_dir}/spec.json): use a "
                        f"new --workdir, or the data it was trained on")
            return
        filesystem.makedirs(self.path)
        write_text_atomically(self.spec_path, spec.to_json())

    # === checkpoints and the model ===
    def checkpoints(self, keep: int = 3, create: bool = False) -> CheckpointManager:
        return CheckpointManager(self.checkpoint_dir, keep=keep, create=create)

    def checkpoint_steps(self) -> list[int]:
        return self.checkpoints().steps()

    def check_step(self, step: int | None) -> int:
        """The checkpoint step a command uses: `step` if it is kept, else the newest one.
        cli.UserError naming `--step` or the checkpoint folder otherwise."""
        steps = self.checkpoint_steps()
        if not steps:
            raise cli.UserError("no checkpoint to load", self.checkpoint_dir,
                                f"train first: python -m keras_metamae.train --workdir {self.path}")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise cli.UserError(f"no checkpoint of step {step}", f"--step {step}",
                                f"pass one of the kept steps {steps} ({self.checkpoint_dir})")
        return step

    def load_trained_model(self, step: int | None = None):
        """(model, spec, config, step): the run's model rebuilt from its config, every weight
        created, the newest readable checkpoint restored, or the kept one of `step` (weights
        only: evaluation and export need no optimizer). cli.UserError when there is none."""
        config, spec = self.load()
        self.check_step(step)  # refuses a run without checkpoints, and a step not kept
        manager = self.checkpoints()
        model = config.make_model(spec)
        model.build()
        # Without `step`: the newest readable one (a damaged newest falls back to the one
        # before it).
        step = manager.restore(model, step)
        if step == 0:
            raise cli.UserError("no readable checkpoint to load", manager.directory,
                                "the checkpoint files are damaged; rerun training to write new "
                                "ones")
        return model, spec, config, step

    # === exports ===
    def export_versions(self) -> list[int]:
        """The exported versions. On an object store a version folder is complete only once
        its export_info.json, written last, is there (serving/export.py)."""
        base = self.export_base
        if not filesystem.isdir(base):
            return []
        versions = sorted(int(d) for d in filesystem.listdir(base) if d.isdigit())
        if filesystem.is_url(base):
            versions = [v for v in versions
                        if filesystem.exists(os.path.join(self.export_dir(v), EXPORT_INFO))]
        return versions

    def remove_unfinished_exports(self) -> list[str]:
        """On an object store: removes what a killed export left (a `.tmp-*` build, a version
        folder without its export_info.json); returns the folders removed. Nothing locally,
        where a version appears by one rename."""
        base = self.export_base
        if not filesystem.is_url(base) or not filesystem.isdir(base):
            return []
        complete = set(self.export_versions())
        unfinished = [os.path.join(base, name) for name in filesystem.listdir(base)
                      if name.startswith(".tmp-") or (name.isdigit() and int(name) not in complete)]
        for folder in unfinished:
            filesystem.rmtree(folder)
        return unfinished

    def next_export_version(self) -> int:
        return max(self.export_versions(), default=0) + 1

    def export_dir(self, version: int) -> str:
        return os.path.join(self.export_base, str(version))

    def export_of_step(self, step: int) -> str | None:
        """The newest exported version holding checkpoint `step`, if there is one: rerunning a
        finished training command reuses it instead of giving TF Serving an identical new
        version."""
        for version in reversed(self.export_versions()):
            path = os.path.join(self.export_dir(version), EXPORT_INFO)
            try:
                if json.loads(filesystem.read_text(path)).get("step") == step:
                    return os.path.dirname(path)
            except (OSError, ValueError):  # FileNotFoundError included
                continue  # an export from before export_info.json, or unreadable: not a match
        return None
