"""`custom`: the user's own data, in one of a few plain formats chosen with the `format` option.

    python -m pipeline.preprocess --dataset custom --format npy  --raw_data_dir my_arrays --patch_shape 4,4
    python -m pipeline.preprocess --dataset custom --format csv  --raw_data_dir my_table --label_column y
    python -m pipeline.preprocess --dataset custom --format text --raw_data_dir my_seqs --vocab ACGT --seq_len 100

Reader options (the pipeline forwards the flags of the same names as keyword arguments):
- `format`: `npy`, `csv` or `text` (required). Other formats registered by other modules in the
  same scheme (e.g. `image_folder`, `audio_folder`) are separate datasets; a format this
  module does not know is rejected with the list of the ones it does.
- `input_shape` (npy: checked against the array; else inferred), `patch_shape` (npy with 2-D or
  3-D examples; required there), `label_column` (csv; default `label` when the header has
  it, else the table has no labels), `vocab` (text: the
  characters, the first one pads) and `seq_len` (text), `task` (`multiclass` default, or
  `regression`), `name` (the dataset name written to spec.json; default `custom`),
  `numeric_columns` / `categorical_columns` (csv: override which columns are which) and
  `split_seed` (the job's --seed, which the pipeline passes: the csv vocabularies are built
  on the train split).

Layouts under `--raw_data_dir`:
- npy:  `inputs.npy` `[N, *input_shape]` and `labels.npy` `[N]`; or `train/`, `val/`, `test/`
        subfolders each holding such a pair (then the split is the folder). Read memory-mapped,
        in slices. Example rank picks the tokenizer: `[F]` tabular, `[T, C]` patch1d,
        `[H, W, C]` patch2d; an integer `[L]` array with `vocab_size` given is discrete.
        An `unlabeled/inputs.npy` beside them is a pool that pretraining reads together with
        the labelled training inputs (split `unlabeled`; the probe uses the labelled splits).
- csv:  `data.csv`, a header row, the label column and feature columns: numeric ones only
        (tabular `[F]`), or numeric and categorical ones (continuous + discrete tokens with a
        vocabulary per column from the train split; `_custom_table.py`; `numeric_columns` /
        `categorical_columns` override which is which). An empty numeric cell is the
        column's train mean plus a `<column>:missing` = `yes` token (`_custom_table.py`).
- text: `data.txt`, one example per line: `<label><TAB><sequence>`; one token per character of
        `vocab`, truncated / right-padded to `seq_len` with `vocab[0]`.
Labels are optional: without `labels.npy`, a label column or tabs in data.txt the dataset is
pretrain-only (spec task "none"): every example goes to the `train` split (the split folders
are kept), and its encoder is evaluated on a labelled dataset of the same token layout.
Without split folders, labelled examples are split 80/10/10 train/val/test by a seeded hash
of the id.
Class labels are the sorted distinct label values of the data (integers numerically), mapped
to 0..K-1; `label_names` records the original values. Continuous inputs are normalized with
per-channel statistics the pipeline computes on the train split.

Adding a format: write `_read_<format>` / `_spec_<format>` / `_sources_<format>` methods
below and add the name to FORMATS, or register a separate dataset module of your own.
"""

from __future__ import annotations

import csv
import math
import os
from typing import Any, Iterator, Sequence

import numpy as np

from preprocessing.datasets import _custom_checks as checks
from preprocessing.datasets import _custom_table as table
from preprocessing.datasets import _line_ranges
from preprocessing.datasets.base import (BadRecord, DatasetReader, RawDataMissing, RawExample,
                                         split_by_fractions)
from preprocessing.spec import PROTOCOL_ROLES, UNLABELED, DatasetSpec

FORMATS = ("npy", "csv", "text")
NPY_SPLITS = ("train", "val", "test")
POOL_SPLIT = "unlabeled"  # the folder and the split of an unlabelled pool beside labelled data
ROWS_PER_SOURCE = 4096
# A pretrain-only dataset: all of it is pretraining data, nothing is probed.
PRETRAIN_ONLY_PROTOCOL = {"pretrain": ["train"], **{role: [] for role in PROTOCOL_ROLES[1:]}}
# Labelled splits with an unlabelled pool: pretraining reads both, the probe the labelled ones.
POOL_PROTOCOL = {"pretrain": ["train", POOL_SPLIT], "probe_train": ["train"],
                 "probe_val": ["val"], "probe_test": ["test"]}


class CustomDataError(ValueError):
    """The options or the files do not fit together; the message says which flag or file."""


def pretrain_only_labels() -> dict[str, Any]:
    """The label fields of a spec without labels (preprocessing/spec.py)."""
    return dict(task="none", metric="none", num_classes=0, label_names=[], label_dtype="int64",
                protocol=dict(PRETRAIN_ONLY_PROTOCOL))


def parse_ints(value: Any, flag: str) -> list[int] | None:
    """`"8,8,1"`, `[8, 8, 1]` or `None` -> list of ints."""
    if value is None or value == "" or value == []:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        return [int(v) for v in items]
    except (TypeError, ValueError):
        raise CustomDataError(f"--{flag}={value!r}: expected comma-separated integers") from None


def _load_npy(path: str) -> np.ndarray:
    """Memory-mapped; an object array (it needs pickle) is one line naming the file."""
    try:
        return np.load(path, mmap_mode="r")
    except ValueError as e:
        raise checks.InputCheckError(
            f"an array of Python objects where numbers are expected ({path}): save a numeric "
            f"array, e.g. np.save(path, np.asarray(x, dtype=np.float32))") from e


def sorted_label_values(values: set[str]) -> list[str]:
    def is_int(v: str) -> bool:
        return v.lstrip("-").isdigit()

    return sorted(values, key=int) if values and all(map(is_int, values)) else sorted(values)


class CustomReader(DatasetReader):
    name = "custom"
    labelled_split_fractions = (("train", 0.8), ("val", 0.1), ("test", 0.1))

    @property
    def split_fractions(self) -> tuple[tuple[str, float], ...]:
        """80/10/10 for labelled data; a pretrain-only dataset is all `train` (no probe)."""
        try:
            return self.labelled_split_fractions if self.labelled() else (("train", 1.0),)
        except RawDataMissing:
            return self.labelled_split_fractions

    def __init__(self, data_dir: str | None = None, format: str | None = None,
                 input_shape: Any = None, patch_shape: Any = None, label_column: str | None = None,
                 vocab: str | None = None, seq_len: Any = None, vocab_size: Any = None,
                 task: str = "multiclass", name: str | None = None,
                 numeric_columns: Any = None, categorical_columns: Any = None,
                 split_seed: Any = 42, **options: Any):
        super().__init__(data_dir, **options)
        if format not in FORMATS:
            raise CustomDataError(
                f"--dataset custom needs --format, one of {', '.join(FORMATS)}, image_folder, "
                f"audio_folder (got {format!r})")
        if task not in ("multiclass", "regression"):
            raise CustomDataError(f"--task={task!r}: expected multiclass or regression")
        self.format = format
        self.input_shape = parse_ints(input_shape, "input_shape")
        self.patch_shape = parse_ints(patch_shape, "patch_shape")
        self.label_column = label_column or "label"
        self.label_column_given = bool(label_column)
        self.vocab = vocab
        self.seq_len = int(seq_len) if seq_len not in (None, "") else None
        self.vocab_size = int(vocab_size) if vocab_size not in (None, "") else 0
        self.task = task
        self.dataset_name = name or "custom"
        self._labels: list[str] | None = None  # sorted distinct raw labels, driver-computed
        self._label_index: dict[str, int] | None = None
        self._labelled: bool | None = None
        # csv: which columns are numeric / categorical (overrides) and, once scanned, how each
        # is read; the vocabularies need the job's split seed (the train split's values).
        self.numeric_columns = table.parse_names(numeric_columns)
        self.categorical_columns = table.parse_names(categorical_columns)
        self.split_seed = int(split_seed)
        self._columns: table.TableColumns | None = None

    # === files ===
    def _data_dir(self) -> str:
        return self.data_dir or os.path.join("data", "raw", "custom")

    def _npy_pairs(self) -> list[tuple[str | None, str, str | None]]:
        """(fixed split or None, inputs.npy, labels.npy or None when absent) of the labelled
        part (or the whole of a pretrain-only dataset), without the unlabelled pool."""
        d = self._data_dir()

        def pair(split, folder):
            x, y = os.path.join(folder, "inputs.npy"), os.path.join(folder, "labels.npy")
            return (split, x, y if os.path.isfile(y) else None) if os.path.isfile(x) else None

        pairs = [p for p in (pair(s, os.path.join(d, s)) for s in NPY_SPLITS) if p]
        return pairs or [p for p in [pair(None, d)] if p]

    def _pool_inputs(self) -> str | None:
        """`unlabeled/inputs.npy` beside labelled data, the pretraining pool; else None."""
        path = os.path.join(self._data_dir(), POOL_SPLIT, "inputs.npy")
        return path if self.format == "npy" and os.path.isfile(path) else None

    def labelled(self) -> bool:
        """Whether the files carry labels (else the dataset is pretrain-only)."""
        if self._labelled is None:
            self.check_raw()
            if self.format == "npy":
                with_labels = [y is not None for _, _, y in self._npy_pairs()]
                if any(with_labels) and not all(with_labels):
                    without = [x for _, x, y in self._npy_pairs() if y is None]
                    raise CustomDataError(
                        f"no labels.npy beside it while other splits have one ({without[0]}): "
                        f"label every split, or none of them for a pretrain-only dataset")
                self._labelled = all(with_labels)
            elif self.format == "csv":
                self._labelled = self.label_column in self._csv_header()
            else:  # data.txt: `<label><TAB><sequence>` lines, or bare sequences
                with _line_ranges.open_text(self._table_file()) as f:
                    first = next((line for line in f if line.strip()), "")
                self._labelled = "\t" in first
        return self._labelled

    def _csv_header(self) -> list[str]:
        return next(csv.reader([_line_ranges.read_first_line(self._table_file())]), [])

    def _table_file(self) -> str:
        return os.path.join(self._data_dir(), "data.csv" if self.format == "csv" else "data.txt")

    def expected_files(self) -> list[str]:
        if self.format == "npy":
            return ["inputs.npy + labels.npy (or train/, val/, test/ folders holding them)"]
        return [os.path.basename(self._table_file())]

    def check_raw(self) -> None:
        d = os.path.abspath(self._data_dir())
        if self.format == "npy":
            pairs = self._npy_pairs()
            if not pairs:
                raise RawDataMissing(f"custom --format npy: no inputs.npy in {d} (nor in its "
                                     f"train/, val/, test/ folders); put your arrays there")
        elif not os.path.isfile(self._table_file()):
            raise RawDataMissing(f"custom --format {self.format}: {self._table_file()} not found; "
                                 f"see preprocessing/datasets/custom.py for its layout")

    # === labels ===
    def _raw_label_values(self) -> Iterator[tuple[str, str]]:
        """(where, label text): per distinct value for npy, per row for the text formats."""
        if self.format == "npy":
            for _, _, y in self._npy_pairs():
                labels = np.load(y, mmap_mode="r")
                row = checks.first_non_integral(labels) if self.task != "regression" else None
                if row is not None:
                    yield f"{y}[{row}]", str(labels[row].item())
                for v in np.unique(labels):
                    yield y, str(v.item())
            return
        for source in self._line_sources():
            for where, fields in self._table_rows(source):
                if isinstance(fields, tuple):
                    yield where, fields[0]

    def label_values(self) -> list[str]:
        if self._labels is None:
            self.check_raw()
            pairs = list(self._raw_label_values())
            checks.check_class_labels(pairs, "--task regression")
            self._labels = sorted_label_values({text for _, text in pairs})
        return self._labels

    def _label(self, raw: Any) -> Any:
        if not self.labelled():
            return UNLABELED
        text = str(raw.item() if isinstance(raw, np.generic) else raw).strip()
        if self.task == "regression":
            value = float(text)
            if not math.isfinite(value):
                raise ValueError(f"label {text!r} is not finite")
            return np.float32(value)
        if self._label_index is None:
            self._label_index = {v: i for i, v in enumerate(self.label_values())}
        index = self._label_index.get(text)
        if index is None:
            raise ValueError(f"label {text!r} is not one of the dataset's labels")
        return index

    # === spec ===
    def _example_shape_and_dtype(self) -> tuple[list[int], np.dtype]:
        _, x, _ = self._npy_pairs()[0]
        array = np.load(x, mmap_mode="r")
        return list(array.shape[1:]), array.dtype

    def _npy_arrays(self) -> list[tuple[str, np.ndarray, str | None]]:
        """(inputs path, inputs memory-mapped, labels path) of every split and the pool."""
        pool = self._pool_inputs()
        pairs = self._npy_pairs() + ([(POOL_SPLIT, pool, None)] if pool else [])
        return [(x, _load_npy(x), y) for _, x, y in pairs]

    def _check_npy_files(self) -> None:
        """Dtypes, label counts and example shapes of every file (headers and labels only)."""
        arrays = self._npy_arrays()
        for x, inputs, y in arrays:
            checks.check_numeric_array(x, inputs)
            if y is not None:
                labels = _load_npy(y)
                checks.check_label_count(y, len(labels), x, len(inputs))
                if labels.dtype.kind not in "US":  # names are fine as class labels
                    checks.check_numeric_array(y, labels, "labels")
        checks.check_same_example_shape([(x, inputs) for x, inputs, _ in arrays])

    def check_inputs(self, max_bad_fraction: float) -> None:
        """Before the job writes anything: refuses (InputCheckError) a file whose share of
        rows holding NaN or inf is above `max_bad_fraction` (those rows are bad records)."""
        if self.format != "npy":
            return
        for x, inputs, _ in self._npy_arrays():
            bad, first = checks.count_non_finite_rows(inputs)
            checks.check_non_finite_share(x, bad, first, len(inputs), max_bad_fraction)

    def spec_template(self) -> DatasetSpec:
        self.check_raw()
        fields: dict[str, Any]
        if self.format == "npy":
            self._check_npy_files()
            shape, dtype = self._example_shape_and_dtype()
            if self.input_shape and self.input_shape != shape:
                raise CustomDataError(f"--input_shape={self.input_shape} but "
                                      f"{self._npy_pairs()[0][1]} holds examples of shape {shape}")
            fields = self._npy_layout(shape, dtype)
        elif self.format == "csv":
            header = self._csv_header()
            if self.label_column_given and self.label_column not in header:
                raise CustomDataError(f"--label_column={self.label_column!r} is not a column of "
                                      f"{self._table_file()} (columns: {', '.join(header)})")
            features = [c for c in header if c != self.label_column or not self.labelled()]
            columns = self.table_columns(features)
            f = len(features)
            fields = (table.spec_fields(columns) if columns.mixed else
                      dict(modality="tabular", input_shape=[f], tokenizer="tabular",
                           patch_shape=[1], num_tokens=f, token_dim=1, token_grid=[f],
                           extra={"feature_names": features}))
        else:
            if not self.vocab or not self.seq_len:
                raise CustomDataError("custom --format text needs --vocab (the characters; the "
                                      "first one pads) and --seq_len (tokens per example)")
            if len(set(self.vocab)) != len(self.vocab):
                raise CustomDataError(f"--vocab={self.vocab!r} repeats a character")
            fields = dict(modality="token", input_shape=[self.seq_len], tokenizer="discrete",
                          patch_shape=[1], num_tokens=self.seq_len, vocab_size=len(self.vocab),
                          token_grid=[self.seq_len], input_dtype="int64",
                          extra={"vocab": self.vocab, "pad_token": self.vocab[0]})
        if not self.labelled():
            labels = pretrain_only_labels()
            if self.format == "npy" and self._npy_pairs()[0][0]:  # split folders: all of them
                labels["protocol"]["pretrain"] = [split for split, _, _ in self._npy_pairs()]
        elif self.task == "regression":
            labels = dict(task="regression", metric="spearman", num_classes=0, label_names=[],
                          label_dtype="float32")
        else:
            values = self.label_values()
            labels = dict(task="binary" if len(values) == 2 else "multiclass",
                          metric="accuracy", num_classes=len(values), label_names=values,
                          label_dtype="int64")
        if self._pool_inputs() and self.labelled():
            labels["protocol"] = dict(POOL_PROTOCOL)
        extra = fields.pop("extra", {})
        extra.update(format=self.format, data_dir=os.path.abspath(self._data_dir()))
        return DatasetSpec(name=self.dataset_name, label_shape=[], extra=extra, **fields,
                           **labels).validate(f"custom --format {self.format}")

    def _npy_layout(self, shape: list[int], dtype: np.dtype) -> dict[str, Any]:
        if len(shape) == 1 and np.issubdtype(dtype, np.integer) and self.vocab_size:
            (length,) = shape
            return dict(modality="token", input_shape=shape, tokenizer="discrete",
                        patch_shape=[1], num_tokens=length, vocab_size=self.vocab_size,
                        token_grid=[length], input_dtype="int64")
        if len(shape) == 1:
            return dict(modality="tabular", input_shape=shape, tokenizer="tabular",
                        patch_shape=[1], num_tokens=shape[0], token_dim=1, token_grid=shape)
        if len(shape) not in (2, 3):
            raise CustomDataError(f"custom --format npy: examples of shape {shape}; expected "
                                  f"[F], [T, C] or [H, W, C]")
        patch = self.patch_shape
        if not patch or len(patch) != len(shape) - 1:
            raise CustomDataError(f"custom --format npy: examples of shape {shape} need "
                                  f"--patch_shape with {len(shape) - 1} value(s)")
        if any(s % p for s, p in zip(shape, patch)):
            raise CustomDataError(f"--patch_shape={patch} does not divide the example shape "
                                  f"{shape}")
        grid = [s // p for s, p in zip(shape, patch)]
        return dict(modality="time_series" if len(shape) == 2 else "image", input_shape=shape,
                    tokenizer="patch1d" if len(shape) == 2 else "patch2d", patch_shape=patch,
                    num_tokens=int(np.prod(grid)), token_dim=int(np.prod(patch)) * shape[-1],
                    token_grid=grid)

    # === reading ===
    def _line_sources(self) -> list[_line_ranges.LineRange]:
        return _line_ranges.plan_line_ranges(self._table_file(), ROWS_PER_SOURCE)

    def list_sources(self) -> list[Any]:
        self.check_raw()
        if self.labelled() and self.task != "regression":
            self.label_values()  # computed on the driver; travels with the reader
        if self.format == "npy":
            sources = []
            pool = self._pool_inputs()
            pairs = self._npy_pairs() + ([(POOL_SPLIT, pool, None)] if pool else [])
            for split, x, y in pairs:
                n = np.load(x, mmap_mode="r").shape[0]
                sources += [("npy", split, x, y, start, min(start + ROWS_PER_SOURCE, n))
                            for start in range(0, n, ROWS_PER_SOURCE)]
            return sources
        return [("lines", r) for r in self._line_sources()]

    def _table_rows(self, source: _line_ranges.LineRange) -> Iterator[tuple[str, Any]]:
        """(where, (label, payload)) or (where, error message) per data line."""
        labelled = self.labelled()
        if self.format == "csv":
            header = next(csv.reader([_line_ranges.read_first_line(source.path)]), [])
            label_index = header.index(self.label_column) if labelled else None
        for number, line in _line_ranges.iter_lines(source):
            where = f"{source.path}:{number}"
            if not line.strip() or (self.format == "csv" and number == 1):
                continue
            if self.format == "csv":
                fields = next(csv.reader([line]))
                if len(fields) != len(header):
                    yield where, f"expected {len(header)} columns, got {len(fields)}"
                    continue
                if label_index is None:
                    yield where, ("", fields)
                    continue
                features = fields[:label_index] + fields[label_index + 1:]
                yield where, (fields[label_index].strip(), features)
            elif not labelled:
                yield where, ("", line.rstrip("\r\n"))
            else:
                label, tab, text = line.partition("\t")
                if not tab:
                    yield where, "expected `<label><TAB><sequence>`, found no tab"
                    continue
                yield where, (label.strip(), text)

    def read_source(self, source: tuple) -> Iterator[RawExample | BadRecord]:
        if source[0] == "npy":
            yield from self._read_npy(*source[1:])
            return
        for where, row in self._table_rows(source[1]):
            if isinstance(row, str):
                yield BadRecord(path=where, reason=row)
                continue
            raw_label, payload = row
            try:
                label = self._label(raw_label)
                x = self._encode_text(payload) if self.format == "text" else \
                    self._parse_features(payload)
            except ValueError as e:
                yield BadRecord(path=where, reason=str(e))
                continue
            line = where.rsplit(":", 1)[-1]
            yield RawExample(id=f"line-{int(line):09d}", input=x, label=label)

    def table_columns(self, features: list[str]) -> table.TableColumns:
        """How each csv feature column is read (scanned once on the driver; travels with the
        reader to the workers)."""
        if self._columns is None:
            def rows():
                for source in self._line_sources():
                    for where, row in self._table_rows(source):
                        if isinstance(row, tuple):
                            line = int(where.rsplit(":", 1)[-1])
                            split = split_by_fractions(f"line-{line:09d}", self.split_seed,
                                                       self.split_fractions)
                            yield where, split, row[1]

            self._columns = table.scan_columns(features, rows(), self.numeric_columns,
                                               self.categorical_columns)
        return self._columns

    def columns_note(self) -> str | None:
        """csv with categorical columns or empty numeric cells: one line saying which columns
        became which tokens."""
        if self.format != "csv" or self._columns is None or not self._columns.mixed:
            return None
        return self._columns.note()

    def _parse_features(self, fields: Sequence[str]) -> Any:
        columns = self._columns
        if columns is not None and columns.mixed:
            numbers = [fields[columns.index(n)] for n in columns.numeric]
            numeric = self._numbers(numbers, columns.numeric, columns.missing)
            cells = [fields[columns.index(n)].strip() for n in columns.categorical]
            # The companions of numeric columns with empty cells: was this row's cell empty?
            cells += [table.MISSING_VALUES[not numbers[columns.numeric.index(n)].strip()]
                      for n in columns.imputed]
            cells = np.array(cells, dtype=object)
            return {table.NUMERIC: numeric, table.CATEGORICAL: cells} if columns.numeric \
                else cells
        return self._numbers(fields, columns.names if columns else None)

    @staticmethod
    def _numbers(cells: Sequence[str], names: Sequence[str] | None,
                 missing: dict[str, tuple[int, float]] | None = None) -> np.ndarray:
        """The cells as float32; an empty cell of a column in `missing` is its train mean."""
        values = []
        for i, cell in enumerate(cells):
            if missing and not cell.strip() and names[i] in missing:
                values.append(missing[names[i]][1])
                continue
            try:
                values.append(float(cell))
            except ValueError:
                column = f"column {names[i]!r}" if names else f"column {i}"
                raise ValueError(f"{column}: {cell!r} is not a number") from None
        values = np.array(values, dtype=np.float32)
        if not np.isfinite(values).all():
            raise ValueError("non-finite feature value (nan/inf)")
        return values

    def _encode_text(self, text: str) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.vocab)}
        text = text[:self.seq_len]
        unknown = [c for c in text if c not in index]
        if unknown:
            raise ValueError(f"character {unknown[0]!r} is not in --vocab={self.vocab!r}")
        ids = np.zeros(self.seq_len, dtype=np.int64)  # 0 = vocab[0] = padding
        ids[:len(text)] = [index[c] for c in text]
        return ids

    def _read_npy(self, split: str | None, x_path: str, y_path: str | None, start: int,
                  stop: int) -> Iterator[RawExample | BadRecord]:
        inputs = np.load(x_path, mmap_mode="r")
        labels = np.load(y_path, mmap_mode="r") if y_path else np.full(len(inputs), UNLABELED)
        if labels.shape[0] != inputs.shape[0]:
            yield BadRecord(path=y_path, reason=f"{labels.shape[0]} labels for "
                                                f"{inputs.shape[0]} rows of {x_path}")
            return
        for i in range(start, stop):
            where = f"{x_path}[{i}]"
            x = np.array(inputs[i])
            try:
                if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
                    raise ValueError("non-finite value (nan/inf) in the example")
                label = self._label(labels[i]) if y_path else UNLABELED
            except ValueError as e:
                yield BadRecord(path=where, reason=str(e))
                continue
            prefix = f"{split}/" if split else ""
            yield RawExample(id=f"{prefix}row-{i:09d}", input=x, label=label, split=split)


READERS = {"custom": CustomReader}
