"""keras-metamae: MetaMAE (Jang et al., NeurIPS 2023) in TensorFlow/Keras.

    import keras_metamae as km

    spec = km.load_spec(km.find_dataset("data/processed", "digits"))
    model = km.model_from_spec(spec)                 # MetaMAE with the dataset's preset
    km.embed(model, tokens)                          # [batch, embed_dim] features

See `keras_metamae/api.py` for a full example. Names are imported on first use, so
`import keras_metamae` does not start TensorFlow.
"""

from __future__ import annotations

import importlib

# public name -> (module, attribute)
_EXPORTS = {
    "model_from_spec": ("keras_metamae.api", "model_from_spec"),
    "tokens_only": ("keras_metamae.api", "tokens_only"),
    "embed": ("keras_metamae.api", "embed"),
    "load_encoder": ("keras_metamae.api", "load_encoder"),
    "make_dataset": ("keras_metamae.data", "make_dataset"),
    "find_dataset": ("keras_metamae.data", "find_dataset_dir"),
    "load_spec": ("preprocessing.spec", "load_spec"),
    "MetaMAE": ("keras_metamae.methods.metamae", "MetaMAE"),
    "MAE": ("keras_metamae.methods.mae", "MAE"),
    "RunDir": ("keras_metamae.rundir", "RunDir"),
    "TrainConfig": ("keras_metamae.config", "TrainConfig"),
    "run_training": ("keras_metamae.training.run", "run_training"),
    "run_evaluation": ("keras_metamae.evaluation.run", "run_evaluation"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'keras_metamae' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    return getattr(importlib.import_module(module), attribute)


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
