"""Console scripts installed by `pip install .`: metamae-preprocess, metamae-train,
metamae-evaluate, metamae-export, metamae-reproduce, metamae-compare (the same programs as `python -m ...`,
run through commandline/cli.py)."""

from __future__ import annotations

import importlib


def _run(module_name: str) -> None:
    from commandline import cli

    cli.run_program(importlib.import_module(module_name))


def preprocess() -> None:
    _run("pipeline.preprocess")


def train() -> None:
    _run("keras_metamae.train")


def evaluate() -> None:
    _run("keras_metamae.evaluate")


def export() -> None:
    _run("keras_metamae.export")


def reproduce() -> None:
    _run("keras_metamae.reproduce")


def compare() -> None:
    _run("keras_metamae.compare")
