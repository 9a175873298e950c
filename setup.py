"""`pip install .`: the packages, their dependencies (requirements.txt's pins) and the console
scripts. Also what Beam workers install (Dataflow `--setup_file ./setup.py`)."""

import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
# Test-only tools stay out of the installed package's dependencies.
_DEV_ONLY = ("pytest", "import-linter", "gcp-storage-emulator")


def requirements() -> list[str]:
    with open(os.path.join(HERE, "requirements.txt")) as f:
        lines = [line.split("#", 1)[0].strip() for line in f]
    return [line for line in lines if line and not line.startswith(_DEV_ONLY)]


setup(
    name="keras-metamae",
    version="0.2.0",
    description="MetaMAE (NeurIPS 2023) in TensorFlow/Keras with a Beam preprocessing pipeline",
    packages=find_packages(include=["keras_metamae", "keras_metamae.*", "commandline", "pipeline",
                                    "pipeline.*", "preprocessing", "preprocessing.*"]),
    python_requires=">=3.10",
    install_requires=requirements(),
    entry_points={"console_scripts": [
        "metamae-preprocess = keras_metamae.console:preprocess",
        "metamae-train = keras_metamae.console:train",
        "metamae-evaluate = keras_metamae.console:evaluate",
        "metamae-export = keras_metamae.console:export",
        "metamae-reproduce = keras_metamae.console:reproduce",
        "metamae-compare = keras_metamae.console:compare",
    ]},
)
