"""The vision-language domain: mixed image + text token sequences (spec `segments`), the COCO
2014 / VQA v2 readers, the Beam job, the model's segmented path (exact second-order
gradients in float64), training and the serving signatures."""

from __future__ import annotations

import dataclasses
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_metamae import losses as losses_lib  # noqa: E402
from keras_metamae import masking  # noqa: E402
from keras_metamae.metamae import MetaMAE  # noqa: E402
from preprocessing import registry, tokenize  # noqa: E402
from preprocessing.datasets import mscoco  # noqa: E402
from preprocessing.datasets.base import BadRecord, RawDataMissing  # noqa: E402
from preprocessing.spec import DatasetSpec, SpecError  # noqa: E402
from tests.conftest import TINY_MODEL  # noqa: E402
from tests.fixtures import make_mscoco  # noqa: E402
from tests.test_metamae import assert_matches_finite_differences  # noqa: E402

VQA_OPTIONS = {"num_answers": str(make_mscoco.NUM_ANSWERS)}


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory) -> str:
    return make_mscoco.make_raw(str(tmp_path_factory.mktemp("coco")))


def _read(name, raw_dir, **options):
    reader = registry.get_reader(name, data_dir=raw_dir, **options)
    reader.check_raw()
    records = list(reader.read_all())
    good = sorted((r for r in records if not isinstance(r, BadRecord)), key=lambda r: r.id)
    bad = [r for r in records if isinstance(r, BadRecord)]
    return reader, good, bad


def _captions_json(raw_dir, subset):
    import zipfile

    with zipfile.ZipFile(os.path.join(raw_dir, "annotations_trainval2014.zip")) as zf:
        return json.loads(zf.read(f"annotations/captions_{subset}.json"))


# === the contract ===
def test_template_is_a_valid_segmented_spec_and_round_trips():
    spec = registry.get_reader("mscoco", data_dir="/nonexistent").spec_template().validate()
    assert spec.is_segmented and spec.tokenizer == "segments" and not spec.is_discrete
    assert (spec.num_tokens, spec.token_grid, spec.token_dim, spec.vocab_size) == (96, [96], 48, 0)
    image, text = spec.segments
    assert (image["num_tokens"], image["token_dim"], image["token_grid"], image["feature"]) == (
        64, 48, [8, 8], "tokens")
    assert (text["num_tokens"], text["vocab_size"], text["token_grid"], text["feature"]) == (
        32, 10000, [32], "text_tokens")
    assert DatasetSpec.from_dict(json.loads(spec.to_json())) == spec
    assert tokenize.token_layout(spec) == {"num_tokens": 96, "token_dim": 48, "token_grid": [96]}
    # Single-modality specs are untouched: no segments, same feature length.
    digits = registry.get_reader("digits").spec_template()
    assert digits.segments == [] and not digits.is_segmented
    assert digits.tokens_feature_length == digits.num_tokens * digits.token_dim


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(num_tokens=95, token_grid=[95]), "total over segments"),
    (lambda d: d.update(token_grid=[8, 12]), "token_grid"),
    (lambda d: d.update(token_dim=47), "packed width"),
    (lambda d: d.update(tokenizer="patch2d"), 'tokenizer="segments"'),
    (lambda d: d["segments"][1].update(kind="words"), "kind"),
    (lambda d: d["segments"][1].update(feature="tokens"), "used twice"),
    (lambda d: d["segments"][1].update(feature="label"), "reserved"),
    (lambda d: d["segments"][1].update(token_grid=[4, 4]), "product"),
    (lambda d: d["segments"][1].update(vocab_size=0), "vocab_size"),
    (lambda d: d["segments"][0].update(colour="red"), "unknown keys"),
    (lambda d: d.update(segments=d["segments"][:1], num_tokens=64, token_grid=[64]), "at least 2"),
])
def test_validate_rejects_inconsistent_segments(change, message):
    d = registry.get_reader("mscoco", data_dir="/nonexistent").spec_template().to_dict()
    change(d)
    with pytest.raises(SpecError, match=message):
        DatasetSpec.from_dict(d)


def test_pack_unpack_and_raw_to_tokens():
    spec = registry.get_reader("mscoco", data_dir="/nonexistent").spec_template()
    spec = dataclasses.replace(spec, normalization={"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.5]})
    rng = np.random.default_rng(0)
    image = rng.uniform(size=(2, 32, 32, 3)).astype("float32")
    text = rng.integers(0, 10000, size=(2, 32))
    packed = tokenize.raw_to_tokens({"image": image, "text": text}, spec)
    assert packed.shape == (2, 96, 48) and packed.dtype == tf.float32
    parts = tokenize.unpack_segments(packed, spec)
    expected_image = tokenize.patchify_2d((image - [0.5, 0.4, 0.3]) / [0.2, 0.25, 0.5], [4, 4])
    np.testing.assert_allclose(parts["image"].numpy(), expected_image.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(parts["text"].numpy(), text)  # ids are exact in float32
    assert np.all(packed.numpy()[:, 64:, 1:] == 0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="vocab_size"):
        tokenize.raw_to_tokens({"image": image, "text": text + 10000}, spec)
    with pytest.raises(ValueError, match="lacks segments"):
        tokenize.raw_to_segment_tokens({"image": image}, spec)
    with pytest.raises(ValueError, match="unpack_segments"):
        tokenize.tokens_to_raw(packed, spec)


def test_words_vocabulary_and_encoding():
    assert mscoco.words("A man's 2 dogs,on the BUS!") == ["a", "man", "s", "dogs", "on", "the", "bus"]
    vocab = mscoco.build_vocabulary(["b a c", "a b", "a z", "y"], vocab_size=5)
    assert vocab == ["<pad>", "<unk>", "a", "b", "c"]  # by count, ties alphabetically, capped
    ids = {w: i for i, w in enumerate(vocab)}
    np.testing.assert_array_equal(mscoco.encode("C, a q", ids, 5), [4, 2, 1, 0, 0])
    np.testing.assert_array_equal(mscoco.encode("a a a a a a a", ids, 3), [2, 2, 2])


# === readers ===
def test_mscoco_reader_reads_the_official_layout(raw_dir):
    reader, good, bad = _read("mscoco", raw_dir)
    # One malformed JPEG inside train2014.zip, named with the zip member.
    assert len(bad) == 1 and bad[0].path.endswith(
        f"train2014.zip:train2014/{make_mscoco.file_name('train2014', make_mscoco.BAD_ID)}")
    assert len(good) == len(make_mscoco.TRAIN_IDS) - 1 + len(make_mscoco.VAL_IDS)
    splits = {r.id: r.split for r in good}
    assert {s for i, s in splits.items() if i.startswith("train2014")} == {"train"}
    assert {s for i, s in splits.items() if i.startswith("val2014")} == {"val", "test"}
    vocab = reader.vocabulary()
    assert vocab[:2] == ["<pad>", "<unk>"] and len(vocab) <= 10000
    ids = {w: i for i, w in enumerate(vocab)}
    first_caption = {a["image_id"]: a["caption"] for a in sorted(
        _captions_json(raw_dir, "val2014")["annotations"], key=lambda a: -a["id"])}
    for record in good:
        assert record.input["image"].shape == (32, 32, 3) and record.input["image"].dtype == np.float32
        assert 0.0 <= record.input["image"].min() and record.input["image"].max() <= 1.0
        assert record.input["text"].shape == (32,) and record.label == -1
        if record.id.startswith("val2014"):
            image_id = int(record.id.split("-")[1])
            np.testing.assert_array_equal(record.input["text"],
                                          mscoco.encode(first_caption[image_id], ids, 32))
    # The vocabulary comes from train captions only and is the same for the transfer sets.
    assert registry.get_reader("vqa", data_dir=raw_dir, **VQA_OPTIONS).vocabulary() == vocab


def test_mismatched_caption_pairs_are_deterministic_and_really_mismatched(raw_dir):
    reader, good, bad = _read("mismatched-caption", raw_dir)
    _, again, _ = _read("mismatched-caption", raw_dir)
    assert [(r.id, r.label, r.input["text"].tolist()) for r in good] == [
        (r.id, r.label, r.input["text"].tolist()) for r in again]
    assert len(bad) == 1
    labels = [r.label for r in good]
    assert 0 < sum(labels) < len(labels)  # both classes present
    ids = reader.word_ids()
    for record in good:
        subset, image_id = record.id.split("-")[0], int(record.id.split("-")[1])
        per_image = reader.captions()[subset]
        own = mscoco.encode(per_image[image_id][0][1], ids, 32)
        if record.label == 1:
            np.testing.assert_array_equal(record.input["text"], own)
        else:
            others = [mscoco.encode(c[0][1], ids, 32).tolist()
                      for i, c in per_image.items() if i != image_id]
            assert record.input["text"].tolist() in others
            assert record.input["text"].tolist() != own.tolist()
    spec = reader.spec_template()
    assert (spec.task, spec.num_classes, spec.pretrain_dataset) == ("binary", 2, "mscoco")


def test_vqa_questions_and_top_k_answer_classes(raw_dir):
    reader, good, bad = _read("vqa", raw_dir, **VQA_OPTIONS)
    spec = reader.spec_template()
    assert spec.task == "multiclass" and spec.num_classes == 3 and spec.pretrain_dataset == "mscoco"
    with open(os.path.join(raw_dir, "v2_mscoco_train2014_annotations.json")) as f:
        train_answers = [a["multiple_choice_answer"] for a in json.load(f)["annotations"]]
    counts = {a: train_answers.count(a) for a in set(train_answers)}
    top = sorted(counts, key=lambda a: (-counts[a], a))[:3]
    assert spec.label_names == top
    answers = {}
    for subset in ("train2014", "val2014"):
        with open(os.path.join(raw_dir, f"v2_mscoco_{subset}_annotations.json")) as f:
            answers.update({a["question_id"]: a["multiple_choice_answer"]
                            for a in json.load(f)["annotations"]})
    kept = [q for q, a in answers.items() if a in top]
    bad_image_questions = 2  # the malformed train image's questions are lost with it
    assert len(good) <= len(kept) and len(good) >= len(kept) - bad_image_questions
    ids = reader.word_ids()
    for record in good:
        qid = int(record.id.split("-q")[1])
        assert spec.label_names[record.label] == answers[qid]
        assert record.input["text"][0] == ids.get("what", mscoco.UNK_ID)
    with pytest.raises(ValueError, match="num_answers"):
        registry.get_reader("vqa", data_dir=raw_dir, num_answers="50").spec_template()


def test_raw_data_missing_names_files_urls_and_folder(raw_dir, tmp_path):
    with pytest.raises(RawDataMissing) as e:
        registry.get_reader("mscoco", data_dir=str(tmp_path)).check_raw()
    message = str(e.value)
    assert "train2014.zip" in message and "http://images.cocodataset.org/zips/train2014.zip" in message
    assert str(tmp_path) in message
    # Images but no captions.
    os.makedirs(tmp_path / "val2014")
    (tmp_path / "val2014" / "COCO_val2014_000000000001.jpg").write_bytes(b"x")
    with pytest.raises(RawDataMissing, match="annotations_trainval2014.zip"):
        registry.get_reader("mscoco", data_dir=str(tmp_path)).check_raw()
    # COCO present but no VQA files.
    coco_only = tmp_path / "coco_only"
    os.makedirs(coco_only)
    for name in ("train2014.zip", "annotations_trainval2014.zip"):
        os.symlink(os.path.join(raw_dir, name), coco_only / name)
    registry.get_reader("mscoco", data_dir=str(coco_only)).check_raw()
    with pytest.raises(RawDataMissing, match="v2_OpenEnded_mscoco_train2014_questions.json"):
        registry.get_reader("vqa", data_dir=str(coco_only)).check_raw()


# === model pieces ===
SEGMENTS = [
    {"name": "image", "kind": "continuous", "num_tokens": 4, "token_dim": 3, "token_grid": [2, 2]},
    {"name": "text", "kind": "discrete", "num_tokens": 3, "vocab_size": 5, "token_grid": [3]},
]


def test_nearby_neighbours_stay_within_each_segment():
    grids = [[2, 2], [3]]
    # Only the last image token (row 1, col 1) is visible: its neighbours are image tokens
    # 1 and 2, never text token 0 that follows it in the sequence.
    visible = tf.constant([[0, 0, 0, 1, 0, 0, 0]], tf.float32)
    np.testing.assert_array_equal(masking.grid_neighbours(visible, grids).numpy(),
                                  [[0, 1, 1, 0, 0, 0, 0]])
    visible = tf.constant([[0, 0, 0, 0, 1, 0, 0]], tf.float32)  # first text token
    np.testing.assert_array_equal(masking.grid_neighbours(visible, grids).numpy(),
                                  [[0, 0, 0, 0, 0, 1, 0]])


def test_segmented_loss_is_the_sum_of_per_kind_means():
    rng = np.random.default_rng(0)
    image_t, image_p = rng.normal(size=(2, 4, 3)), rng.normal(size=(2, 4, 3))
    text_t, text_p = rng.integers(0, 5, size=(2, 3)), rng.normal(size=(2, 3, 5))
    mask = np.array([[1, 0, 1, 1, 0, 1, 0], [0, 0, 0, 1, 1, 1, 1]], np.float64)
    mse = ((image_p - image_t) ** 2).mean(-1)
    logp = text_p - np.log(np.exp(text_p).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, text_t[..., None], -1)[..., 0]
    mi, mt = mask[:, :4], mask[:, 4:]
    expected_batch = (mse * mi).sum() / mi.sum() + (ce * mt).sum() / mt.sum()
    expected_rows = (mse * mi).sum(1) / mi.sum(1) + (ce * mt).sum(1) / mt.sum(1)
    args = ([tf.constant(image_t), tf.constant(text_t)], [tf.constant(image_p), tf.constant(text_p)],
            tf.constant(mask), ["continuous", "discrete"])
    np.testing.assert_allclose(losses_lib.segmented_reconstruction_loss(*args).numpy(), expected_batch)
    np.testing.assert_allclose(
        losses_lib.segmented_per_example_reconstruction_loss(*args).numpy(), expected_rows)
    # Example 1 has no masked image token: its image term is 0, not NaN.
    assert np.isfinite(losses_lib.segmented_per_example_reconstruction_loss(*args).numpy()).all()


def _pack(image, text):
    pad = np.zeros(text.shape + (image.shape[-1],))
    pad[..., 0] = text
    return np.concatenate([image, pad], axis=1)


def _mixed_model(dtype=None, **overrides):
    kwargs = dict(num_tokens=7, token_grid=[7], token_dim=3, segments=SEGMENTS, embed_dim=8,
                  encoder_depth=1, encoder_heads=2, encoder_mlp_dim=16, decoder_dim=8,
                  decoder_depth=1, decoder_heads=2, decoder_mlp_dim=16, projector_hidden_dim=16,
                  projector_dim=8, mask_ratio=0.5, inner_lr=0.5, contrast_weight=0.5,
                  nearby_ratio=0.6, seed=0)
    kwargs.update(overrides)
    if dtype:
        kwargs["dtype"] = dtype
    return MetaMAE(**kwargs)


def _mixed_batch(batch_size=4, seed=0, dtype="float32"):
    rng = np.random.default_rng(seed)
    tokens = _pack(rng.normal(size=(batch_size, 4, 3)), rng.integers(0, 5, size=(batch_size, 3)))
    return {"tokens": tokens.astype(dtype),
            "mask_noise": rng.uniform(size=(batch_size, 7)).astype(dtype),
            "nearby_noise": rng.uniform(size=(batch_size, 7)).astype(dtype)}


def _mixed_checked_variables(model):
    encoder, decoder = model.encoder, model.decoder
    return [
        encoder.segment_embeddings[0].embedding.kernel,  # image patch projection
        encoder.segment_embeddings[1].embedding.embeddings,  # text embedding, tied to the head
        encoder.modality_embedding,
        encoder.blocks[0].norm1.gamma,
        decoder.modality_embedding,
        decoder.heads[0].kernel,  # continuous head
        decoder.heads[1].kernel,  # vocabulary head through the tied matrix
        decoder.heads[1].bias,
    ]


def test_mixed_gradient_matches_float64_finite_differences():
    """Second-order outer gradient of the mixed (MSE + cross-entropy) loss, through the
    per-segment embeddings, modality embeddings, tied vocabulary head and the inner step,
    equals central finite differences in float64."""
    keras.utils.set_random_seed(0)
    model = _mixed_model(dtype="float64")
    model.build()
    batch = _mixed_batch(batch_size=3, dtype="float64")
    inputs = [tf.constant(batch[k]) for k in ("tokens", "mask_noise", "nearby_noise")]
    _, mask = masking.random_masking(inputs[1], 0.5)
    # Both kinds are masked, and Nearby-S adds support tokens.
    assert mask.numpy()[:, :4].sum() > 0 and mask.numpy()[:, 4:].sum() > 0
    assert masking.nearby_mask(mask, model.mask_grid, inputs[2], 0.6).numpy().sum() > 0
    variables = _mixed_checked_variables(model)
    with tf.GradientTape() as tape:
        loss = model.compute_losses(*inputs, training=True)["loss"]
    grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]
    assert loss.dtype == tf.float64
    assert_matches_finite_differences(model, inputs, variables, grads)


def test_mixed_train_step_decreases_loss_and_reconstructs_per_segment():
    keras.utils.set_random_seed(0)
    model = _mixed_model()
    model.compile(optimizer=keras.optimizers.AdamW(3e-3, weight_decay=1e-4))
    batch = _mixed_batch()
    history = [model.train_on_batch(batch, return_dict=True) for _ in range(20)]
    losses = [h["loss"] for h in history]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])
    np.testing.assert_allclose(history[0]["loss"], history[0]["reconstruction_loss"]
                               + 0.5 * history[0]["contrastive_loss"], rtol=1e-5)
    out = model.reconstruct(batch["tokens"], mask_noise=batch["mask_noise"])
    image, text = out["predictions"]
    assert image.shape == (4, 4, 3) and text.shape == (4, 3, 5)
    assert model(batch["tokens"]).shape == (4, 8)
    # Config round trip keeps the segments.
    clone = MetaMAE.from_config(model.get_config())
    assert clone.segments == model.segments and clone.mask_grid == [[2, 2], [3]]


@pytest.mark.parametrize("overrides", [dict(decoder_depth=0), dict(method="mae"),
                                       dict(method="mae", decoder_depth=0)])
def test_mixed_ablations_run(overrides):
    keras.utils.set_random_seed(0)
    model = _mixed_model(**overrides)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    logs = model.train_on_batch(_mixed_batch(), return_dict=True)
    assert all(np.isfinite(v) for v in logs.values())


def test_mixed_model_rejects_inconsistent_arguments():
    with pytest.raises(ValueError, match="packed width"):
        _mixed_model(num_tokens=8, token_grid=[8])


# === the Beam job, tf.data, training, export ===
@pytest.fixture(scope="module")
def processed(raw_dir, tmp_path_factory):
    from pipeline import preprocess

    out = str(tmp_path_factory.mktemp("processed"))
    results = {}
    for name, options in (("mscoco", {}), ("mismatched-caption", {}), ("vqa", VQA_OPTIONS)):
        argv = ["--dataset", name, "--data_dir", raw_dir, "--output_dir", out,
                "--num_shards", "2", "--max_bad_fraction", "0.5"]
        for key, value in options.items():
            argv += ["--reader_option", f"{key}={value}"]
        results[name] = preprocess.run(argv)
    return out, results


def test_beam_job_writes_segment_features_and_tf_data_packs_them(processed, raw_dir):
    from keras_metamae import data

    _, results = processed
    for name, result in results.items():
        spec = result.spec
        assert spec.is_segmented and spec.normalization["source"] == "pipeline"
        assert len(spec.normalization["mean"]) == 3
        assert len(result.bad_records) == 1 and "COCO_train2014_" in result.bad_records[0]["path"]
        assert spec.extra["vocabulary"][:2] == ["<pad>", "<unk>"]
        train_file = data.split_files(spec, result.version_dir, "train")[0]
        record = next(iter(tf.data.TFRecordDataset(train_file, compression_type="GZIP")))
        feature = tf.train.Example.FromString(record.numpy()).features.feature
        assert sorted(feature) == ["id", "label", "text_tokens", "tokens"]
        assert len(feature["tokens"].float_list.value) == 64 * 48
        assert len(feature["text_tokens"].int64_list.value) == 32
        batch = next(iter(data.make_dataset(spec, result.version_dir, "train", 4, shuffle=False)))
        assert batch["tokens"].shape == (4, 96, 48) and batch["tokens"].dtype == tf.float32
        text = batch["tokens"].numpy()[:, 64:, 0]
        assert np.all(text == np.round(text)) and text.max() < len(spec.extra["vocabulary"])
    assert results["mismatched-caption"].spec.task == "binary"
    assert results["vqa"].spec.num_classes == 3
    # The image statistics are those of the train images (normalized tokens ~ zero mean).
    spec = results["mscoco"].spec
    tokens = np.concatenate([b["tokens"].numpy()[:, :64] for b in data.make_dataset(
        spec, results["mscoco"].version_dir, "train", 1, shuffle=False, repeat=False)])
    np.testing.assert_allclose(tokens.reshape(-1, 3).mean(0), 0.0, atol=1e-4)
    # A shard whose text feature has the wrong length is reported with its path.
    bad_spec = dataclasses.replace(spec, segments=[spec.segments[0], dict(spec.segments[1], num_tokens=31)],
                                   num_tokens=95, token_grid=[95])
    with pytest.raises(data.DataError, match="text_tokens"):
        data.make_dataset(bad_spec, results["mscoco"].version_dir, "train", 4)


def test_training_transfer_evaluation_and_export(processed, tmp_path):
    from keras_metamae import evaluate, train
    from preprocessing.spec import load_spec

    out, results = processed
    workdir = str(tmp_path / "run")
    summary = train.run_training(
        "mscoco", dict(TINY_MODEL, steps=3, batch_size=4, log_every=1, checkpoint_every=3,
                       validation_steps=1, warmup_steps=1),
        out, workdir, verbose=0)
    assert summary["final_step"] == 3 and np.isfinite(summary["last"]["loss"])
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert (config["inner_lr"], config["contrast_weight"], config["decoder_depth"],
            config["mask_ratio"]) == (0.5, 0.1, 1, 0.5)  # Table 8 mscoco, tiny decoder depth
    record = evaluate.run_evaluation(workdir, dataset="mismatched-caption", epochs=1,
                                     batch_size=4, baseline=False, transfer=True)
    assert record["dataset"] == "mismatched-caption" and np.isfinite(record["value"])

    # The exported signatures: raw image + caption ids, and the two token tensors.
    export_dirs = [os.path.join(root) for root, _, files in os.walk(os.path.join(workdir, "export"))
                   if "saved_model.pb" in files]
    assert len(export_dirs) == 1
    loaded = tf.saved_model.load(export_dirs[0])
    spec = load_spec(results["mscoco"].version_dir)
    rng = np.random.default_rng(0)
    image = rng.uniform(size=(2, 32, 32, 3)).astype("float32")
    text = rng.integers(0, len(spec.extra["vocabulary"]), size=(2, 32)).astype("int64")
    raw_out = loaded.signatures["serving_default"](image=tf.constant(image), text=tf.constant(text))
    parts = tokenize.raw_to_segment_tokens({"image": image, "text": text}, spec)
    token_out = loaded.signatures["embed_tokens"](tokens=parts["image"], text_tokens=parts["text"])
    np.testing.assert_allclose(raw_out["embedding"].numpy(), token_out["embedding"].numpy(),
                               rtol=1e-5, atol=1e-5)
    assert raw_out["embedding"].shape == (2, TINY_MODEL["embed_dim"])
    assert raw_out["valid"].numpy().all()
    features = loaded.signatures["tokens"](image=tf.constant(image), text=tf.constant(text))
    assert features["token_features"].shape == (2, 96, TINY_MODEL["embed_dim"])
    with pytest.raises(tf.errors.InvalidArgumentError, match="text_tokens must have shape"):
        loaded.signatures["embed_tokens"](tokens=parts["image"], text_tokens=parts["text"][:, :5])
