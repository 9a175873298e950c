"""Windows drawn at read time (keras_metamae/data/windows.py) from the PAMAP2 miniature's series.

The miniature's train subject has three activity runs: label 0 (700 rows, 381 windows) and
label 3 twice (330 and 325 rows, cut by a malformed line: 11 and 6 windows).
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from preprocessing import registry, tokenize
from preprocessing.series_records import RawSeries
from preprocessing.spec import DatasetSpec, SpecError
from tests.fixtures import make_pamap2

WINDOW = 320


@pytest.fixture(scope="module")
def pamap2(tmp_path_factory):
    """(spec, version_dir, {series id: RawSeries}) of the miniature through the Beam job."""
    from pipeline import preprocess

    root = tmp_path_factory.mktemp("windows")
    data_dir = make_pamap2.make_raw(str(root))
    argv = ["--dataset", "pamap2", "--raw_data_dir", data_dir, "--data_dir", str(root / "out"),
            "--num_shards", "2", "--max_bad_fraction", "0.5"]
    for key, value in make_pamap2.READER_OPTIONS.items():
        argv += ["--reader_option", f"{key}={value}"]
    result = preprocess.run(argv)
    reader = registry.get_reader("pamap2", data_dir=data_dir, **make_pamap2.READER_OPTIONS)
    series = {r.id: r for r in reader.read_all() if isinstance(r, RawSeries)}
    return result.spec, result.version_dir, series


def draws(spec, version_dir, count, batch_size=16, **kwargs):
    from keras_metamae import data

    kwargs = {"seed": 0, **kwargs}
    ds = data.make_dataset(spec, version_dir, "train", batch_size, **kwargs)
    batches = list(ds.take(-(-count // batch_size)))
    return {k: np.concatenate([b[k].numpy() for b in batches])[:count]
            for k in ("tokens", "label", "id")}


def test_spec_counts_series_and_validates(pamap2):
    spec, _, series = pamap2
    spec.validate()
    assert spec.windows["splits"]["train"] == {"windows_per_epoch": 64, "records": 3}
    assert spec.splits["train"].num_examples == 64 and spec.splits["test"].num_examples == 12
    assert len(series) == 3
    assert spec.normalization["source"] == "none"
    assert spec.normalization["mean"] == [0.0] * 52 and spec.normalization["std"] == [1.0] * 52
    assert spec.protocol_splits("probe_val") == [] and spec.protocol_splits("probe_test") == ["test"]
    with pytest.raises(SpecError, match="input_shape"):
        dataclasses.replace(spec, windows={**spec.windows, "length": 300}).validate()
    with pytest.raises(SpecError, match="does not have"):
        dataclasses.replace(spec, windows={**spec.windows, "splits": {
            "val": {"windows_per_epoch": 1}}}).validate()
    assert DatasetSpec.from_dict(spec.to_dict()).windows == spec.windows


def test_every_window_lies_in_one_series_and_tokenizes_like_a_fixed_example(pamap2):
    spec, version_dir, series = pamap2
    got = draws(spec, version_dir, 48)
    assert got["tokens"].shape == (48, 64, 260)
    for tokens, label, window_id in zip(got["tokens"], got["label"], got["id"]):
        series_id, offset = window_id.decode().split("@")
        source, offset = series[series_id], int(offset)
        assert 0 <= offset <= source.input.shape[0] - WINDOW
        assert label == source.label
        raw = source.input[offset:offset + WINDOW][np.newaxis]
        np.testing.assert_array_equal(tokens, tokenize.raw_to_tokens(raw, spec).numpy()[0])


def test_draws_differ_between_epochs_and_repeat_with_the_seed(pamap2):
    spec, version_dir, _ = pamap2
    two_epochs = draws(spec, version_dir, 128)["id"]
    assert list(two_epochs[:64]) != list(two_epochs[64:])
    assert list(draws(spec, version_dir, 128)["id"]) == list(two_epochs)
    assert list(draws(spec, version_dir, 64, seed=1)["id"]) != list(two_epochs[:64])
    # A resumed run that skips 3 batches sees exactly what the uninterrupted one saw next.
    resumed = draws(spec, version_dir, 32, skip_batches=3)["id"]
    assert list(resumed) == list(two_epochs[48:80])


def test_one_pass_is_windows_per_epoch(pamap2):
    from keras_metamae import data

    spec, version_dir, _ = pamap2
    ds = data.make_dataset(spec, version_dir, "train", 10, shuffle=False, repeat=False,
                           drop_remainder=False)
    assert sum(int(b["tokens"].shape[0]) for b in ds) == 64


def test_sampling_is_uniform_over_subject_activity_then_over_its_windows(pamap2):
    spec, version_dir, _ = pamap2
    got = draws(spec, version_dir, 4096, batch_size=64)
    labels = collections.Counter(got["label"].tolist())
    assert abs(labels[0] / 4096 - 0.5) < 0.04  # 381 windows vs 17: still one pair each
    series = collections.Counter(i.decode().split("@")[0] for i in got["id"] if b"0711@" in i
                                 or b"1042@" in i)
    share = series["subject101-line0000711"] / sum(series.values())
    assert abs(share - 11 / 17) < 0.06  # the pair's two series by their number of windows


def test_input_pipelines_together_draw_what_one_draws(pamap2):
    from keras_metamae import data

    spec, version_dir, _ = pamap2
    single = draws(spec, version_dir, 16)["id"]
    per_pipeline = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline,
                                             num_replicas_in_sync=2)
        ds = data.make_dataset(spec, version_dir, "train", 16, seed=0, input_context=context)
        per_pipeline.append(next(iter(ds))["id"].numpy())
    assert [i for pair in zip(*per_pipeline) for i in pair] == list(single)


def test_windowed_and_fixed_splits_are_not_mixed(pamap2):
    from keras_metamae import data

    spec, version_dir, _ = pamap2
    with pytest.raises(data.DataError, match="mix fixed examples"):
        data.make_dataset(spec, version_dir, ["train", "test"], 4)
    # The fixed test windows read as any token split.
    batch = next(iter(data.make_dataset(spec, version_dir, "test", 4, shuffle=False)))
    assert batch["tokens"].shape == (4, 64, 260)
