"""Readers for pamap2, higgs, genomics, pfam, the TAPE transfer sets and custom formats.

Each reader reads a miniature written in the dataset's real raw format (tests/fixtures/make_*.py),
including one malformed record that must come back as a BadRecord naming where it was.
"""

from __future__ import annotations

import collections
import json
import os

import numpy as np
import pytest

from preprocessing import registry
from preprocessing.spec import PIPELINE_VERSION
from preprocessing.datasets import _line_ranges, _protein
from preprocessing.datasets.base import BadRecord, RawDataMissing
from preprocessing.series_records import RawSeries
from tests.fixtures import (make_custom, make_fluorescence, make_genomics, make_higgs,
                            make_pamap2, make_pfam, make_scop, make_secondary_structure,
                            make_stability)

# dataset -> (fixture module, reader options, good examples, where the bad record is)
CASES = {
    # 3 train series + the fixed test windows.
    "pamap2": (make_pamap2, make_pamap2.READER_OPTIONS,
               len(make_pamap2.TRAIN_RUNS) + int(make_pamap2.READER_OPTIONS["test_windows"]),
               f"subject101.dat:{make_pamap2.MALFORMED_LINE_NUMBER}"),
    "higgs": (make_higgs, {"pretrain_rows": make_higgs.PRETRAIN_ROWS}, 29,
              f"HIGGS.csv.gz:{make_higgs.MALFORMED_LINE_NUMBER}"),
    "genomics": (make_genomics, {}, 20, f"genomicsPretrain.csv:{make_genomics.MALFORMED_LINE_NUMBER}"),
    "genomics-id": (make_genomics, {}, 10,
                    f"genomicsTransferID.csv:{make_genomics.MALFORMED_LINE_NUMBER}"),
    "genomics-ood": (make_genomics, {}, 12,
                     f"genomicsTransferOOD.csv:{make_genomics.MALFORMED_LINE_NUMBER}"),
    "pfam": (make_pfam, {}, 27, f"pfam_train.json[{make_pfam.MALFORMED_INDEX}]"),
    "scop": (make_scop, {}, 14, f"remote_homology_train.json[{make_scop.MALFORMED_INDEX}]"),
    "secondary-structure": (make_secondary_structure, {}, 10,
                            f"secondary_structure_train.json[{make_secondary_structure.MALFORMED_INDEX}]"),
    "stability": (make_stability, {}, 13, f"stability_train.json[{make_stability.MALFORMED_INDEX}]"),
    "fluorescence": (make_fluorescence, {}, 12,
                     f"fluorescence_train.json[{make_fluorescence.MALFORMED_INDEX}]"),
}

# The reference table (shared/reference/dabs_datasets.md), channels-last.
REFERENCE = {
    "pamap2": dict(modality="time_series", input_shape=[320, 52], tokenizer="patch1d",
                   patch_shape=[5], num_tokens=64, token_dim=260, vocab_size=0, token_grid=[64],
                   task="multiclass", metric="accuracy", num_classes=12, label_shape=[]),
    "higgs": dict(modality="tabular", input_shape=[28], tokenizer="tabular", patch_shape=[1],
                  num_tokens=28, token_dim=1, vocab_size=0, token_grid=[28], task="binary",
                  metric="accuracy", num_classes=2, label_shape=[]),
    "genomics": dict(modality="token", input_shape=[250], tokenizer="discrete", num_tokens=250,
                     token_dim=0, vocab_size=4, token_grid=[250], task="multiclass",
                     num_classes=10, label_shape=[], pretrain_dataset=""),
    "genomics-id": dict(vocab_size=4, num_tokens=250, num_classes=10, pretrain_dataset="genomics"),
    "genomics-ood": dict(vocab_size=4, num_tokens=250, num_classes=60,
                         pretrain_dataset="genomics"),
    # 4 clans in the miniature's train file (623 in TAPE's Pfam).
    "pfam": dict(modality="token", input_shape=[128], tokenizer="discrete", num_tokens=128,
                 token_dim=0, vocab_size=26, token_grid=[128], task="multiclass",
                 num_classes=4, label_names=["0", "3", "7", "12"], label_shape=[]),
    "scop": dict(vocab_size=26, num_tokens=128, task="multiclass", num_classes=1195,
                 label_shape=[], pretrain_dataset="pfam"),
    "secondary-structure": dict(vocab_size=26, num_tokens=128, task="per_token_multiclass",
                                num_classes=4, label_shape=[128], pretrain_dataset="pfam"),
    "stability": dict(vocab_size=26, num_tokens=128, task="regression", metric="spearman",
                      label_dtype="float32", label_shape=[], pretrain_dataset="pfam"),
    "fluorescence": dict(vocab_size=26, num_tokens=128, task="regression", metric="spearman",
                         label_dtype="float32", label_shape=[], pretrain_dataset="pfam"),
}


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("raw_a"))


@pytest.fixture(scope="module")
def read(raw_root):
    """dataset -> (reader, good examples, bad records), each miniature written and read once."""
    cache = {}

    def get(name):
        if name not in cache:
            module, options, _, _ = CASES[name]
            data_dir = module.make_raw(raw_root)
            reader = registry.get_reader(name, data_dir=data_dir, **options)
            records = list(reader.read_all())
            good = [r for r in records if not isinstance(r, BadRecord)]
            bad = [r for r in records if isinstance(r, BadRecord)]
            cache[name] = (reader, good, bad)
        return cache[name]

    return get


@pytest.mark.parametrize("name", sorted(CASES))
def test_reads_miniature_and_reports_the_malformed_record(name, read):
    reader, good, bad = read(name)
    _, _, expected_good, bad_where = CASES[name]
    spec = reader.spec_template().validate()
    assert len(good) == expected_good
    assert len(bad) == 1, [b.path for b in bad]
    assert bad[0].path.endswith(bad_where), bad[0].path
    assert os.path.isabs(bad[0].path) or os.sep in bad[0].path
    assert bad[0].reason
    want_dtype = np.int64 if spec.is_discrete else np.float32
    for ex in good:
        if isinstance(ex, RawSeries):  # windows are drawn from it at read time (pamap2 train)
            assert ex.input.shape[0] >= spec.input_shape[0]
            assert list(ex.input.shape[1:]) == spec.input_shape[1:]
        else:
            assert list(ex.input.shape) == spec.input_shape
        assert ex.input.dtype == want_dtype
        label = np.asarray(ex.label)
        assert list(label.shape) == spec.label_shape
        if spec.task == "regression":
            assert label.dtype == np.float32 and np.isfinite(label).all()
        else:
            assert np.issubdtype(label.dtype, np.integer)
            assert 0 <= label.min() and label.max() < spec.num_classes
        if spec.is_discrete:
            assert 0 <= ex.input.min() and ex.input.max() < spec.vocab_size
        else:
            assert np.isfinite(ex.input).all()
    assert len({ex.id for ex in good}) == len(good), "example ids must be unique"


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_spec_template_matches_reference(name, read):
    reader, _, _ = read(name)
    spec = reader.spec_template()
    for field, value in REFERENCE[name].items():
        assert getattr(spec, field) == value, field
    if not spec.is_discrete:
        assert spec.token_dim * spec.num_tokens == int(np.prod(spec.input_shape))


@pytest.mark.parametrize("name", sorted(CASES))
def test_splits_are_deterministic_and_cover_train_and_test(name, read, raw_root):
    reader, good, _ = read(name)
    module, options, _, _ = CASES[name]
    again = registry.get_reader(name, data_dir=module.make_raw(raw_root), **options)
    again_good = [r for r in again.read_all() if not isinstance(r, BadRecord)]
    first = {ex.id: reader.split_of(ex, 42) for ex in good}
    second = {ex.id: again.split_of(ex, 42) for ex in again_good}
    assert first == second
    names = [split for split, _ in reader.split_fractions]
    assert set(first.values()) <= set(names) | {"test_superfamily", "test_family",
                                               "test_casp12", "test_ts115"}
    assert "train" in first.values()


def test_pamap2_train_series_and_fixed_test_windows(read):
    reader, good, _ = read("pamap2")
    series = [ex for ex in good if isinstance(ex, RawSeries)]
    windows = [ex for ex in good if not isinstance(ex, RawSeries)]
    assert [(ex.label, ex.input.shape[0]) for ex in series] == make_pamap2.TRAIN_RUNS
    assert {reader.split_of(ex, 42) for ex in series} == {"train"}
    assert {reader.split_of(ex, 42) for ex in windows} == {"test"}
    assert len(windows) == int(make_pamap2.READER_OPTIONS["test_windows"])
    assert {(int(ex.group.removeprefix("subject")), ex.label) for ex in windows} <= \
        make_pamap2.TEST_PAIRS
    # Heart rate (channel 0) was NaN on 9 of 10 rows: interpolated, never NaN, within range.
    heart = np.concatenate([ex.input[:, 0] for ex in good])
    assert np.isfinite(heart).all() and 80 < heart.min() and heart.max() < 120


def test_pamap2_test_windows_are_seeded_and_uniform_over_subject_activity(raw_root):
    data_dir = make_pamap2.make_raw(raw_root)

    def test_windows(**options):
        reader = registry.get_reader("pamap2", data_dir=data_dir, **options)
        return [ex for ex in reader.read_all() if getattr(ex, "split", None) == "test"]

    first, again = test_windows(test_windows=300), test_windows(test_windows=300)
    assert [ex.id for ex in first] == [ex.id for ex in again]
    np.testing.assert_array_equal(np.stack([ex.input for ex in first]),
                                  np.stack([ex.input for ex in again]))
    other_seed = test_windows(test_windows=300, test_seed=1)
    assert [ex.id for ex in other_seed] != [ex.id for ex in first]
    per_pair = collections.Counter((ex.group, ex.label) for ex in first)
    assert len(per_pair) == len(make_pamap2.TEST_PAIRS)
    assert all(60 < n < 140 for n in per_pair.values()), per_pair  # 100 each if uniform


def test_pamap2_long_runs_are_stored_as_pieces_holding_every_window_once(raw_root):
    reader = registry.get_reader("pamap2", data_dir=make_pamap2.make_raw(raw_root),
                                 max_series_rows=400)
    pieces = [ex for ex in reader.read_all()
              if isinstance(ex, RawSeries) and ex.label == make_pamap2.TRAIN_RUNS[0][0]]
    run_rows = make_pamap2.TRAIN_RUNS[0][1]
    assert len(pieces) > 1 and all(320 <= p.input.shape[0] <= 400 for p in pieces)
    first_line = int(pieces[0].id.split("line")[1])
    starts = []
    for piece in pieces:
        offset = int(piece.id.split("line")[1]) - first_line
        starts += [offset + k for k in range(piece.input.shape[0] - 320 + 1)]
    assert sorted(starts) == list(range(run_rows - 320 + 1))  # each window start exactly once
    assert len({p.id for p in pieces}) == len(pieces)


def test_pamap2_interpolation_is_linear():
    from preprocessing.datasets.pamap2 import interpolate_nans

    run = np.array([[np.nan, 1.0], [2.0, np.nan], [np.nan, np.nan], [6.0, 4.0]])
    np.testing.assert_allclose(interpolate_nans(run), [[2, 1], [2, 2], [4, 3], [6, 4]])
    assert interpolate_nans(np.array([[1.0, np.nan], [2.0, np.nan]])) is None


def test_higgs_pretrain_and_transfer_partition(read, raw_root):
    _, pretrain, _ = read("higgs")
    transfer = registry.get_reader("higgs-transfer", data_dir=make_higgs.make_raw(raw_root),
                                   pretrain_rows=make_higgs.PRETRAIN_ROWS)
    transfer_good = [r for r in transfer.read_all() if not isinstance(r, BadRecord)]
    assert len(transfer_good) == make_higgs.NUM_LINES - make_higgs.PRETRAIN_ROWS
    assert not {e.id for e in pretrain} & {e.id for e in transfer_good}
    assert transfer.spec_template().pretrain_dataset == "higgs"
    assert sorted({e.label for e in pretrain}) == [0, 1]


def test_line_ranges_stream_plain_and_gzip_files_in_pieces(tmp_path):
    lines = [f"row {i}" for i in range(1, 12)]
    for name, opener in (("t.txt", open), ("t.txt.gz", __import__("gzip").open)):
        path = str(tmp_path / name)
        with opener(path, "wt") as f:
            f.write("\n".join(lines))  # no trailing newline on the last line
        ranges = _line_ranges.plan_line_ranges(path, 4)
        assert [(r.first_line, r.num_lines) for r in ranges] == [(1, 4), (5, 4), (9, 3)]
        got = [item for r in ranges for item in _line_ranges.iter_lines(r)]
        assert got == list(enumerate(lines, start=1))


def test_line_blocks_skip_and_split_like_reading_line_by_line(tmp_path, monkeypatch):
    """Blocks split in C, ranges found by counting newlines (also inside a gzip stream), with
    lines straddling the read chunks, carriage returns and no final newline."""
    monkeypatch.setattr(_line_ranges, "_READ_CHUNK", 37)
    lines = [("x" * (i % 50)) + ("\r" if i % 7 == 0 else "") for i in range(300)]
    for name, opener in (("t.txt", open), ("t.txt.gz", __import__("gzip").open)):
        path = str(tmp_path / name)
        with opener(path, "wt", newline="") as f:
            f.write("\n".join(lines))
        for per in (1, 13, 300):
            ranges = _line_ranges.plan_line_ranges(path, per)
            got = [item for r in ranges for item in _line_ranges.iter_lines(r)]
            assert got == [(i + 1, line.rstrip("\r")) for i, line in enumerate(lines)]
            blocks = [b for r in ranges for b in _line_ranges.iter_line_blocks(r, 5)]
            assert all(len(lines_) <= 5 for _, lines_ in blocks)
            texts = [b for r in ranges for b in _line_ranges.iter_text_blocks(r, 5)]
            assert texts == [(first, b"\n".join(lines_), len(lines_)) for first, lines_ in blocks]
            assert [(first + i, raw.decode()) for first, lines_ in blocks
                    for i, raw in enumerate(lines_)] == [(i + 1, l) for i, l in enumerate(lines)]
    balanced = _line_ranges.plan_balanced_line_ranges(str(tmp_path / "t.txt.gz"), 100, 2, grain=7)
    assert [(r.first_line, r.num_lines) for r in balanced] == [(1, 154), (155, 146)]


def test_gzip_ranges_resume_from_checkpoints_in_any_order(tmp_path, monkeypatch):
    """A multi-member .gz file read range by range in a shuffled order, resuming from the
    decompressor checkpoints of earlier ranges, and planned from a sample (last range
    open-ended): every line exactly once, in order."""
    import gzip
    import random

    monkeypatch.setattr(_line_ranges, "_READ_CHUNK", 64)
    monkeypatch.setattr(_line_ranges, "CHECKPOINT_EVERY", 200)
    monkeypatch.setattr(_line_ranges, "_checkpoints", type(_line_ranges._checkpoints)())
    rng = random.Random(0)
    lines = ["z" * rng.randint(0, 70) for _ in range(1500)]
    text = "\n".join(lines).encode()
    path = str(tmp_path / "t.csv.gz")
    with open(path, "wb") as f:  # two gzip members, as `cat a.gz b.gz` makes
        f.write(gzip.compress(text[:len(text) // 2]) + gzip.compress(text[len(text) // 2:]))
    for ranges in (_line_ranges.plan_line_ranges(path, 97),
                   _line_ranges.plan_gzip_line_ranges(path, 200, 6, sample_bytes=5_000)):
        order = list(range(len(ranges)))
        rng.shuffle(order)
        got = {k: list(_line_ranges.iter_lines(ranges[k])) for k in order}
        assert [x for k in range(len(ranges)) for x in got[k]] == list(enumerate(lines, start=1))
    assert ranges[-1].num_lines == _line_ranges.OPEN_ENDED and len(ranges) == 6
    assert len(_line_ranges._checkpoints[_line_ranges._file_key(path)]) > 10
    with open(path, "wb") as f:  # a truncated stream is an error, not a shorter file
        f.write(gzip.compress(text)[:-30])
    with pytest.raises(EOFError, match="ended before the end-of-stream marker"):
        list(_line_ranges.iter_lines(_line_ranges.LineRange(path, 1, 10**6, None)))


def test_higgs_blocks_give_the_same_examples_as_lines(raw_root):
    """The Beam job's batched HIGGS path (one pyarrow parse per block, line by line for a block
    holding a malformed line) gives read_source's examples and bad records exactly."""
    from preprocessing.datasets.base import RawBatch, RawExample

    data_dir = make_higgs.make_raw(raw_root)
    # Sources of 7 lines: blocks that cross the pretrain/transfer boundary are cut.
    for name, rows_per_source in (("higgs", 7), ("higgs", None), ("higgs-transfer", 7)):
        options = {"pretrain_rows": make_higgs.PRETRAIN_ROWS, "rows_per_source": rows_per_source}
        reader = registry.get_reader(name, data_dir=data_dir, **options)
        by_line, by_block = [], []
        for source in reader.list_sources():
            by_line += [(r.id, r.input.tobytes(), int(r.label)) if isinstance(r, RawExample)
                        else (r.path, r.reason) for r in reader.read_source(source)]
            for item in reader.read_source_batches(source, 64):
                by_block += ([(e.id, np.asarray(e.input, np.float32).tobytes(), int(e.label))
                              for e in item.examples()] if isinstance(item, RawBatch)
                             else [(item.path, item.reason)])
        assert sorted(by_line) == sorted(by_block)
        assert len(by_line) == (30 if name == "higgs" else make_higgs.NUM_LINES - make_higgs.PRETRAIN_ROWS)


def test_genomics_ood_labels_are_offset_and_sequence_is_the_bytes_literal(read, raw_root):
    _, good, _ = read("genomics-ood")
    raw_labels = sorted({10 + (7 * i) % 60 for i in range(make_genomics.GOOD_ROWS[
        "genomicsTransferOOD.csv"])})
    assert sorted({ex.label for ex in good}) == [v - 10 for v in raw_labels]
    import csv

    with open(os.path.join(raw_root, "genomics_raw", "genomicsTransferOOD.csv")) as f:
        first = list(csv.reader(f))[1]
    bases = first[3][2:252]
    assert "".join("ACGT"[i] for i in good[0].input) == bases


def test_pfam_label_map_is_sorted_numerically_and_tokens_pad_with_x(read):
    reader, good, _ = read("pfam")
    assert reader.clans() == ["0", "3", "7", "12"]
    for ex in good:
        assert ex.split in ("train", "val", "transfer_train", "transfer_test", "holdout")
    short = [ex for ex in good if (ex.input == 0).any()]
    assert short, "some miniature sequences are shorter than 128 and must be padded with X=0"
    first = short[0].input
    pad_start = int(np.argmax(first == 0))
    assert (first[pad_start:] == 0).all()


def test_protein_encoding_truncates_and_uses_the_dabs_vocab():
    ids = _protein.encode_protein("MKV" * 100)
    assert ids.shape == (128,) and _protein.VOCAB[ids[0]] == "M"
    assert list(_protein.encode_protein("XAJ", length=5)) == [0, 1, 25, 0, 0]
    with pytest.raises(ValueError, match="'1'"):
        _protein.encode_protein("AC1")


def test_json_array_streaming_survives_chunk_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(_protein, "_READ_CHUNK", 7)  # records straddle many reads
    records = [{"primary": "ACD" * i, "clan": i} for i in range(1, 6)]
    path = str(tmp_path / "x.json")
    with open(path, "w") as f:
        json.dump(records, f, indent=1)
    assert [r for _, r in _protein.iter_records(path)] == records
    with open(path, "w") as f:
        f.write('[{"primary": "AC", "clan": 1}, {"primary": "A", "clan": ]')
    out = list(_protein.iter_records(path))
    assert out[0][1] == {"primary": "AC", "clan": 1}
    assert out[1][0].endswith("x.json[1]") and "invalid JSON" in out[1][1]


def test_secondary_structure_labels_are_per_token_and_padded(read, raw_root):
    _, good, _ = read("secondary-structure")
    for ex in good:
        padded = ex.input == 0
        assert (ex.label[padded] == 3).all()
        assert set(np.unique(ex.label[~padded])) <= {0, 1, 2}


@pytest.mark.parametrize("name", sorted(CASES))
def test_missing_raw_data_names_the_file_and_where_to_put_it(name, tmp_path):
    _, options, _, _ = CASES[name]
    empty = str(tmp_path / "nothing_here")
    reader = registry.get_reader(name, data_dir=empty, **options)
    with pytest.raises(RawDataMissing) as info:
        reader.check_raw()
    message = str(info.value)
    assert any(os.path.splitext(f.split()[0])[0].split(".")[0] in message
               for f in reader.expected_files()), message
    assert "http" in message and os.path.abspath(empty) in message


# === custom formats ===
CUSTOM = {
    "npy": ({"patch_shape": "4,4"}, make_custom.NPY_ROWS - 1, "inputs.npy[7]",
            dict(tokenizer="patch2d", input_shape=[8, 8, 1], num_tokens=4, token_dim=16,
                 token_grid=[2, 2], num_classes=3, label_names=["1", "5", "9"])),
    "csv": ({"label_column": "label"}, make_custom.CSV_GOOD, f"data.csv:{make_custom.CSV_BAD_LINE}",
            dict(tokenizer="tabular", input_shape=[3], num_tokens=3, token_dim=1, task="binary",
                 num_classes=2, label_names=["cat", "dog"])),
    "text": ({"vocab": "ACGT", "seq_len": "16"}, make_custom.TEXT_GOOD,
             f"data.txt:{make_custom.TEXT_BAD_LINE}",
             dict(tokenizer="discrete", input_shape=[16], num_tokens=16, vocab_size=4,
                  num_classes=3)),
}


@pytest.mark.parametrize("fmt", sorted(CUSTOM))
def test_custom_formats(fmt, raw_root):
    options, expected_good, bad_where, spec_fields = CUSTOM[fmt]
    reader = registry.get_reader("custom", data_dir=make_custom.make_raw(raw_root), format=fmt,
                                 **options)
    spec = reader.spec_template()
    for field, value in spec_fields.items():
        assert getattr(spec, field) == value, field
    records = list(reader.read_all())
    good = [r for r in records if not isinstance(r, BadRecord)]
    bad = [r for r in records if isinstance(r, BadRecord)]
    assert len(good) == expected_good
    assert [b.path.endswith(bad_where) for b in bad] == [True]
    assert all(list(ex.input.shape) == spec.input_shape for ex in good)
    assert {ex.label for ex in good} <= set(range(spec.num_classes))


def test_custom_rejects_unknown_format_and_missing_flags(raw_root):
    with pytest.raises(ValueError, match="--format"):
        registry.get_reader("custom", data_dir=raw_root, format="image_folder")
    data_dir = make_custom.make_raw(raw_root)
    with pytest.raises(ValueError, match="--patch_shape"):
        registry.get_reader("custom", data_dir=data_dir, format="npy").spec_template()
    with pytest.raises(ValueError, match="--vocab"):
        registry.get_reader("custom", data_dir=data_dir, format="text").spec_template()
    with pytest.raises(ValueError, match="--label_column"):
        registry.get_reader("custom", data_dir=data_dir, format="csv",
                            label_column="nope").spec_template()


# === end to end through the Beam job ===
# One dataset per reader module, each exercising a different label/token layout; the others
# share these code paths and are covered by the reader tests above.
END_TO_END = ["pamap2", "higgs", "genomics-ood", "pfam", "secondary-structure", "stability"]
# The pipeline does not forward reader options, so higgs keeps its default pretrain_rows
# (9.9M) and all 40 miniature lines but the malformed one are pretraining examples.
E2E_GOOD = {"higgs": make_higgs.NUM_LINES - 1}
# pamap2: small passes; its train split counts the windows one pass draws, not the series.
E2E_OPTIONS = {"pamap2": make_pamap2.READER_OPTIONS}
E2E_GOOD["pamap2"] = sum(int(make_pamap2.READER_OPTIONS[k])
                         for k in ("windows_per_epoch", "test_windows"))
# The reference feeds PAMAP2's raw sensor values (identity normalization).
E2E_NORMALIZATION = {"pamap2": "none", "higgs": "none"}  # raw values, as the reference


@pytest.mark.parametrize("name", END_TO_END)
def test_beam_job_writes_spec(name, tmp_path):
    from pipeline import preprocess

    module, _, expected_good, _ = CASES[name]
    expected_good = E2E_GOOD.get(name, expected_good)
    data_dir = module.make_raw(str(tmp_path / "raw"))
    argv = ["--dataset", name, "--raw_data_dir", data_dir, "--data_dir", str(tmp_path / "out"),
            "--num_shards", "1", "--max_bad_fraction", "0.5"]
    for key, value in E2E_OPTIONS.get(name, {}).items():
        argv += ["--reader_option", f"{key}={value}"]
    result = preprocess.run(argv)
    with open(os.path.join(result.version_dir, "spec.json")) as f:
        spec = json.load(f)
    assert spec["name"] == name
    assert sum(s["num_examples"] for s in spec["splits"].values()) == expected_good
    assert len(result.bad_records) == 1
    for field, value in REFERENCE[name].items():
        if field != "num_classes" or name != "pfam":
            assert spec[field] == value, field
    if not REFERENCE[name].get("vocab_size"):
        assert spec["normalization"]["source"] == E2E_NORMALIZATION.get(name, "pipeline")
        assert len(spec["normalization"]["mean"]) == spec["input_shape"][-1]


def test_pamap2_reads_the_extracted_archive_too(read, tmp_path):
    import zipfile

    reader, good, _ = read("pamap2")
    with zipfile.ZipFile(os.path.join(reader.data_dir, make_pamap2.ARCHIVE_NAME)) as zf:
        zf.extractall(tmp_path)
    extracted = registry.get_reader("pamap2", data_dir=str(tmp_path), **make_pamap2.READER_OPTIONS)
    assert [s[0] for s in extracted.list_sources()] == ["train", "test"]
    assert {locator[0] for s in extracted.list_sources() for locator in s[1:]} == {"file"}
    again = [r for r in extracted.read_all() if not isinstance(r, BadRecord)]
    assert [ex.id for ex in again] == [ex.id for ex in good]
    np.testing.assert_array_equal(again[0].input, good[0].input)


@pytest.mark.parametrize("flags,expected_good", [
    (["--format", "npy", "--patch_shape", "4,4", "--name", "my_arrays"], make_custom.NPY_ROWS - 1),
    (["--format", "text", "--vocab", "ACGT", "--seq_len", "16", "--name", "my_seqs"],
     make_custom.TEXT_GOOD),
])
def test_custom_formats_through_the_pipeline_flags(flags, expected_good, raw_root, tmp_path):
    from pipeline import preprocess

    out = str(tmp_path / "out")
    result = preprocess.run(["--dataset", "custom", "--raw_data_dir", make_custom.make_raw(raw_root),
                             "--data_dir", out, "--num_shards", "1",
                             "--max_bad_fraction", "0.5"] + flags)
    name = flags[flags.index("--name") + 1]
    assert result.version_dir == os.path.join(out, name, PIPELINE_VERSION)
    assert result.spec.name == name
    assert result.num_examples == expected_good


def test_reader_option_needs_key_value():
    from commandline import cli
    from pipeline import preprocess

    with pytest.raises(cli.UserError, match="KEY=VALUE"):
        preprocess.run(["--dataset", "custom", "--reader_option", "novalue"])


def test_batched_split_hash_is_the_per_key_split():
    """The job's batched split assignment (sha256 resumed from the hashed seed prefix) puts
    every key where `split_by_fractions` does: the splits of a dataset do not depend on it."""
    from preprocessing.datasets.base import split_by_fractions, split_by_fractions_batch

    keys = [f"higgs-{i:08d}" for i in range(2000)] + ["AnnualCrop/AnnualCrop_1", "é", ""]
    fractions = (("train", 0.8), ("val", 0.1), ("test", 0.1))
    for seed in (0, 7, 2**40):
        assert split_by_fractions_batch(keys, seed, fractions) == [
            split_by_fractions(key, seed, fractions) for key in keys]
