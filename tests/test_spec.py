"""DatasetSpec: JSON round trip, validation, and every registered reader's template."""

import json
import os

import pytest

from preprocessing import registry, tokenize
from preprocessing.spec import DatasetSpec, SpecError, SplitInfo, load_spec


def digits_spec(**overrides):
    spec = registry.get_reader("digits").spec_template()
    for k, v in overrides.items():
        setattr(spec, k, v)
    return spec


def test_json_round_trip(tmp_path):
    spec = digits_spec(splits={"train": SplitInfo(10, "train/data-*-of-00002.tfrecord", 2, [60, 70])},
                       normalization={"mean": [1.5], "std": [2.0], "source": "pipeline"},
                       storage={"dtype": "uint8", "scale": 1.0, "compression": ""},
                       command="python -m pipeline.preprocess --dataset digits")
    path = spec.save(str(tmp_path))
    assert os.path.basename(path) == "spec.json"
    assert load_spec(str(tmp_path)) == spec
    assert load_spec(path).splits["train"].num_shards == 2
    # No temp files are left beside spec.json.
    assert os.listdir(tmp_path) == ["spec.json"]


@pytest.mark.parametrize("field,value,message", [
    ("modality", "video", "modality"),
    ("tokenizer", "patch3d", "tokenizer"),
    ("vocab_size", 4, "exactly one of token_dim"),
    ("token_grid", [3, 3], "token_grid"),
    ("metric", "bleu", "metric"),
    ("storage", {"dtype": "uint32", "scale": 1.0, "compression": ""}, "storage.dtype"),
    ("storage", {"dtype": "uint8", "scale": 0, "compression": ""}, "storage.scale"),
])
def test_validation_names_the_field(field, value, message):
    with pytest.raises(SpecError, match=message):
        digits_spec(**{field: value}).validate()


def test_load_spec_errors(tmp_path):
    with pytest.raises(SpecError, match="pipeline.preprocess"):
        load_spec(str(tmp_path))
    (tmp_path / "spec.json").write_text("{not json")
    with pytest.raises(SpecError, match="not valid JSON"):
        load_spec(str(tmp_path))
    d = digits_spec().to_dict()
    d["surprise"] = 1
    (tmp_path / "spec.json").write_text(json.dumps(d))
    with pytest.raises(SpecError, match="unknown fields"):
        load_spec(str(tmp_path))


# `custom`'s spec depends on the user's files and flags; tests/test_datasets_a.py covers it.
@pytest.mark.parametrize("name", [n for n in registry.names() if n != "custom"])
def test_reader_templates_are_valid_and_match_tokenizer(name):
    spec = registry.get_reader(name).spec_template().validate(name)
    layout = tokenize.token_layout(spec)
    assert spec.num_tokens == layout["num_tokens"]
    assert spec.token_grid == layout["token_grid"]
    if not spec.is_discrete:
        assert spec.token_dim == layout["token_dim"]
    assert spec.num_classes == len(spec.label_names) or not spec.label_names


def test_eurosat_and_digits_contracts():
    eurosat = registry.get_reader("eurosat").spec_template()
    assert (eurosat.input_shape, eurosat.num_tokens, eurosat.token_dim, eurosat.token_grid) == (
        [64, 64, 13], 64, 832, [8, 8])
    assert eurosat.num_classes == 10 and eurosat.label_names[-1] == "SeaLake"
    digits = registry.get_reader("digits").spec_template()
    assert (digits.input_shape, digits.num_tokens, digits.token_dim, digits.token_grid) == (
        [8, 8, 1], 16, 4, [4, 4])


def test_token_layout_difference_names_the_first_field_and_ignores_raw_caption_shapes():
    from preprocessing import registry
    from preprocessing.spec import token_layout_difference

    def template(name):
        return registry.get_reader(name, data_dir="/nonexistent").spec_template()

    assert token_layout_difference(template("digits"), template("cifar10")) == "num_tokens"
    assert token_layout_difference(template("cifar10"), template("dtd")) is None
    # vqa's raw text is a question + answer pair where mscoco's is one caption: same tokens.
    assert token_layout_difference(template("mscoco"), template("vqa")) is None
