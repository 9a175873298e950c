"""Tabular data as people have it: a csv of numeric and categorical (text) columns made into
one token sequence for `custom --format csv`.

- A column is numeric when most of its non-empty cells are numbers (a stray text cell there is
  a bad record of its row, as in a plain numeric table), else categorical;
  `--numeric_columns` / `--categorical_columns` (comma-separated names) override that.
- Numeric columns are continuous tokens (one per column, normalized with the train split's
  statistics, as the plain tabular format). An empty numeric cell keeps its row: its value
  is the column's mean over the train split's numbers (computed in the scan that infers the
  kinds; so it normalizes to ~0 and leaves the column's mean as it is), and that it was missing
  is a token of its own: each numeric column with an empty cell (in any split) gets a
  companion categorical column `<column>:missing` with the values `no`, `yes`, appended
  after the csv's categorical columns. `extra["missing_numeric"]` records the columns, their
  means and companions, so the serving graph, given NaN for a missing number, does the same
  (`preprocessing/tokenize.py` `complete_table_rows`). A table without empty numeric cells
  has no companions.
- Categorical columns are discrete tokens: each column has its own vocabulary, the sorted
  distinct values of its cells in the train split; its ids are `offset + 0` for an empty cell
  (missing: a token of its own), `offset + 1` for a value the train split did not have
  (out of vocabulary), then `offset + 2 + index` in the vocabulary; the offsets put the
  columns one after the other in one id space (`column_vocab_size`).
- Both kinds (or numeric columns with companions): the numeric columns first, then the
  categorical ones, as two segments of one sequence (spec.py, "Mixed-token sequences");
  only categorical: a discrete spec.
  The tokenizer `column_vocab` (preprocessing/tokenize.py) maps the raw strings to ids, in the
  Beam job and inside the exported serving signature alike.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Sequence

from preprocessing.datasets._custom_checks import InputCheckError, is_number

NUMERIC, CATEGORICAL = "numeric", "categorical"
CATEGORICAL_FEATURE = "category_tokens"  # the TFRecord feature of the categorical segment
MISSING_SUFFIX = ":missing"  # a numeric column's companion: was its cell empty?
MISSING_VALUES = ["no", "yes"]  # the companion's vocabulary (sorted, as any other column's)


def parse_names(value: Any) -> list[str]:
    """`"a,b"` or `["a", "b"]` or None -> column names."""
    if not value:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(v).strip() for v in items if str(v).strip()]


@dataclasses.dataclass
class TableColumns:
    """How each feature column of a csv is read, in the csv's order, and the categorical
    columns' vocabularies (from the train split)."""

    names: list[str]
    kinds: list[str]
    vocabularies: dict[str, list[str]]
    # Numeric columns with empty cells: {name: (empty cells in all splits, train-split mean)}.
    missing: dict[str, tuple[int, float]] = dataclasses.field(default_factory=dict)

    @property
    def numeric(self) -> list[str]:
        return [n for n, k in zip(self.names, self.kinds) if k == NUMERIC]

    @property
    def categorical(self) -> list[str]:
        return [n for n, k in zip(self.names, self.kinds) if k == CATEGORICAL]

    @property
    def imputed(self) -> list[str]:
        """The numeric columns with empty cells, in numeric order (their companions' order)."""
        return [n for n in self.numeric if n in self.missing]

    @property
    def mixed(self) -> bool:
        """Whether the table is more than plain numbers: categorical columns or companions."""
        return bool(self.categorical or self.missing)

    def index(self, name: str) -> int:
        return self.names.index(name)

    def note(self) -> str:
        """One line saying which columns became which tokens."""
        numeric = ", ".join(self.numeric) or "none"
        categorical = ", ".join(f"{n} ({len(self.vocabularies[n])} values)"
                                for n in self.categorical) or "none"
        imputed = "; ".join(f"{n}: {self.missing[n][0]} empty cells -> the train mean "
                            f"{self.missing[n][1]:.6g} and the token {n}{MISSING_SUFFIX}=yes"
                            for n in self.imputed)
        return (f"columns: numeric -> continuous tokens: {numeric}; categorical -> discrete "
                f"tokens, vocabulary per column from the train split: {categorical} (an empty "
                f"cell is a missing token, a value unseen in train an out-of-vocabulary one; "
                f"override with --numeric_columns / --categorical_columns)"
                + (f"; numeric columns with empty cells, kept: {imputed}" if imputed else ""))


def scan_columns(names: Sequence[str], rows: Iterable[tuple[str, str, Sequence[str]]],
                 numeric: Sequence[str] = (), categorical: Sequence[str] = ()) -> TableColumns:
    """Infers each column's kind and builds the categorical vocabularies in one pass.
    `rows`: (where, split, feature cells in `names` order). InputCheckError names a column
    the overrides get wrong."""
    for flag, given in (("--numeric_columns", numeric), ("--categorical_columns", categorical)):
        unknown = [n for n in given if n not in names]
        if unknown:
            raise InputCheckError(f"no column {unknown[0]!r} in the csv ({flag}): its feature "
                                  f"columns are {', '.join(names)}")
    both = sorted(set(numeric) & set(categorical))
    if both:
        raise InputCheckError(f"column {both[0]!r} is named as numeric and as categorical "
                              f"(--numeric_columns, --categorical_columns): name it in one")
    text_cell: list[tuple[str, str] | None] = [None] * len(names)
    texts, filled, empty = [0] * len(names), [0] * len(names), [0] * len(names)
    seen: list[set[str]] = [set() for _ in names]
    train_sum, train_count = [0.0] * len(names), [0] * len(names)  # numbers, for the means
    for where, split, cells in rows:
        for i, cell in enumerate(cells):
            cell = cell.strip()
            if not cell:
                empty[i] += 1
                continue
            filled[i] += 1
            number = is_number(cell)
            if not number:
                texts[i] += 1
                text_cell[i] = text_cell[i] or (where, cell)
            if split == "train":
                seen[i].add(cell)
                if number and math.isfinite(float(cell)):
                    train_sum[i] += float(cell)
                    train_count[i] += 1
    kinds = []
    for i, name in enumerate(names):
        if name in numeric and text_cell[i]:
            where, cell = text_cell[i]
            raise InputCheckError(f"column {name!r} holds the text {cell!r} ({where}): it is "
                                  f"named in --numeric_columns; drop it from there to read it "
                                  f"as categorical")
        is_text = texts[i] * 2 > filled[i]
        kinds.append(CATEGORICAL if name in categorical or (is_text and name not in numeric)
                     else NUMERIC)
    vocabularies = {n: sorted(seen[i]) for i, n in enumerate(names) if kinds[i] == CATEGORICAL}
    # No number in the train split: 0.0 (then the column has nothing to normalize anyway).
    missing = {n: (empty[i], train_sum[i] / train_count[i] if train_count[i] else 0.0)
               for i, n in enumerate(names) if kinds[i] == NUMERIC and empty[i]}
    return TableColumns(list(names), kinds, vocabularies, missing)


def column_vocab_size(vocabularies: Sequence[Sequence[str]]) -> int:
    """Ids of all categorical columns: per column missing, out-of-vocabulary and its values."""
    return sum(2 + len(v) for v in vocabularies)


def missing_numeric(columns: TableColumns) -> list[dict[str, Any]]:
    """`extra["missing_numeric"]`: per numeric column with empty cells, its place among the
    numeric columns, the train mean that fills an empty cell and its companion column."""
    return [{"name": n, "index": columns.numeric.index(n), "mean": columns.missing[n][1],
             "companion": n + MISSING_SUFFIX} for n in columns.imputed]


def spec_fields(columns: TableColumns) -> dict[str, Any]:
    """The DatasetSpec fields of a table with categorical columns or companions of numeric
    columns with empty cells (see the module docstring)."""
    categorical = [{"name": n, "values": columns.vocabularies[n]} for n in columns.categorical]
    categorical += [{"name": n + MISSING_SUFFIX, "values": list(MISSING_VALUES)}
                    for n in columns.imputed]
    vocab = column_vocab_size([c["values"] for c in categorical])
    n_num, n_cat = len(columns.numeric), len(categorical)
    extra = {"feature_names": columns.numeric, "categorical": categorical,
             "columns": dict(zip(columns.names, columns.kinds))}
    if columns.missing:
        extra["missing_numeric"] = missing_numeric(columns)
    if not n_num:
        return dict(modality="tabular", input_shape=[n_cat], tokenizer="column_vocab",
                    patch_shape=[1], num_tokens=n_cat, vocab_size=vocab, token_grid=[n_cat],
                    input_dtype="string", extra=extra)
    segments = [
        {"name": NUMERIC, "kind": "continuous", "num_tokens": n_num, "token_grid": [n_num],
         "feature": "tokens", "input_shape": [n_num], "tokenizer": "tabular",
         "patch_shape": [1], "token_dim": 1},
        {"name": CATEGORICAL, "kind": "discrete", "num_tokens": n_cat, "token_grid": [n_cat],
         "feature": CATEGORICAL_FEATURE, "input_shape": [n_cat], "tokenizer": "column_vocab",
         "vocab_size": vocab},
    ]
    return dict(modality="tabular", input_shape=[n_num], tokenizer="segments", patch_shape=[1],
                num_tokens=n_num + n_cat, token_dim=1, token_grid=[n_num + n_cat],
                segments=segments, extra=extra)
