"""What every command-line entry point shares."""

from __future__ import annotations

from absl import flags
from absl import logging as absl_logging


def quiet_tensorflow_logs() -> None:
    """TF/Keras log every SavedModel signature and dataset op at INFO through absl; keep the
    console to progress, results and warnings unless the user asked for --verbosity."""
    if not flags.FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)
