"""Export the frozen encoder f_theta as a SavedModel that TensorFlow Serving can load.

    python -m keras_metamae.export --workdir workdirs/digits-metamae
    saved_model_cli show --dir workdirs/digits-metamae/export/encoder/1 --all

Layout: `<workdir>/export/encoder/<version>/` with integer versions (TF Serving's model
base path is `<workdir>/export/encoder`). Signatures, all with a dynamic batch dimension:
- `serving_default`: `inputs` = raw examples in the dataset's shape and dtype; applies the
  pipeline's own normalization and tokenizer (the same TF ops), returns `embedding`
  [batch, embed_dim] (mean of the non-CLS output tokens) and `valid` [batch] (False where an
  input holds NaN or Inf: that row's embedding must not be trusted).
- `embed_tokens`: `tokens` = already tokenized input; returns `embedding` and `valid`.
- `tokens`: `inputs` = raw examples; returns `token_features` [batch, num_tokens, embed_dim].
Beside them in each version folder: `spec.json` (the token contract), `export_info.json` (the
checkpoint step) and `encoder.keras`, the encoder as a Keras model on tokens for fine-tuning
(`keras.saving.load_model` after `import keras_metamae`; see `encoder_keras_model`).
Mixed-token specs (`spec.segments`, e.g. mscoco image + caption) get the same three
signatures with one input per segment instead of `inputs`/`tokens`: see
`build_segmented_archive`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid

from absl import flags

from keras_metamae import cli

EXPORT_SUBDIR = os.path.join("export", "encoder")


# Beside each version's saved_model.pb: which checkpoint step it holds.
EXPORT_INFO = "export_info.json"
# In the workdir: the spec of the data the run was trained on (written by train).
WORKDIR_SPEC = "dataset_spec.json"


def _versions(base: str) -> list[int]:
    return sorted(int(d) for d in os.listdir(base) if d.isdigit()) if os.path.isdir(base) else []


def next_version(base: str) -> int:
    return max(_versions(base), default=0) + 1


def export_of_step(workdir: str, step: int) -> str | None:
    """The newest exported version holding checkpoint `step`, if there is one: rerunning a
    finished training command reuses it instead of giving TF Serving an identical new version."""
    base = os.path.join(workdir, EXPORT_SUBDIR)
    for version in reversed(_versions(base)):
        path = os.path.join(base, str(version), EXPORT_INFO)
        try:
            with open(path) as f:
                if json.load(f).get("step") == step:
                    return os.path.dirname(path)
        except (OSError, ValueError):
            continue  # an export from before export_info.json, or unreadable: not a match
    return None


def _all_finite(x, axis_from: int = 1):
    import tensorflow as tf

    if not x.dtype.is_floating:
        return tf.ones(tf.shape(x)[:1], tf.bool)
    finite = tf.math.is_finite(x)
    return tf.reduce_all(tf.reshape(finite, [tf.shape(x)[0], -1]), axis=1)


def checked_shape(x, expected, name: str, dataset: str):
    """`x` after a run-time check that its non-batch shape is `expected`.

    Loaded signatures do not enforce their TensorSpec's shape, and TF Serving passes whatever a
    client sends: a wrong shape is refused here, with the shape that was expected.
    """
    import tensorflow as tf

    want = "[batch, " + ", ".join(str(d) for d in expected) + "]"
    # Compared as text ("8,8,1"): the shape of an input of another rank is a vector of another
    # length, which an element-wise comparison rejects with "Incompatible shapes: [3] vs. [2]"
    # instead of this message.
    got = tf.strings.reduce_join(tf.strings.as_string(tf.shape(x)[1:]), separator=",")
    check = tf.debugging.assert_equal(
        got, tf.constant(",".join(str(d) for d in expected)),
        message=f"{name} must have shape {want} ({x.dtype.name}) for dataset {dataset} (x "
                f"below: the shape it got, after the batch)")
    with tf.control_dependencies([check]):
        x = tf.identity(x)
    return tf.ensure_shape(x, [None, *expected])


def build_archive(encoder, spec):
    """A `keras.export.ExportArchive` holding the encoder and the three signatures."""
    import keras
    import tensorflow as tf

    from preprocessing import tokenize

    if getattr(spec, "segments", None):
        return build_segmented_archive(encoder, spec)
    raw_spec = tf.TensorSpec([None, *spec.input_shape], spec.input_dtype, name="inputs")
    if spec.is_discrete:
        token_spec = tf.TensorSpec([None, spec.num_tokens], tf.int64, name="tokens")
    else:
        token_spec = tf.TensorSpec([None, spec.num_tokens, spec.token_dim], tf.float32,
                                   name="tokens")

    def check_shape(x, expected, name):
        return checked_shape(x, expected, name, spec.name)

    token_shape = [spec.num_tokens] if spec.is_discrete else [spec.num_tokens, spec.token_dim]

    def embed_tokens(tokens):
        tokens = check_shape(tokens, token_shape, "tokens")
        embedding = encoder.features(tokens, training=False)
        return {"embedding": tf.cast(embedding, tf.float32), "valid": _all_finite(tokens)}

    def serve_raw(inputs):
        inputs = check_shape(inputs, list(spec.input_shape), "inputs")
        tokens = tokenize.raw_to_tokens(inputs, spec)
        out = embed_tokens(tokens)
        out["valid"] = tf.logical_and(out["valid"], _all_finite(inputs))
        return out

    def token_features(inputs):
        inputs = check_shape(inputs, list(spec.input_shape), "inputs")
        tokens = tokenize.raw_to_tokens(inputs, spec)
        latent = encoder(tokens, training=False)
        return {"token_features": tf.cast(latent[:, 1:, :], tf.float32)}

    archive = keras.export.ExportArchive()
    archive.track(encoder)
    archive.add_endpoint("serving_default", serve_raw, input_signature=[raw_spec])
    archive.add_endpoint("embed_tokens", embed_tokens, input_signature=[token_spec])
    archive.add_endpoint("tokens", token_features, input_signature=[raw_spec])
    return archive


def build_segmented_archive(encoder, spec):
    """The three signatures for a mixed-token spec (`spec.segments`, e.g. mscoco image + text),
    one input per segment, named after it:
    - `serving_default(image, text)`: raw inputs, e.g. mscoco's `image` uint8 [batch, 224,
      224, 3] RGB (already resized as the reader does) and `text` string [batch], the raw
      caption, tokenized inside the graph by the pipeline's own WordPiece op (vocabulary from
      `spec.json` extra.vocabulary; a pair segment takes string [batch, 2]); returns
      `embedding` and `valid`.
    - `embed_tokens(<feature>...)`: the tokens as stored in the TFRecords, one input per
      segment named by its `feature` (`tokens` float32 [batch, 196, 768] normalized patches,
      `text_tokens` int64 [batch, 32] WordPiece ids); returns `embedding` and `valid`.
    - `tokens(image, text)`: raw inputs; returns `token_features` [batch, num_tokens, embed_dim]
      (the image tokens first, then the text tokens).
    """
    import keras
    import tensorflow as tf

    from preprocessing import tokenize

    segments = spec.segments
    names = [s["name"] for s in segments]

    def dtype_of(seg, raw):
        if seg["kind"] == "discrete":
            # Raw text for a WordPiece segment: tokenized in the graph.
            return tf.string if raw and seg.get("tokenizer") == "wordpiece" else tf.int64
        return tf.as_dtype(spec.input_dtype) if raw else tf.float32

    def token_shape(seg):
        if seg["kind"] == "discrete":
            return [int(seg["num_tokens"])]
        return [int(seg["num_tokens"]), int(seg["token_dim"])]

    raw_specs = [tf.TensorSpec([None, *seg.get("input_shape", token_shape(seg))],
                               dtype_of(seg, True), name=seg["name"]) for seg in segments]
    token_specs = [tf.TensorSpec([None, *token_shape(seg)], dtype_of(seg, False),
                                 name=seg["feature"]) for seg in segments]

    def check_shape(x, expected, name):
        return checked_shape(x, expected, name, spec.name)

    def valid_of(parts):
        valid = None
        for x in parts:
            ok = _all_finite(x)
            valid = ok if valid is None else tf.logical_and(valid, ok)
        return valid

    def embed_tokens(*parts):
        parts = [check_shape(x, token_shape(seg), seg["feature"]) for x, seg in zip(parts, segments)]
        packed = tokenize.pack_segments(dict(zip(names, parts)), spec)
        embedding = encoder.features(packed, training=False)
        return {"embedding": tf.cast(embedding, tf.float32), "valid": valid_of(parts)}

    def raw_tokens(parts):
        parts = [check_shape(x, list(seg.get("input_shape", token_shape(seg))), seg["name"])
                 for x, seg in zip(parts, segments)]
        return parts, tokenize.raw_to_tokens(dict(zip(names, parts)), spec)

    def serve_raw(*parts):
        parts, packed = raw_tokens(parts)
        embedding = encoder.features(packed, training=False)
        return {"embedding": tf.cast(embedding, tf.float32), "valid": valid_of(parts)}

    def token_features(*parts):
        _, packed = raw_tokens(parts)
        latent = encoder(packed, training=False)
        return {"token_features": tf.cast(latent[:, 1:, :], tf.float32)}

    archive = keras.export.ExportArchive()
    archive.track(encoder)
    archive.add_endpoint("serving_default", serve_raw, input_signature=raw_specs)
    archive.add_endpoint("embed_tokens", embed_tokens, input_signature=token_specs)
    archive.add_endpoint("tokens", token_features, input_signature=raw_specs)
    return archive


# Beside each version's SavedModel: the encoder as a Keras model, for fine-tuning in Keras.
KERAS_ENCODER = "encoder.keras"


def encoder_keras_model(encoder, spec):
    """The encoder as a functional `keras.Model` on tokens, saved as `encoder.keras` beside
    each SavedModel version for fine-tuning in Keras (the SavedModel is for serving only).

    Input `tokens`: `[batch, num_tokens, token_dim]` float32 (int64 `[batch, num_tokens]` for
    discrete tokens; the packed float tokens for a mixed-token spec), as stored in the
    TFRecords. Outputs: `embedding` `[batch, embed_dim]`, the mean of the non-CLS output
    tokens (what the linear probe and `serving_default` use), and `token_features`
    `[batch, num_tokens, embed_dim]`. Loading it needs `import keras_metamae` (the encoder's
    layers are registered there).
    """
    import keras

    if spec.is_discrete and not getattr(spec, "segments", None):
        tokens = keras.Input((spec.num_tokens,), dtype="int64", name="tokens")
    else:
        tokens = keras.Input((spec.num_tokens, spec.token_dim), dtype="float32", name="tokens")
    token_features = encoder(tokens)[:, 1:, :]
    embedding = keras.ops.mean(token_features, axis=1)
    return keras.Model(tokens, {"embedding": embedding, "token_features": token_features},
                       name="metamae_encoder")


def export_encoder(model, spec, workdir: str, version: int | None = None,
                   step: int | None = None) -> str:
    """Writes the encoder of a trained `MetaMAE` to `<workdir>/export/encoder/<version>/`.

    The SavedModel is written to a temporary folder and renamed, so TF Serving (which polls
    the base path for new versions) never sees a half-written version.
    """
    base = os.path.join(workdir, EXPORT_SUBDIR)
    os.makedirs(base, exist_ok=True)
    version = version or next_version(base)
    final = os.path.join(base, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"{final} already exists; versions are never overwritten")
    tmp = os.path.join(base, f".tmp-{uuid.uuid4().hex}")
    try:
        build_archive(model.encoder, spec).write_out(tmp, verbose=False)
        encoder_keras_model(model.encoder, spec).save(os.path.join(tmp, KERAS_ENCODER))
        # Written next to the model so a consumer knows the token contract it serves.
        with open(os.path.join(tmp, "spec.json"), "w") as f:
            f.write(spec.to_json())
        if step is None:
            step = int(model.optimizer.iterations.numpy()) if model.optimizer else 0
        with open(os.path.join(tmp, EXPORT_INFO), "w") as f:
            json.dump({"step": int(step)}, f)
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_workdir(workdir: str):
    """(config, the DatasetSpec the encoder was trained on) of a training workdir, from the
    workdir alone: config.json and dataset_spec.json, so that it can be used from anywhere and
    after being moved (a workdir older than the spec copy falls back to the processed data
    config.json names). Raises cli.UserError naming what is missing."""
    from keras_metamae import config as config_lib
    from preprocessing.spec import load_spec

    config_path = os.path.join(workdir, "config.json")
    if not os.path.isfile(config_path):
        raise cli.UserError("not a training workdir, it has no config.json", config_path,
                            "pass the --workdir of a training run (python -m keras_metamae.train "
                            "--workdir DIR)")
    config = config_lib.TrainConfig.load(config_path)
    spec_path = os.path.join(workdir, WORKDIR_SPEC)
    if os.path.isfile(spec_path):
        return config, load_spec(spec_path)
    from keras_metamae import data

    # Absolute as train records it (an older workdir's relative path: from here).
    return config, load_spec(data.find_dataset_dir(os.path.abspath(config.data_dir),
                                                   config.dataset))


def checkpoint_steps(workdir: str) -> list[int]:
    from keras_metamae.checkpoints import CheckpointManager

    return CheckpointManager(os.path.join(workdir, "checkpoints"), create=False).steps()


def load_trained_model(workdir: str):
    """Rebuilds the model of a workdir from its config.json and restores its newest checkpoint."""
    from keras_metamae.checkpoints import CheckpointManager
    from keras_metamae.train import build_model_for_spec

    config, spec = load_workdir(workdir)
    manager = CheckpointManager(os.path.join(workdir, "checkpoints"), create=False)
    if not manager.steps():
        raise cli.UserError("no checkpoint to load", manager.directory,
                            f"train first: python -m keras_metamae.train --workdir {workdir}")
    model = build_model_for_spec(config, spec)
    step = manager.restore(model)
    if step == 0:
        raise cli.UserError("no readable checkpoint to load", manager.directory,
                            "the checkpoint files are damaged; rerun training to write new ones")
    return model, spec, config, step


FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Command-line flags; defined only when run as a program."""
    flags.DEFINE_string("workdir", None, "Training workdir to export the encoder of (required).",
                        flag_values=flag_values)
    flags.DEFINE_integer("version", None, "Version number (default: next free integer).",
                         flag_values=flag_values)
    flags.mark_flag_as_required("workdir", flag_values=flag_values)


def describe_export(workdir: str, version: int | None) -> str:
    """What the export would write (--dry_run); checks what the export itself checks first."""
    config, spec = load_workdir(workdir)
    steps = checkpoint_steps(workdir)
    if not steps:
        raise cli.UserError("no checkpoint to export", os.path.join(workdir, "checkpoints"),
                            f"train first: python -m keras_metamae.train --workdir {workdir}")
    base = os.path.join(workdir, EXPORT_SUBDIR)
    target = os.path.join(base, str(version or next_version(base)))
    existing = export_of_step(workdir, steps[-1])
    return "\n".join([
        f"workdir      {workdir} ({config.model} on {config.dataset}, tokens "
        f"{spec.num_tokens} x {spec.token_dim or spec.vocab_size})",
        f"checkpoint   step {steps[-1]}"
        + (f" (already exported as {existing})" if existing else ""),
        f"writes       {target} (SavedModel, {KERAS_ENCODER}, spec.json, {EXPORT_INFO})",
        "nothing was written (--dry_run)",
    ])


def main(invocation: cli.Invocation):
    """The command (absl): `cli.run_program` parses the flags into FLAGS first."""
    cli.quiet_tensorflow_logs()
    workdir = cli.local_path(FLAGS.workdir, "--workdir")
    version = FLAGS.version
    if version is not None and version < 1:
        raise cli.UserError(f"invalid value {version}", f"--version {version}",
                            "expected a positive integer (TF Serving's version folders)")
    base = os.path.join(workdir, EXPORT_SUBDIR)
    if FLAGS.dry_run:
        print(describe_export(workdir, version))
        return 0
    # Everything that can refuse the export does so before the model is built.
    load_workdir(workdir)
    if not checkpoint_steps(workdir):
        raise cli.UserError("no checkpoint to export", os.path.join(workdir, "checkpoints"),
                            f"train first: python -m keras_metamae.train --workdir {workdir}")
    if version is not None and os.path.exists(os.path.join(base, str(version))):
        raise cli.UserError("that version exists; versions are never overwritten",
                            f"--version {version}", f"omit --version to write the next free "
                            f"one ({next_version(base)})")
    cli.check_writable(base, "--workdir")
    model, spec, _, step = load_trained_model(workdir)
    path = export_encoder(model, spec, workdir, version)
    print(f"Exported the encoder at step {step} to {path}")
    print(f"Inspect: saved_model_cli show --dir {path} --all")


if __name__ == "__main__":
    cli.run_program(sys.modules[__name__])
