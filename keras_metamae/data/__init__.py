"""Processed data -> `tf.data`: TFRecord shards read against their `spec.json`
(`records.py`), windows drawn at read time from stored series (`windows.py`), and the one
error type (`errors.py`). The trainer, the probes and the online evaluation read data
only through `make_dataset`."""

from keras_metamae.data.errors import DataError
from keras_metamae.data.records import explain_data_errors
from keras_metamae.data.records import feature_spec
from keras_metamae.data.records import find_corrupt_shards
from keras_metamae.data.records import find_dataset_dir
from keras_metamae.data.records import make_dataset
from keras_metamae.data.records import parse_batch
from keras_metamae.data.records import shards
from keras_metamae.data.records import shuffle_buffer_size
from keras_metamae.data.records import split_files

__all__ = ["DataError", "explain_data_errors", "feature_spec", "find_corrupt_shards",
           "find_dataset_dir", "make_dataset", "parse_batch", "shards", "shuffle_buffer_size",
           "split_files"]
