"""The encoder f_theta as a SavedModel that TensorFlow Serving can load, and as `encoder.keras`.

Signatures, all with a dynamic batch dimension:
- `serving_default`: `inputs` = raw examples in the dataset's shape and dtype; applies the
  pipeline's own normalization and tokenizer (the same TF ops), returns `embedding`
  [batch, embed_dim] (mean of the non-CLS output tokens) and `valid` [batch] (False where an
  input holds NaN or Inf: that row's embedding must not be trusted).
- `embed_tokens`: `tokens` = already tokenized input; returns `embedding` and `valid`.
- `tokens`: `inputs` = raw examples; returns `token_features` [batch, num_tokens, embed_dim].
Mixed-token specs (`spec.segments`, e.g. mscoco image + caption) get the same three
signatures with one input per segment instead of `inputs`/`tokens`: see
`build_segmented_archive`.
"""

from __future__ import annotations


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
    A csv table (`custom --format csv`) takes `numeric` float32 and `categorical` string
    cells; NaN in a numeric column that had empty cells gets the pipeline's imputation and
    `<column>:missing` token in the graph (`categorical` is absent when the csv has no
    categorical column).
    """
    import keras
    import tensorflow as tf

    from preprocessing import tokenize

    segments = spec.segments
    names = [s["name"] for s in segments]

    def dtype_of(seg, raw):
        if seg["kind"] == "discrete":
            # Raw text for a WordPiece segment: tokenized in the graph.
            text = seg.get("tokenizer") in ("wordpiece", "column_vocab")  # categorical cells
            return tf.string if raw and text else tf.int64
        return tf.as_dtype(spec.input_dtype) if raw else tf.float32

    def token_shape(seg):
        if seg["kind"] == "discrete":
            return [int(seg["num_tokens"])]
        return [int(seg["num_tokens"]), int(seg["token_dim"])]

    companions = len(tokenize.missing_numeric(spec))

    def raw_shape(seg):
        shape = list(seg.get("input_shape", token_shape(seg)))
        if companions and seg.get("tokenizer") == "column_vocab":
            # A csv table: the companions of empty numeric cells come from the NaNs in the
            # numeric input (tokenize.complete_table_rows), not from the caller.
            shape = [shape[0] - companions]
        return shape

    raw_segments = [seg for seg in segments if raw_shape(seg) != [0]]
    raw_names = [seg["name"] for seg in raw_segments]
    raw_specs = [tf.TensorSpec([None, *raw_shape(seg)], dtype_of(seg, True), name=seg["name"])
                 for seg in raw_segments]
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
        parts = [check_shape(x, raw_shape(seg), seg["name"]) for x, seg in zip(parts, raw_segments)]
        raw = tokenize.complete_table_rows(dict(zip(raw_names, parts)), spec)
        return list(raw.values()), tokenize.raw_to_tokens(raw, spec)

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
    `[batch, num_tokens, embed_dim]`. Loading it needs `import keras_metamae.models` (the encoder's
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
