"""The vision-language domain as the paper runs it (Table 16): 224 x 224 images in 16 x 16
patches + 32 BERT WordPiece caption tokens in one sequence (spec `segments`), the COCO 2017 /
VQA v1 multiple-choice readers (binary vqa and mismatched-caption as DABS), the Beam job, the
model's segmented path (exact second-order gradients in float64), training, evaluation and
the serving signatures (raw caption strings tokenized inside the SavedModel)."""

from __future__ import annotations

import dataclasses
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_metamae.models import losses as losses_lib  # noqa: E402
from keras_metamae.models import masking  # noqa: E402
from keras_metamae import methods  # noqa: E402
from keras_metamae.methods.metamae import MetaMAE  # noqa: E402
from preprocessing import registry, tokenize, wordpiece  # noqa: E402
from preprocessing.datasets import mscoco  # noqa: E402
from preprocessing.datasets.base import BadRecord, RawDataMissing  # noqa: E402
from preprocessing.spec import DatasetSpec, SpecError  # noqa: E402
from tests.conftest import TINY_MODEL  # noqa: E402
from tests.fixtures import make_mscoco, media  # noqa: E402
from tests.gradient_checks import assert_matches_finite_differences  # noqa: E402



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

    with zipfile.ZipFile(os.path.join(raw_dir, "annotations_trainval2017.zip")) as zf:
        return json.loads(zf.read(f"annotations/captions_{subset}.json"))


# === the contract ===
def test_template_is_table_16_and_round_trips():
    spec = registry.get_reader("mscoco", data_dir="/nonexistent").spec_template().validate()
    assert spec.is_segmented and spec.tokenizer == "segments" and not spec.is_discrete
    assert (spec.num_tokens, spec.token_grid, spec.token_dim, spec.vocab_size) == (228, [228], 768, 0)
    image, text = spec.segments
    assert (image["num_tokens"], image["token_dim"], image["token_grid"], image["feature"],
            image["input_shape"], image["patch_shape"]) == (196, 768, [14, 14], "tokens",
                                                             [224, 224, 3], [16, 16])
    # No vocab file here: the size is BERT uncased's (30,522 ids, the paper's "30552 x 32").
    assert (text["num_tokens"], text["vocab_size"], text["token_grid"], text["feature"],
            text["tokenizer"]) == (32, 30522, [32], "text_tokens", "wordpiece")
    assert spec.input_dtype == "uint8"
    assert DatasetSpec.from_dict(json.loads(spec.to_json())) == spec
    assert tokenize.token_layout(spec) == {"num_tokens": 228, "token_dim": 768, "token_grid": [228]}
    # Single-modality specs are untouched: no segments, same feature length.
    digits = registry.get_reader("digits").spec_template()
    assert digits.segments == [] and not digits.is_segmented
    assert digits.tokens_feature_length == digits.num_tokens * digits.token_dim


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(num_tokens=227, token_grid=[227]), "total over segments"),
    (lambda d: d.update(token_grid=[12, 19]), "token_grid"),
    (lambda d: d.update(token_dim=767), "packed width"),
    (lambda d: d.update(tokenizer="patch2d"), 'tokenizer="segments"'),
    (lambda d: d["segments"][1].update(kind="words"), "kind"),
    (lambda d: d["segments"][1].update(feature="tokens"), "used twice"),
    (lambda d: d["segments"][1].update(feature="label"), "reserved"),
    (lambda d: d["segments"][1].update(token_grid=[4, 4]), "product"),
    (lambda d: d["segments"][1].update(vocab_size=0), "vocab_size"),
    (lambda d: d["segments"][0].update(colour="red"), "unknown keys"),
    (lambda d: d.update(segments=d["segments"][:1], num_tokens=196, token_grid=[196]), "at least 2"),
])
def test_validate_rejects_inconsistent_segments(change, message):
    d = registry.get_reader("mscoco", data_dir="/nonexistent").spec_template().to_dict()
    change(d)
    with pytest.raises(SpecError, match=message):
        DatasetSpec.from_dict(d)


def _tiny_vocab_spec(**normalization):
    spec = registry.get_reader("mscoco", data_dir="/nonexistent").spec_template()
    vocab = make_mscoco.VOCAB
    segments = [spec.segments[0], dict(spec.segments[1], vocab_size=len(vocab))]
    return dataclasses.replace(spec, segments=segments, normalization=normalization,
                               extra=dict(spec.extra, vocabulary=vocab))


def test_pack_unpack_and_raw_to_tokens():
    spec = _tiny_vocab_spec(mean=[120.0, 110.0, 100.0], std=[50.0, 60.0, 70.0])
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(2, 224, 224, 3)).astype("uint8")
    text = np.array(["A dog sitting on the bus.", "Two cats!"], dtype=object)
    packed = tokenize.raw_to_tokens({"image": image, "text": text}, spec)
    assert packed.shape == (2, 228, 768) and packed.dtype == tf.float32
    parts = tokenize.unpack_segments(packed, spec)
    expected_image = tokenize.patchify_2d((image - np.array([120.0, 110.0, 100.0]))
                                          / [50.0, 60.0, 70.0], [16, 16])
    np.testing.assert_allclose(parts["image"].numpy(), expected_image.numpy(), rtol=1e-5, atol=1e-4)
    ids = {w: i for i, w in enumerate(make_mscoco.VOCAB)}
    expected = [ids[w] for w in ("[CLS]", "a", "dog", "sit", "##ting", "on", "the", "bus", ".",
                                 "[SEP]")]
    np.testing.assert_array_equal(parts["text"].numpy()[0], expected + [0] * 22)
    # "cats" = cat ##s; the ids are exact in float32 and the padding columns stay 0.
    np.testing.assert_array_equal(parts["text"].numpy()[1, :6],
                                  [ids["[CLS]"], ids["two"], ids["cat"], ids["##s"], ids["!"], ids["[SEP]"]])
    assert np.all(packed.numpy()[:, 196:, 1:] == 0)
    with pytest.raises(ValueError, match="lacks segments"):
        tokenize.raw_to_segment_tokens({"image": image}, spec)
    with pytest.raises(ValueError, match="unpack_segments"):
        tokenize.tokens_to_raw(packed, spec)


def test_wordpiece_layout_matches_bert_encode():
    """`[CLS] a [SEP] (b [SEP]) [PAD]...` with HuggingFace's longest_first truncation."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "c", "x", "##y"]
    cls, sep = 2, 3
    ids = wordpiece.encode(["a b zz", "c " * 20], vocab, 8).numpy()
    np.testing.assert_array_equal(ids[0], [cls, 4, 5, 1, sep, 0, 0, 0])  # unknown word -> [UNK]
    np.testing.assert_array_equal(ids[1], [cls] + [6] * 6 + [sep])
    pairs = wordpiece.encode([["a " * 10, "b " * 10], ["a " * 3, "b " * 10], ["a " * 9, "b " * 2],
                              ["XY", "a"]], vocab, 9).numpy()
    # budget 6: (10, 10) -> 3 + 3; (3, 10) -> 3 + 3; (9, 2) -> 4 + 2; "XY" -> x ##y (lower-cased)
    np.testing.assert_array_equal(pairs[0], [cls, 4, 4, 4, sep, 5, 5, 5, sep])
    np.testing.assert_array_equal(pairs[1], [cls, 4, 4, 4, sep, 5, 5, 5, sep])
    np.testing.assert_array_equal(pairs[2], [cls, 4, 4, 4, 4, sep, 5, 5, sep])
    np.testing.assert_array_equal(pairs[3], [cls, 7, 8, sep, 4, sep, 0, 0, 0])
    # An odd budget on a tie keeps one more of the first text (the second loses first).
    odd = wordpiece.encode([["a " * 10, "b " * 10]], vocab, 10).numpy()[0]
    np.testing.assert_array_equal(odd, [cls, 4, 4, 4, 4, sep, 5, 5, 5, sep])


def test_vocab_file_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        wordpiece.load_vocabulary(str(tmp_path / "nowhere.txt"))
    (tmp_path / "bad.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"bad.txt: not a BERT WordPiece vocabulary"):
        wordpiece.load_vocabulary(str(tmp_path / "bad.txt"))


# === readers ===
def test_mscoco_reader_reads_coco_2017_as_dabs(raw_dir):
    reader, good, bad = _read("mscoco", raw_dir)
    # One malformed JPEG inside train2017.zip, named with the zip member.
    assert len(bad) == 1 and bad[0].path.endswith(
        f"train2017.zip:train2017/{make_mscoco.file_name_2017(make_mscoco.BAD_ID)}")
    assert len(good) == len(make_mscoco.TRAIN_IDS) - 1 + len(make_mscoco.VAL_IDS)
    splits = {r.id: r.split for r in good}
    assert {s for i, s in splits.items() if i.startswith("train2017")} == {"train"}
    assert {s for i, s in splits.items() if i.startswith("val2017")} == {"val", "test"}
    assert reader.vocabulary() == make_mscoco.VOCAB
    # DABS keeps the LAST caption of an image in file order (not the lowest annotation id).
    last_caption = {a["image_id"]: a["caption"] for a in _captions_json(raw_dir, "val2017")["annotations"]}
    for record in good:
        assert record.input["image"].shape == (224, 224, 3) and record.input["image"].dtype == np.uint8
        assert record.label == -1
        if record.id.startswith("val2017"):
            assert str(record.input["text"]) == last_caption[int(record.id.split("-")[1])]
    spec = reader.spec_template()
    assert spec.extra["vocabulary"] == make_mscoco.VOCAB
    assert spec.segments[1]["vocab_size"] == len(make_mscoco.VOCAB)


def test_dabs_image_transform_crops_the_centre():
    # A 100 x 300 (w x h) image: red top third, green middle, blue bottom. DABS stretches it to
    # 480 x 640 and keeps rows 80..560, so the top and bottom rows of the 224 x 224 result are
    # still red / blue but the middle one is green.
    pixels = np.zeros((300, 100, 3), np.uint8)
    pixels[:100, :, 0] = pixels[100:200, :, 1] = pixels[200:, :, 2] = 255
    out = mscoco.dabs_image(media.image_bytes(pixels, "PNG"))
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert out[2, 112].argmax() == 0 and out[112, 112].argmax() == 1 and out[221, 112].argmax() == 2
    # Without the crop the first red row would be at 0 and red would be 1/3 of the rows;
    # with it red covers (213 - 80) / 480 of them.
    red_rows = (out[:, 112, 0] > 128).sum()
    assert abs(red_rows - 224 * (213.3 - 80) / 480) <= 2


def test_mismatched_caption_pairs_are_deterministic_and_really_mismatched(raw_dir):
    reader, good, bad = _read("mismatched-caption", raw_dir)
    _, again, _ = _read("mismatched-caption", raw_dir)
    assert [(r.id, r.label, str(r.input["text"])) for r in good] == [
        (r.id, r.label, str(r.input["text"])) for r in again]
    assert len(bad) == 1
    labels = [r.label for r in good]
    assert 0 < sum(labels) < len(labels)  # both classes present
    for record in good:
        subset, image_id = record.id.split("-")[0], int(record.id.split("-")[1])
        per_image = reader.captions()[subset]
        if record.label == 1:
            assert str(record.input["text"]) == per_image[image_id]
        else:
            assert str(record.input["text"]) in [c for i, c in per_image.items() if i != image_id]
            assert str(record.input["text"]) != per_image[image_id]
    spec = reader.spec_template()
    assert (spec.task, spec.num_classes, spec.pretrain_dataset) == ("binary", 2, "mscoco")


def test_vqa_is_binary_question_answer_with_swapped_wrong_choices(raw_dir):
    reader, good, bad = _read("vqa", raw_dir)
    _, again, _ = _read("vqa", raw_dir)
    assert [(r.id, r.label, list(r.input["text"])) for r in good] == [
        (r.id, r.label, list(r.input["text"])) for r in again]  # seeded, deterministic
    spec = reader.spec_template()
    assert (spec.task, spec.num_classes, spec.pretrain_dataset) == ("binary", 2, "mscoco")
    assert spec.segments[1]["input_shape"] == [2] and spec.num_tokens == 228
    assert len(bad) == 1 and "COCO_train2014_" in bad[0].path
    questions, answers = {}, {}
    for subset in ("train2014", "val2014"):
        with open(os.path.join(raw_dir, f"mscoco_{subset}_annotations.json")) as f:
            answers.update({a["question_id"]: a["multiple_choice_answer"]
                            for a in json.load(f)["annotations"]})
        name = f"MultipleChoice_mscoco_{subset}_questions.json"
        if subset == "train2014":
            import zipfile

            with zipfile.ZipFile(os.path.join(raw_dir, "Questions_Train_mscoco.zip")) as zf:
                doc = json.loads(zf.read(name))
        else:
            doc = json.load(open(os.path.join(raw_dir, name)))
        questions.update({q["question_id"]: q for q in doc["questions"]})
    qids = [int(r.id.split("-q")[1]) for r in good]
    assert make_mscoco.NOT_A_CHOICE_QID not in qids  # its answer is not a choice: left out
    bad_image_questions = 2  # the malformed train image's questions are lost with it
    assert len(good) == len(answers) - 1 - bad_image_questions
    for record, qid in zip(good, qids):
        question, answer = (str(t) for t in record.input["text"])
        assert question == questions[qid]["question"]
        assert answer in questions[qid]["multiple_choices"]
        assert (answer == answers[qid]) == (record.label == 1)
    labels = [r.label for r in good]
    assert 0.25 < np.mean(labels) < 0.75  # p = 1/2


def test_raw_data_missing_names_files_urls_and_folder(raw_dir, tmp_path):
    with pytest.raises(RawDataMissing) as e:
        registry.get_reader("mscoco", data_dir=str(tmp_path)).check_raw()
    message = str(e.value)
    assert "train2017.zip" in message and "http://images.cocodataset.org/zips/train2017.zip" in message
    assert str(tmp_path) in message
    # Images but no captions.
    os.makedirs(tmp_path / "val2017")
    (tmp_path / "val2017" / "000000000001.jpg").write_bytes(b"x")
    with pytest.raises(RawDataMissing, match="annotations_trainval2017.zip"):
        registry.get_reader("mscoco", data_dir=str(tmp_path)).check_raw()
    # COCO present but no vocabulary: the error names the file and where it goes.
    coco_only = tmp_path / "coco_only"
    os.makedirs(coco_only)
    for name in ("train2017.zip", "annotations_trainval2017.zip", "train2014.zip"):
        os.symlink(os.path.join(raw_dir, name), coco_only / name)
    with pytest.raises(RawDataMissing) as e:
        registry.get_reader("mscoco", data_dir=str(coco_only)).check_raw()
    assert str(coco_only / "bert-base-uncased-vocab.txt") in str(e.value)
    assert "vocab_file" in str(e.value)
    vocab = os.path.join(raw_dir, "bert-base-uncased-vocab.txt")
    registry.get_reader("mscoco", data_dir=str(coco_only), vocab_file=vocab).check_raw()
    # No VQA files.
    with pytest.raises(RawDataMissing, match="MultipleChoice_mscoco_train2014_questions.json"):
        registry.get_reader("vqa", data_dir=str(coco_only), vocab_file=vocab).check_raw()


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


def _mixed_model(dtype=None, method="metamae", **overrides):
    kwargs = dict(num_tokens=7, token_grid=[7], token_dim=3, segments=SEGMENTS, embed_dim=8,
                  encoder_depth=1, encoder_heads=2, encoder_mlp_dim=16, decoder_dim=8,
                  decoder_depth=1, decoder_heads=2, decoder_mlp_dim=16, projector_hidden_dim=16,
                  projector_dim=8, mask_ratio=0.5, inner_lr=0.5, contrast_weight=0.5,
                  nearby_ratio=0.6, seed=0)
    kwargs.update(overrides)
    if dtype:
        kwargs["dtype"] = dtype
    return methods.get(method).from_settings(**kwargs)


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
    for name in ("mscoco", "mismatched-caption", "vqa"):
        argv = ["--dataset", name, "--raw_data_dir", raw_dir, "--data_dir", out,
                "--num_shards", "2", "--max_bad_fraction", "0.5", "--", "--runner", "FnApiRunner"]
        results[name] = preprocess.run(argv)
    return out, results


def test_beam_job_writes_segment_features_and_tf_data_packs_them(processed, raw_dir):
    from keras_metamae import data

    _, results = processed
    for name, result in results.items():
        spec = result.spec
        assert spec.is_segmented and spec.normalization["source"] == "dabs"
        assert spec.num_tokens == 228 and len(spec.normalization["mean"]) == 3
        assert len(result.bad_records) == 1 and "train20" in result.bad_records[0]["path"]
        assert spec.extra["vocabulary"] == make_mscoco.VOCAB
        train_file = data.split_files(spec, result.version_dir, "train")[0]
        record = next(iter(data.shards(train_file, spec)))
        feature = tf.train.Example.FromString(record.numpy()).features.feature
        assert sorted(feature) == ["id", "label", "text_tokens", "tokens"]
        # The image patches as their uint8 pixels (normalized by the reader).
        assert spec.storage["dtype"] == "uint8"
        assert len(feature["tokens"].bytes_list.value[0]) == 196 * 768
        text = list(feature["text_tokens"].int64_list.value)
        vocab = make_mscoco.VOCAB
        assert len(text) == 32 and text[0] == vocab.index("[CLS]")
        assert text.count(vocab.index("[SEP]")) == (2 if name == "vqa" else 1)
        batch = next(iter(data.make_dataset(spec, result.version_dir, "train", 4, shuffle=False)))
        assert batch["tokens"].shape == (4, 228, 768) and batch["tokens"].dtype == tf.float32
        text = batch["tokens"].numpy()[:, 196:, 0]
        assert np.all(text == np.round(text)) and text.max() < len(vocab)
    assert results["mismatched-caption"].spec.task == "binary"
    assert (results["vqa"].spec.task, results["vqa"].spec.num_classes) == ("binary", 2)
    # The image tokens are DABS's ToTensor pixels: the stored uint8 RGB / 255, in [0, 1].
    spec = results["mscoco"].spec
    raw = {r.id: r.input["image"] for r in registry.get_reader("mscoco", data_dir=raw_dir).read_all()
           if not isinstance(r, BadRecord)}
    batches = list(data.make_dataset(spec, results["mscoco"].version_dir, "train", 1,
                                     shuffle=False, repeat=False))
    assert batches
    for batch in batches:
        image = raw[batch["id"].numpy()[0].decode()]
        expected = image.reshape(14, 16, 14, 16, 3).transpose(0, 2, 1, 3, 4).reshape(196, 768)
        np.testing.assert_array_equal(batch["tokens"].numpy()[0, :196],
                                      expected.astype(np.float32) / np.float32(255))
    # A shard whose text feature has the wrong length is reported with its path.
    bad_spec = dataclasses.replace(spec, segments=[spec.segments[0], dict(spec.segments[1], num_tokens=31)],
                                   num_tokens=227, token_grid=[227])
    with pytest.raises(data.DataError, match="text_tokens"):
        data.make_dataset(bad_spec, results["mscoco"].version_dir, "train", 4)


_LOAD_AND_SERVE = """
import sys, numpy as np, tensorflow as tf
import tensorflow_text  # registers the WordPiece ops the graph runs (as a server must)
inputs = np.load(sys.argv[2], allow_pickle=True)
loaded = tf.saved_model.load(sys.argv[1])
out = loaded.signatures["serving_default"](image=tf.constant(inputs["image"]),
                                           text=tf.constant(inputs["text"].astype(str)))
np.save(sys.argv[3], out["embedding"].numpy())
"""


def test_training_transfer_evaluation_and_export(processed, tmp_path):
    import subprocess
    import sys

    from keras_metamae.evaluation.run import run_evaluation
    from keras_metamae.rundir import RunDir
    from keras_metamae.training.run import run_training

    out, results = processed
    workdir = str(tmp_path / "run")
    summary = run_training(
        "mscoco", dict(TINY_MODEL, steps=2, batch_size=4, log_every=1, checkpoint_every=2,
                       validation_steps=1, warmup_steps=1),
        out, workdir, verbose=0)
    assert summary["final_step"] == 2 and np.isfinite(summary["last"]["loss"])
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert (config["inner_lr"], config["contrast_weight"], config["decoder_depth"],
            config["mask_ratio"]) == (0.5, 0.1, 1, 0.5)  # Table 8 mscoco, tiny decoder depth
    for transfer in ("mismatched-caption", "vqa"):
        record = run_evaluation(workdir, dataset=transfer, epochs=1, batch_size=4,
                                         baseline=False, transfer=True)
        assert record["dataset"] == transfer and 0.0 <= record["value"] <= 1.0

    # The exported signatures: raw uint8 image + raw caption string, and the token tensors.
    export_dirs = [root for root, _, files in os.walk(os.path.join(workdir, "export"))
                   if "saved_model.pb" in files]
    assert len(export_dirs) == 1
    model, spec, _, _ = RunDir(workdir).load_trained_model()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(3, 224, 224, 3)).astype("uint8")
    text = np.array(["A dog sitting on the red bus.", "TWO CATS!", "zebra " * 40], dtype=object)
    expected = model.encoder.features(tokenize.raw_to_tokens({"image": image, "text": text}, spec),
                                      training=False).numpy()
    # serving_default in a fresh process (nothing of this one's tokenizer or model is reused).
    np.savez(tmp_path / "inputs.npz", image=image, text=text)
    subprocess.run([sys.executable, "-c", _LOAD_AND_SERVE, export_dirs[0],
                    str(tmp_path / "inputs.npz"), str(tmp_path / "served.npy")],
                   check=True, timeout=300, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    np.testing.assert_allclose(np.load(tmp_path / "served.npy"), expected, rtol=1e-4, atol=1e-4)
    assert expected.shape == (3, TINY_MODEL["embed_dim"])

    loaded = tf.saved_model.load(export_dirs[0])
    raw_out = loaded.signatures["serving_default"](image=tf.constant(image), text=tf.constant(text.astype(str)))
    assert raw_out["valid"].numpy().all()
    parts = tokenize.raw_to_segment_tokens({"image": image, "text": text}, spec)
    token_out = loaded.signatures["embed_tokens"](tokens=parts["image"], text_tokens=parts["text"])
    np.testing.assert_allclose(raw_out["embedding"].numpy(), token_out["embedding"].numpy(),
                               rtol=1e-5, atol=1e-5)
    features = loaded.signatures["tokens"](image=tf.constant(image), text=tf.constant(text.astype(str)))
    assert features["token_features"].shape == (3, 228, TINY_MODEL["embed_dim"])
    with pytest.raises(tf.errors.InvalidArgumentError, match="text_tokens must have shape"):
        loaded.signatures["embed_tokens"](tokens=parts["image"], text_tokens=parts["text"][:, :5])
