"""Every registered dataset's raw-format miniature through the Beam job; then the trainer and
the linear evaluation on one dataset of each token contract and each task kind.

The miniatures (tests/fixtures/make_<name>.py) hold malformed records, so the job runs with
--max_bad_fraction 0.5 and must report them, each with its path and reason.
"""

from __future__ import annotations

import importlib
import json
import os

import pytest

from preprocessing import registry
from tests import test_datasets_a, test_datasets_b
from tests.conftest import TINY_MODEL

# dataset -> (fixture module, reader flags for the pipeline)
FIXTURES = {name: (case[0], case[1]) for name, case in test_datasets_a.CASES.items()}
FIXTURES.update({name: (importlib.import_module(f"tests.fixtures.{module}"), {})
                 for name, (module, _, _) in test_datasets_b.MINIATURES.items()})
FIXTURES["eurosat"] = (importlib.import_module("tests.fixtures.make_eurosat"), {})
FIXTURES["higgs-transfer"] = FIXTURES["higgs"]
# The vision-language domain (mixed image + text token sequences; the miniature writes its
# own tiny WordPiece vocabulary).
FIXTURES["mscoco"] = (importlib.import_module("tests.fixtures.make_mscoco"), {})
FIXTURES["mismatched-caption"] = FIXTURES["mscoco"]
FIXTURES["vqa"] = FIXTURES["mscoco"]
# Miniatures without a malformed record.
CLEAN_MINIATURES = {"eurosat", "higgs-transfer"} | {
    name for name, (_, _, bad) in test_datasets_b.MINIATURES.items() if bad is None}
# Datasets whose spec depends on the user's flags, or that need no raw files at all.
NOT_MINIATURES = {"custom", "custom_image_folder", "custom_audio_folder", "digits"}

# The splits spec.json names for pretraining and the probe (paper Table 16, dabs_datasets.md):
# Pfam probes on DABS's cut of pfam_valid, TAPE tasks test on `_valid`, the speech transfer sets
# train the probe on train + val, Genomics-ID probes with batch 64.
_TAPE_PROTOCOL = {"pretrain": ["train"], "probe_train": ["train"], "probe_val": [],
                  "probe_test": ["val"]}
_SPEECH_PROTOCOL = {"pretrain": ["train"], "probe_train": ["train", "val"], "probe_val": [],
                    "probe_test": ["test"]}
EXPECTED_PROTOCOL = {
    "pfam": {"pretrain": ["train"], "probe_train": ["transfer_train"], "probe_val": [],
             "probe_test": ["transfer_test"]},
    **{name: _TAPE_PROTOCOL for name in ("scop", "secondary-structure", "stability",
                                         "fluorescence")},
    **{name: _SPEECH_PROTOCOL for name in ("audio-mnist", "fluent-speech-action",
                                           "fluent-speech-object", "fluent-speech-location",
                                           "google-speech", "voxceleb1")},
    "genomics-id": {"probe_batch_size": 64},
    "genomics-ood": {"probe_batch_size": 32},
}

# One dataset per distinct token contract / task: trained for a few steps, then evaluated.
TRAIN_AND_EVALUATE = ["eurosat", "pamap2", "higgs", "genomics-ood", "pfam",
                      "secondary-structure", "stability", "imagenet32", "librispeech",
                      "wafermap"]


def test_every_registered_dataset_has_a_miniature():
    assert sorted(set(registry.names()) - NOT_MINIATURES) == sorted(FIXTURES)


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    """Runs the Beam job once per dataset (lazily) and caches the output root."""
    from pipeline import preprocess

    root = tmp_path_factory.mktemp("e2e")
    results = {}

    def get(name):
        if name not in results:
            module, options = FIXTURES[name]
            raw = module.make_raw(str(root / "raw" / name))
            argv = ["--dataset", name, "--raw_data_dir", raw, "--data_dir", str(root / "out"),
                    "--num_shards", "1", "--max_bad_fraction", "0.5"]
            for key, value in options.items():
                argv += ["--reader_option", f"{key}={value}"]
            results[name] = preprocess.run(argv)
        return results[name], str(root / "out")

    return get


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_miniature_through_the_beam_job(name, preprocessed):
    result, _ = preprocessed(name)
    spec = json.load(open(os.path.join(result.version_dir, "spec.json")))
    assert spec["name"] == name
    assert sum(s["num_examples"] for s in spec["splits"].values()) >= 2
    if name in EXPECTED_PROTOCOL:
        assert spec["protocol"] == EXPECTED_PROTOCOL[name]
    if name in CLEAN_MINIATURES:
        assert result.bad_records == []
    else:
        assert result.bad_records and all(r["path"] and r["reason"] for r in result.bad_records)


@pytest.mark.parametrize("name", TRAIN_AND_EVALUATE)
def test_trainer_and_linear_evaluation(name, preprocessed, tmp_path):
    from keras_metamae.evaluation.run import run_evaluation
    from keras_metamae.training.run import run_training

    result, data_dir = preprocessed(name)
    workdir = str(tmp_path / "run")
    summary = run_training(
        name, dict(TINY_MODEL, steps=2, batch_size=2, log_every=1, checkpoint_every=2,
                   validation_steps=1, warmup_steps=1, export=False),
        data_dir, workdir, verbose=0)
    assert summary["final_step"] == 2
    assert summary["last"]["loss"] == pytest.approx(summary["last"]["loss"])  # finite
    splits = result.spec.splits
    probe = [result.spec.protocol_splits(role) for role in ("probe_train", "probe_test")]
    if not all(sum(splits[s].num_examples for s in names if s in splits) for names in probe):
        # Pretraining-only miniatures: the evaluator must say which split is missing.
        with pytest.raises(ValueError, match="split"):
            run_evaluation(workdir, epochs=1, batch_size=2, baseline=False)
        return
    record = run_evaluation(workdir, epochs=1, batch_size=2, baseline=False)
    assert record["metric"] == result.spec.metric
    assert record["value"] == pytest.approx(record["value"])  # not NaN


def test_transfer_to_a_dataset_of_the_same_modality(preprocessed, tmp_path):
    from keras_metamae.evaluation.run import run_evaluation
    from keras_metamae.training.run import run_training

    _, data_dir = preprocessed("genomics")
    preprocessed("genomics-ood")
    preprocessed("pfam")
    workdir = str(tmp_path / "run")
    run_training("genomics", dict(TINY_MODEL, steps=2, batch_size=2, log_every=1,
                                        checkpoint_every=2, validation_steps=1, warmup_steps=1,
                                        export=False), data_dir, workdir, verbose=0)
    record = run_evaluation(workdir, dataset="genomics-ood", epochs=1, batch_size=2,
                                     baseline=False, transfer=True)
    assert record["dataset"] == "genomics-ood" and record["pretrain_dataset"] == "genomics"
    assert record["transfer"] is True
    assert os.path.exists(os.path.join(workdir, "eval", "genomics-ood.json"))
    with pytest.raises(ValueError, match="same modality"):
        run_evaluation(workdir, dataset="pfam", epochs=1, batch_size=2, baseline=False)
