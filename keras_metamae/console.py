"""Console scripts installed by `pip install .`: metamae-preprocess, metamae-train,
metamae-evaluate, metamae-export, metamae-reproduce (the same programs as `python -m ...`)."""

from __future__ import annotations

import importlib
import sys


def _absl_program(module_name: str) -> None:
    from absl import app

    module = importlib.import_module(module_name)
    module.define_flags()
    app.run(module.main)


def preprocess() -> None:
    from pipeline import preprocess as program

    sys.exit(program.main())


def train() -> None:
    _absl_program("keras_metamae.train")


def evaluate() -> None:
    _absl_program("keras_metamae.evaluate")


def export() -> None:
    _absl_program("keras_metamae.export")


def reproduce() -> None:
    _absl_program("keras_metamae.reproduce")
