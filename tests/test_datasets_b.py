"""Readers for the speech, wafer-map and natural-image DABS datasets, on miniatures written in
the official raw formats (tests/fixtures/make_<name>.py)."""

from __future__ import annotations

import importlib
import json
import os

import numpy as np
import pytest

from preprocessing import registry
from preprocessing.spec import PIPELINE_VERSION
from preprocessing.datasets import _logmel
from preprocessing.datasets.base import BadRecord, RawDataMissing, RawExample

# dataset -> (fixture module, readable examples, tail of the malformed record's path)
MINIATURES = {
    "librispeech": ("make_librispeech", 5, "19-198-0002.flac"),
    "librispeech-dev-clean": ("make_librispeech", 3, None),
    "audio-mnist": ("make_audio_mnist", 4, "data/05/9_05_1.wav"),
    "google-speech": ("make_google_speech", 5, "yes/cafe0003_nohash_0.wav"),
    "fluent-speech-action": ("make_fluent_speech", 4, "bad-0000.wav"),
    "fluent-speech-object": ("make_fluent_speech", 4, "bad-0000.wav"),
    "fluent-speech-location": ("make_fluent_speech", 4, "bad-0000.wav"),
    "voxceleb1": ("make_voxceleb1", 4, "wav/id10002/vidB/00002.wav"),
    "wafermap": ("make_wafermap", 8, "LSWMD.pkl:row 3"),
    "wafermap-unlabeled": ("make_wafermap", 4, None),
    "imagenet32": ("make_imagenet32", 22, "train_data_batch_3:row 1"),
    "cifar10": ("make_cifar10", 15, "cifar-10-batches-py/data_batch_4"),
    "cub": ("make_cub", 3, "017.Cardinal/Cardinal_0002_4.jpg"),
    "vgg-flower": ("make_vgg_flower", 11, "jpg/image_00005.jpg"),
    "dtd": ("make_dtd", 4, "zigzagged/zigzagged_0002.jpg"),
    "traffic-sign": ("make_traffic_sign", 8, "00042/00001_00001.ppm"),
    "aircraft": ("make_aircraft", 4, "images/1000003.jpg"),
}

SPEECH = dict(modality="speech", input_shape=[224, 224, 1], patch_shape=[16, 16], num_tokens=196,
              token_dim=256, token_grid=[14, 14], metric="accuracy")
RGB32 = dict(modality="image", input_shape=[32, 32, 3], patch_shape=[4, 4], num_tokens=64,
             token_dim=48, token_grid=[8, 8])
# Reference table (shared/reference/dabs_datasets.md) for the spec of a not-yet-downloaded dataset.
REFERENCE = {
    "librispeech": dict(SPEECH, num_classes=2338, pretrain_dataset=""),
    "librispeech-dev-clean": dict(SPEECH, num_classes=40, pretrain_dataset="librispeech"),
    "audio-mnist": dict(SPEECH, num_classes=10, pretrain_dataset="librispeech"),
    "google-speech": dict(SPEECH, num_classes=36, pretrain_dataset="librispeech"),
    "fluent-speech-action": dict(SPEECH, num_classes=6, pretrain_dataset="librispeech"),
    "fluent-speech-object": dict(SPEECH, num_classes=14, pretrain_dataset="librispeech"),
    "fluent-speech-location": dict(SPEECH, num_classes=4, pretrain_dataset="librispeech"),
    "voxceleb1": dict(SPEECH, num_classes=1251, pretrain_dataset="librispeech"),
    "wafermap": dict(RGB32, num_classes=9, metric="weighted_f1", pretrain_dataset="wafermap-unlabeled"),
    "wafermap-unlabeled": dict(RGB32, num_classes=9, metric="weighted_f1", pretrain_dataset=""),
    "imagenet32": dict(RGB32, num_classes=1000, metric="accuracy", pretrain_dataset=""),
    "cifar10": dict(RGB32, num_classes=10, metric="accuracy", pretrain_dataset="imagenet32"),
    "cub": dict(RGB32, num_classes=200, metric="accuracy", pretrain_dataset="imagenet32"),
    "vgg-flower": dict(RGB32, num_classes=102, metric="accuracy", pretrain_dataset="imagenet32"),
    "dtd": dict(RGB32, num_classes=47, metric="accuracy", pretrain_dataset="imagenet32"),
    "traffic-sign": dict(RGB32, num_classes=43, metric="accuracy", pretrain_dataset="imagenet32"),
    "aircraft": dict(RGB32, num_classes=100, metric="accuracy", pretrain_dataset="imagenet32"),
}
# The file a RawDataMissing message must name for an empty data_dir.
MISSING_FILE = {
    "librispeech": "train-clean-100.tar.gz", "librispeech-dev-clean": "dev-clean.tar.gz",
    "audio-mnist": "AudioMNIST", "google-speech": "speech_commands_v0.02.tar.gz",
    "fluent-speech-action": "train_data.csv", "fluent-speech-object": "valid_data.csv",
    "fluent-speech-location": "test_data.csv", "voxceleb1": "iden_split.txt",
    "wafermap": "LSWMD.pkl", "wafermap-unlabeled": "LSWMD.pkl", "imagenet32": "Imagenet32_train.zip",
    "cifar10": "cifar-10-python.tar.gz", "cub": "CUB_200_2011.tgz", "vgg-flower": "102flowers.tgz",
    "dtd": "dtd-r1.0.1.tar.gz", "traffic-sign": "GTSRB_Final_Training_Images.zip",
    "aircraft": "fgvc-aircraft-2013b.tar.gz",
}
# Speech datasets with the fixed DABS statistics of their spectrograms.
DABS_SPEECH_STATS = {"librispeech": (-22.924, 12.587), "audio-mnist": (-90.293, 11.799),
                     "google-speech": (-46.847, 19.151), "fluent-speech-action": (-31.809, 13.127),
                     "voxceleb1": (-37.075, 19.776)}


@pytest.fixture(scope="module")
def raw_dirs(tmp_path_factory):
    """Each miniature written once per module: fixture module name -> data_dir."""
    cache = {}

    def get(module_name: str) -> str:
        if module_name not in cache:
            module = importlib.import_module(f"tests.fixtures.{module_name}")
            cache[module_name] = module.make_raw(str(tmp_path_factory.mktemp(module_name)))
        return cache[module_name]

    return get


@pytest.fixture(scope="module")
def records(raw_dirs):
    cache = {}

    def get(name: str):
        if name not in cache:
            reader = registry.get_reader(name, data_dir=raw_dirs(MINIATURES[name][0]))
            reader.check_raw()
            cache[name] = (reader, list(reader.read_all()))
        return cache[name]

    return get


def test_every_dataset_is_registered():
    assert set(MINIATURES) <= set(registry.names())
    assert {"custom_image_folder", "custom_audio_folder"} <= set(registry.names())


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_spec_matches_reference_table(name, tmp_path):
    spec = registry.get_reader(name, data_dir=str(tmp_path)).spec_template().validate()
    expected = REFERENCE[name]
    actual = {k: getattr(spec, k) for k in expected}
    assert actual == expected
    assert spec.tokenizer == "patch2d" and spec.task == "multiclass" and spec.label_shape == []
    assert spec.token_dim == spec.patch_shape[0] * spec.patch_shape[1] * spec.input_shape[2]
    assert spec.label_names == [] or len(spec.label_names) == spec.num_classes


@pytest.mark.parametrize("name", sorted(MINIATURES))
def test_reader_reads_miniature(name, records):
    reader, recs = records(name)
    spec = reader.spec_template()
    good = [r for r in recs if isinstance(r, RawExample)]
    bad = [r for r in recs if isinstance(r, BadRecord)]
    assert len(good) == MINIATURES[name][1]
    for example in good:
        assert list(example.input.shape) == spec.input_shape
        assert example.input.dtype == np.float32
        assert np.all(np.isfinite(example.input))
        if name == "wafermap-unlabeled":
            assert example.label == -1
        else:
            assert 0 <= example.label < spec.num_classes
        assert reader.split_of(example, 42) in {s for s, _ in reader.split_fractions}
    assert len({e.id for e in good}) == len(good)
    bad_tail = MINIATURES[name][2]
    if bad_tail is None:
        assert bad == []
    else:
        assert len([b for b in bad if b.path.endswith(bad_tail)]) == 1, [b.path for b in bad]
        assert all(b.reason for b in bad)


def test_librispeech_labels_come_from_speakers_txt(records):
    reader, recs = records("librispeech")
    # SPEAKERS.TXT lists 19, 60 ('|CBW|Simon' has pipes in the name), 103 and 5000 for the
    # training subsets; labels index that sorted list, whatever audio is present.
    assert reader.spec_template().label_names == ["19", "60", "103", "5000"]
    labels = {r.id.split("-")[0]: r.label for r in recs if isinstance(r, RawExample)}
    assert labels == {"19": 0, "60": 1, "103": 2}
    bad = [b for b in recs if isinstance(b, BadRecord)]
    assert any("777" in b.path and "not listed" in b.reason for b in bad)


def test_librispeech_extracted_tree_reads_like_the_tarballs(records, tmp_path):
    from tests.fixtures import make_librispeech

    _, from_tar = records("librispeech-dev-clean")
    reader = registry.get_reader("librispeech-dev-clean",
                                 data_dir=make_librispeech.make_raw(str(tmp_path), extracted=True))
    from_dir = list(reader.read_all())
    by_id = {r.id: r for r in from_tar}
    assert sorted(by_id) == sorted(r.id for r in from_dir)
    for r in from_dir:
        np.testing.assert_array_equal(r.input, by_id[r.id].input)
        assert r.label == by_id[r.id].label


def _dabs_wafer_image(grid: np.ndarray) -> np.ndarray:
    """DABS's WaferMap pixels, transcribed: grey RGB `int(v * 127.5)`, uint8, PIL image,
    torchvision Resize((32, 32)) (PIL bilinear), ToTensor (/ 255), channels last."""
    from PIL import Image

    pixels = (np.repeat(np.expand_dims(grid, axis=2), 3, axis=2) * 127.5).astype(int)
    image = Image.fromarray(pixels.astype("uint8")).convert("RGB")
    resized = image.resize((32, 32), Image.Resampling.BILINEAR)
    return np.asarray(resized, np.float32) / np.float32(255)


def test_wafermap_image_is_dabs_bilinear_grey_rgb():
    from preprocessing.datasets.wafermap import wafer_to_image

    # By hand: shrinking 64 -> 32 columns, PIL's bilinear filter spans 4 input columns with
    # weights 1/8, 3/8, 3/8, 1/8; a 0 | 2 edge at column 32 (grey 0 | 255) gives 255/8 ~ 32
    # in output column 15 and 255 * 7/8 ~ 223 in column 16 (nearest: only 0 and 255).
    grid = np.zeros((64, 64), np.uint8)
    grid[:, 32:] = 2
    image = wafer_to_image(grid)
    assert image.shape == (32, 32, 3) and image.dtype == np.float32
    expected_columns = np.array([0] * 15 + [32, 223] + [255] * 15, np.float32) / np.float32(255)
    np.testing.assert_array_equal(image, np.broadcast_to(expected_columns[None, :, None], (32, 32, 3)))
    # Against PIL as DABS applies it, shrinking and enlarging, odd sizes, all three die values.
    rng = np.random.default_rng(0)
    for shape in [(45, 37), (20, 26), (32, 32), (7, 90)]:
        grid = rng.integers(0, 3, shape).astype(np.uint8)
        np.testing.assert_array_equal(wafer_to_image(grid), _dabs_wafer_image(grid))
    with pytest.raises(ValueError, match="0, 1 or 2"):
        wafer_to_image(np.full((5, 5), 3))


def test_log_mel_shape_and_db_range():
    sr = 16000
    t = np.arange(sr) / sr
    tone = 0.5 * np.sin(2 * np.pi * 1000.0 * t)
    spec = _logmel.log_mel_spectrogram(tone, sr)
    assert spec.shape == (224, 224, 1) and spec.dtype == np.float32
    # power_to_db with top_db = 80: nothing more than 80 dB below the maximum.
    assert spec.max() - spec.min() <= 80.0 + 1e-3
    # The loudest mel band is the one centred nearest 1 kHz.
    frame = spec[:, 5, 0]
    centres = _logmel._mel_to_hz(np.linspace(0, _logmel._hz_to_mel(sr / 2), 226))[1:-1]
    assert abs(centres[int(np.argmax(frame))] - 1000.0) < 40.0
    # The padded (silent) tail is at the floor; the tone's frames are far above it.
    assert np.allclose(spec[:, -1, 0], spec.min())
    assert frame.max() > spec.min() + 60


def test_log_mel_follows_librosa_conventions():
    # 150,526 samples at hop 672 with centred frames -> 224 frames.
    assert _logmel.power_spectrogram(np.zeros(_logmel.NUM_SAMPLES)).shape == (1025, 224)
    bank = _logmel.mel_filterbank(16000)
    assert bank.shape == (224, 1025) and np.all(bank >= 0)
    assert np.all(bank.max(axis=1) > 0), "a mel filter is empty"
    # Slaney normalization: every filter has unit area in Hz (bin width sr / n_fft).
    np.testing.assert_allclose(bank.sum(axis=1) * 16000 / 2048, 1.0, rtol=0.1)
    # ref = 1.0, not ref = max: a louder signal gives larger values.
    quiet = _logmel.log_mel_spectrogram(0.01 * np.sin(np.arange(8000) / 3.0), 16000)
    loud = _logmel.log_mel_spectrogram(0.5 * np.sin(np.arange(8000) / 3.0), 16000)
    assert loud.max() > quiet.max() + 30
    np.testing.assert_array_equal(_logmel.fit_length(np.ones(200_000))[-1:], [1.0])
    padded = _logmel.fit_length(np.ones(10))
    assert padded.shape == (150_526,) and padded[10:].max() == 0.0


@pytest.mark.parametrize("name", sorted(DABS_SPEECH_STATS))
def test_speech_normalization_is_the_fixed_dabs_statistics(name, records):
    reader, recs = records(name)
    mean, std = DABS_SPEECH_STATS[name]
    assert reader.fixed_normalization == {"mean": [mean], "std": [std]}
    example = next(r for r in recs if isinstance(r, RawExample))
    normalized = (example.input - mean) / std
    # Log-mel values of real-scale audio land within a few std of the DABS statistics.
    assert np.all(np.abs(normalized) < 15) and normalized.std() > 0.1


@pytest.mark.parametrize("name", ["librispeech", "wafermap", "imagenet32", "traffic-sign", "cub"])
def test_splits_are_deterministic(name, records, raw_dirs):
    reader, recs = records(name)
    other = registry.get_reader(name, data_dir=raw_dirs(MINIATURES[name][0]))
    again = [r for r in other.read_all() if isinstance(r, RawExample)]
    good = [r for r in recs if isinstance(r, RawExample)]
    assert [(r.id, reader.split_of(r, 42)) for r in good] == [(r.id, other.split_of(r, 42)) for r in again]


def test_official_splits_are_respected(records):
    reader, recs = records("audio-mnist")
    splits = {r.id: reader.split_of(r, 0) for r in recs if isinstance(r, RawExample)}
    assert splits == {"0_01_0": "train", "3_01_0": "train", "7_04_0": "val", "9_05_0": "test"}
    reader, recs = records("google-speech")
    splits = {r.id: reader.split_of(r, 0) for r in recs if isinstance(r, RawExample)}
    assert splits["no/cafe0001_nohash_1.wav"] == "val" and splits["zero/beef0001_nohash_0.wav"] == "test"
    assert splits["_background_noise_/white_noise.wav"] == "train"


@pytest.mark.parametrize("name", sorted(MISSING_FILE))
def test_raw_data_missing_names_the_file(name, tmp_path):
    reader = registry.get_reader(name, data_dir=str(tmp_path))
    with pytest.raises(RawDataMissing) as info:
        reader.check_raw()
    assert MISSING_FILE[name] in str(info.value)
    assert str(tmp_path) in str(info.value)


def _has_pipeline_entry() -> bool:
    try:
        from pipeline import preprocess  # noqa: F401
    except ImportError:
        return False
    return hasattr(preprocess, "run")


@pytest.mark.skipif(not _has_pipeline_entry(), reason="pipeline.preprocess.run is not available")
@pytest.mark.parametrize("name", ["wafermap", "cifar10", "audio-mnist"])
def test_beam_job_end_to_end(name, raw_dirs, tmp_path):
    from pipeline import preprocess
    from preprocessing.spec import load_spec

    data_dir = raw_dirs(MINIATURES[name][0])
    result = preprocess.run(["--dataset", name, "--raw_data_dir", data_dir, "--data_dir", str(tmp_path),
                             "--num_shards", "1", "--max_bad_fraction", "0.5"])
    spec = load_spec(result.version_dir)
    expected = REFERENCE[name]
    assert {k: getattr(spec, k) for k in expected} == expected
    assert sum(s.num_examples for s in spec.splits.values()) == MINIATURES[name][1]
    assert len(result.bad_records) == 1 and result.bad_records[0]["path"].endswith(MINIATURES[name][2])
    assert len(spec.normalization["mean"]) == spec.input_shape[-1]
    with open(os.path.join(result.version_dir, "spec.json")) as f:
        assert json.load(f)["name"] == name


def test_custom_image_folder(tmp_path):
    from tests.fixtures import make_custom_folders

    data_dir = make_custom_folders.make_raw(str(tmp_path))
    reader = registry.get_reader("custom_image_folder", data_dir=data_dir, image_size=16, patch_size=4)
    spec = reader.spec_template().validate()
    assert (spec.input_shape, spec.num_tokens, spec.token_dim, spec.token_grid) == ([16, 16, 3], 16, 48, [4, 4])
    assert spec.label_names == ["cat", "dog"] and spec.num_classes == 2
    recs = list(reader.read_all())
    good = sorted((r.id, r.label, r.input.shape) for r in recs if isinstance(r, RawExample))
    assert good == [("cat/a.png", 0, (16, 16, 3)), ("cat/b.jpg", 0, (16, 16, 3)), ("dog/c.JPEG", 1, (16, 16, 3))]
    assert [b.path for b in recs if isinstance(b, BadRecord)] == [os.path.join(data_dir, "dog", "broken.png")]
    grey = registry.get_reader("custom_image_folder", data_dir=data_dir, channels=1)
    assert next(r for r in grey.read_all() if isinstance(r, RawExample)).input.shape == (32, 32, 1)
    with pytest.raises(ValueError, match="patch_size"):
        registry.get_reader("custom_image_folder", data_dir=data_dir, image_size=30, patch_size=4)
    with pytest.raises(RawDataMissing, match="one sub-folder per class"):
        registry.get_reader("custom_image_folder", data_dir=str(tmp_path / "empty")).check_raw()


def test_custom_audio_folder(tmp_path):
    from tests.fixtures import make_custom_folders

    data_dir = make_custom_folders.make_audio_raw(str(tmp_path))
    reader = registry.get_reader("custom_audio_folder", data_dir=data_dir)
    spec = reader.spec_template().validate()
    assert spec.input_shape == [224, 224, 1] and spec.num_tokens == 196 and spec.label_names == ["down", "up"]
    recs = list(reader.read_all())
    good = sorted((r.id, r.label) for r in recs if isinstance(r, RawExample))
    assert good == [("down/1.wav", 0), ("up/1.wav", 1), ("up/2.wav", 1)]
    assert [b.path for b in recs if isinstance(b, BadRecord)] == [os.path.join(data_dir, "down", "broken.wav")]



def test_custom_image_folder_through_the_pipeline_flags(tmp_path):
    from pipeline import preprocess
    from tests.fixtures import make_custom_folders

    result = preprocess.run([
        "--dataset", "custom", "--format", "image_folder",
        "--raw_data_dir", make_custom_folders.make_raw(str(tmp_path)),
        "--data_dir", str(tmp_path / "out"), "--num_shards", "1", "--max_bad_fraction", "0.5",
        "--reader_option", "image_size=16", "--reader_option", "patch_size=4", "--name", "pets"])
    assert result.version_dir == os.path.join(str(tmp_path / "out"), "pets", PIPELINE_VERSION)
    assert result.spec.name == "pets" and result.spec.input_shape == [16, 16, 3]
    assert result.num_examples == 3 and len(result.bad_records) == 1
