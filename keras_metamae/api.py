"""The short Python API: a model from a spec, training on any `tf.data` pipeline, embeddings.

    import keras_metamae as km

    version_dir = km.find_dataset("data/processed", "digits")       # after pipeline.preprocess
    spec = km.load_spec(version_dir)
    model = km.model_from_spec(spec, steps=200)                      # the preset + your overrides
    train_ds = km.make_dataset(spec, version_dir, "train", model.train_config.batch_size)
    model.fit(km.tokens_only(train_ds), steps_per_epoch=200, epochs=1)
    features = km.embed(model, next(iter(train_ds))["tokens"])       # [batch, embed_dim]

`python -m keras_metamae.train` adds what a long run needs on top of this (checkpoints and
resume, TensorBoard, distribution strategies, the non-finite guard's logs, export).
"""

from __future__ import annotations

from typing import Any


def model_from_spec(spec, **overrides: Any):
    """A compiled pretraining method (MetaMAE unless `model=` names another) for a dataset spec: the dataset's preset (Table 8 row, or its
    pretraining domain's, or generic) with `overrides` (any `TrainConfig` field, e.g.
    `model="mae"`, `steps=1000`, `embed_dim=64`). The resolved config is `model.train_config`."""
    import tensorflow as tf

    from keras_metamae import config as config_lib
    from keras_metamae.training.build import build_model, materialize

    config = config_lib.resolve(spec.name, overrides, spec.pretrain_dataset)
    model = build_model(config, spec, tf.distribute.get_strategy(), config.steps)
    materialize(model, spec)
    model.train_config = config
    return model


def tokens_only(dataset):
    """Batches of {"tokens", "label", "id"} -> {"tokens"}: what `fit` consumes (pretraining
    never sees labels, and string ids cannot be distributed)."""
    return dataset.map(lambda batch: {"tokens": batch["tokens"]})


def embed(model_or_encoder, tokens, training: bool = False):
    """Features of a batch of tokens: the mean of the encoder's non-CLS output tokens, the
    representation the linear probe and the exported `serving_default` use."""
    encoder = getattr(model_or_encoder, "encoder", model_or_encoder)
    return encoder.features(tokens, training=training)


def load_encoder(path: str):
    """The `encoder.keras` of an export version (`<workdir>/export/encoder/<version>/`) as a
    Keras model on tokens, outputs `embedding` and `token_features`, ready to fine-tune.
    Imports the module that registers the encoder's layers first (Keras cannot find them
    otherwise)."""
    import os

    import keras

    import keras_metamae.models  # noqa: F401  (registers Encoder and its layers)

    if os.path.isdir(path):
        path = os.path.join(path, "encoder.keras")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no exported Keras encoder here; exports from before "
                                f"encoder.keras existed can be redone with "
                                f"python -m keras_metamae.export --workdir <workdir>")
    return keras.saving.load_model(path)
