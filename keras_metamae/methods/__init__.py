"""Pretraining methods: one module per objective, all on the same encoder.

`--model NAME` picks the class here. Adding a method means adding its module (a
`base.PretrainingMethod` subclass) and one line in `METHODS`. Names resolve to classes on
first use, so the registry can be read (flag checks, help texts) without starting TensorFlow.
"""

from __future__ import annotations

import importlib

# --model name -> (module, class)
METHODS = {
    "metamae": ("keras_metamae.methods.metamae", "MetaMAE"),
    "mae": ("keras_metamae.methods.mae", "MAE"),
    "dabs-mae": ("keras_metamae.methods.dabs_mae", "DABSMAE"),
    "emix": ("keras_metamae.methods.emix", "EMix"),
    "shed": ("keras_metamae.methods.shed", "ShED"),
    "capri": ("keras_metamae.methods.capri", "Capri"),
}

METHOD_NAMES = tuple(METHODS)


def get(name: str) -> type:
    """The class of the method `--model name`; ValueError naming the choices otherwise."""
    if name not in METHODS:
        raise ValueError(f"--model: got {name!r}, expected one of {', '.join(METHOD_NAMES)}")
    module, attribute = METHODS[name]
    return getattr(importlib.import_module(module), attribute)


def from_spec(name: str, spec, **settings):
    """The method `name` on a dataset spec's tokens, its constructor arguments taken from
    `settings` (training-config fields; see `PretrainingMethod.from_spec`)."""
    return get(name).from_spec(spec, **settings)
