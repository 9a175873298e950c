"""WM-811K's LSWMD.pkl: a pandas-0.x DataFrame pickle, read without pandas."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from preprocessing import registry
from preprocessing.datasets import _pandas_pickle
from preprocessing.datasets.base import RawDataMissing, RawExample
from tests.fixtures import make_wafermap


def _examples(data_dir: str, name: str = "wafermap") -> dict[str, RawExample]:
    reader = registry.get_reader(name, data_dir=data_dir)
    return {e.id: e for e in reader.read_all() if isinstance(e, RawExample)}


def test_pandas_cannot_load_the_legacy_layout_but_we_can(tmp_path):
    import pandas as pd

    path = os.path.join(make_wafermap.make_raw(str(tmp_path)), "LSWMD.pkl")
    with pytest.raises(ModuleNotFoundError, match="pandas.indexes"):  # what users of pandas 3 hit
        pd.read_pickle(path)
    columns = _pandas_pickle.read_columns(path, ["waferMap", "failureType", "dieSize"])
    assert len(columns["waferMap"]) == len(make_wafermap.LABELED) + make_wafermap.NUM_UNLABELED
    assert columns["failureType"][1].tolist() == [["Center"]]
    assert columns["waferMap"][0].dtype == np.uint8 and columns["waferMap"][0].shape == (20, 25)
    assert columns["dieSize"][0] == 500.0  # the float block, placed by its mgr_locs


def test_legacy_and_modern_pickles_give_the_same_examples(tmp_path):
    legacy = _examples(make_wafermap.make_raw(str(tmp_path / "legacy")))
    modern = _examples(make_wafermap.make_raw(str(tmp_path / "modern"), modern=True))
    assert sorted(legacy) == sorted(modern) and len(legacy) == len(make_wafermap.LABELED) - 1
    for key, example in legacy.items():
        np.testing.assert_array_equal(example.input, modern[key].input)
        assert example.label == modern[key].label


def test_a_dict_of_columns_is_read_too(tmp_path):
    path = tmp_path / "LSWMD.pkl"
    maps = [np.ones((3, 3), np.uint8), np.ones((3, 3), np.uint8)]  # equal shapes must stay 2 cells
    with open(path, "wb") as f:
        pickle.dump({"waferMap": maps, "failureType": [np.array([["Loc"]]), np.zeros((0, 0))]}, f)
    columns = _pandas_pickle.read_columns(str(path), ["waferMap", "failureType"])
    assert columns["waferMap"].shape == (2,) and columns["waferMap"][1].shape == (3, 3)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_that_names_other_code_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "LSWMD.pkl"
    path.write_bytes(pickle.dumps({"waferMap": [_Payload()]}))
    with pytest.raises(_pandas_pickle.ForeignCodeInPickle, match="system"):
        _pandas_pickle.read_columns(str(path), ["waferMap"])
    # The reader does not hand such a file to pandas either.
    with pytest.raises(RawDataMissing, match="refusing"):
        registry.get_reader("wafermap", data_dir=str(tmp_path)).list_sources()
    assert not (tmp_path / "pwned").exists()


def test_a_truncated_pickle_is_an_error_naming_the_file(tmp_path):
    data_dir = make_wafermap.make_raw(str(tmp_path))
    path = os.path.join(data_dir, "LSWMD.pkl")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(RawDataMissing, match="LSWMD.pkl.*waferMap and failureType"):
        list(registry.get_reader("wafermap", data_dir=data_dir).list_sources())
