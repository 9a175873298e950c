"""Packaging for Beam workers (Dataflow `--setup_file ./setup.py`) and `pip install -e .`."""

from setuptools import find_packages, setup

setup(
    name="keras-metamae",
    version="0.1.0",
    description="MetaMAE (NeurIPS 2023) in TensorFlow/Keras with a Beam preprocessing pipeline",
    packages=find_packages(include=["keras_metamae", "keras_metamae.*", "pipeline",
                                    "pipeline.*", "preprocessing", "preprocessing.*"]),
    python_requires=">=3.10",
)
