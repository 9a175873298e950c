"""A training run directory (`--workdir`): its layout, config, dataset spec, checkpoints, the
model rebuilt and restored from them, its exports and evaluation records."""

from keras_metamae.rundir.checkpoints import CheckpointManager
from keras_metamae.rundir.run_dir import RunDir

__all__ = ["CheckpointManager", "RunDir"]
