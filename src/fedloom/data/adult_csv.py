"""UCI Adult's text format, and its features: one-hot categories, standardised numbers.

Each line of ``adult.data`` / ``adult.test`` is 14 attributes and the label, separated by
commas (and a space), e.g.::

    39, State-gov, 77516, Bachelors, 13, Never-married, ..., United-States, <=50K

Lines starting with ``|`` are comments (``adult.test`` opens with ``|1x3 Cross validator``) and
blank lines are skipped. Labels are ``<=50K`` (0) and ``>50K`` (1); ``adult.test`` writes them
with a trailing ``.``, which is accepted in either file.

Missing values (``?``) follow one rule: a missing value is no evidence. In a categorical column it
sets none of the column's one-hot features (all zeros, as does a category never seen in training);
in a numeric column it is the training mean (0 after standardising). Encoding statistics (the
categories, each numeric mean and standard deviation) are learned from the training rows only.

Example:
    >>> rows = parse_adult("25, Private, 226802, 11th, 7, Never-married, Machine-op-inspct, "
    ...                    "Own-child, Black, Male, 0, 0, 40, United-States, <=50K.\\n", source="t")
    >>> rows.labels.tolist(), rows.categorical["race"].tolist()
    ([0], ['Black'])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedloom.core.errors import DataError
from fedloom.data.config import CATEGORICAL, COLUMNS, NUMERIC, FeatureSet

MISSING = "?"
LABELS: dict[str, int] = {"<=50K": 0, ">50K": 1}


@dataclass(frozen=True, slots=True, kw_only=True)
class AdultRows:
    """Parsed rows, before encoding.

    Attributes:
        numeric: (N, 6) float64 in :data:`NUMERIC` order, NaN where missing.
        categorical: column -> (N,) array of str (``?`` where missing), for :data:`CATEGORICAL`.
        labels: (N,) int64, 1 for ``>50K``.
    """

    numeric: np.ndarray
    categorical: dict[str, np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def parse_adult(text: str, *, source: str) -> AdultRows:
    """Parse the text of ``adult.data`` or ``adult.test``.

    Raises:
        DataError: naming ``source`` and the line: a wrong number of fields, an empty field, a
            numeric column that is not a finite number, or a label other than ``<=50K`` /
            ``>50K`` (with or without a trailing ``.``).
    """
    numeric: list[list[float]] = []
    categorical: list[list[str]] = []
    labels: list[int] = []
    num_idx = [COLUMNS.index(c) for c in NUMERIC]
    cat_idx = [COLUMNS.index(c) for c in CATEGORICAL]
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("|"):
            continue
        fields = [f.strip() for f in stripped.split(",")]
        where = f"{source}, line {lineno}"
        if len(fields) != len(COLUMNS) + 1:
            raise DataError(f"{where}: expected {len(COLUMNS) + 1} comma-separated fields "
                            f"(14 attributes and the label), got {len(fields)}")
        empty = next((COLUMNS[i] for i, f in enumerate(fields[:-1]) if not f), None)
        if empty is not None:
            raise DataError(f"{where}: column {empty!r} is empty (write '?' for a missing value)")
        numeric.append([_number(fields[i], COLUMNS[i], where) for i in num_idx])
        categorical.append([fields[i] for i in cat_idx])
        labels.append(_label(fields[-1], where))
    cats = np.array(categorical, dtype=str).reshape(len(labels), len(CATEGORICAL))
    return AdultRows(
        numeric=np.array(numeric, dtype=np.float64).reshape(len(labels), len(NUMERIC)),
        categorical={c: cats[:, j] for j, c in enumerate(CATEGORICAL)},
        labels=np.array(labels, dtype=np.int64),
    )


def _number(field: str, column: str, where: str) -> float:
    if field == MISSING:
        return math.nan
    try:
        value = float(field)
    except ValueError:
        raise DataError(f"{where}: column {column!r} is numeric, got {field!r}") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: column {column!r} must be a finite number, got {field!r}")
    return value


def _label(field: str, where: str) -> int:
    label = LABELS.get(field.removesuffix("."))
    if label is None:
        raise DataError(f"{where}: unknown label {field!r}; expected <=50K or >50K "
                        "(optionally with a trailing '.')")
    return label


@dataclass(frozen=True, slots=True, kw_only=True)
class AdultEncoding:
    """How rows become features, learned from the training rows (:meth:`fit`).

    Features follow the file's column order (of ``columns``, all by default): a numeric column
    is one feature, ``(value - mean) / std``; a categorical column is a block of one-hot
    features, one per training category in sorted order (``?`` is not a category).

    Attributes:
        columns: the columns encoded, in file order.
        mean, std: per :data:`NUMERIC` column, over its non-missing training values (population
            std; a constant column gets std 1, a column with no values mean 0 and std 1).
        categories: per :data:`CATEGORICAL` column, its sorted training categories.
    """

    columns: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    categories: dict[str, tuple[str, ...]]

    @classmethod
    def fit(cls, rows: AdultRows, features: FeatureSet = FeatureSet.ALL) -> AdultEncoding:
        """The encoding of ``features`` learned from ``rows`` (the training split)."""
        columns = FeatureSet(features).columns  # also a plain "categorical" from Python
        mean = np.zeros(len(NUMERIC))
        std = np.ones(len(NUMERIC))
        for j in range(len(NUMERIC)):
            seen = rows.numeric[:, j][~np.isnan(rows.numeric[:, j])]
            if seen.size:
                mean[j] = seen.mean()
                spread = seen.std()
                std[j] = spread if spread > 0 else 1.0
        categories = {c: tuple(sorted(set(rows.categorical[c].tolist()) - {MISSING}))
                      for c in CATEGORICAL}
        return cls(columns=columns, mean=mean, std=std, categories=categories)

    @property
    def num_features(self) -> int:
        return sum(len(self.categories[c]) if c in self.categories else 1
                   for c in self.columns)

    def feature_names(self) -> list[str]:
        """``age``, ``workclass=Federal-gov``, ...: one name per feature, in order."""
        names: list[str] = []
        for column in self.columns:
            if column in NUMERIC:
                names.append(column)
            else:
                names.extend(f"{column}={v}" for v in self.categories[column])
        return names

    def transform(self, rows: AdultRows) -> np.ndarray:
        """The (N, :attr:`num_features`) float32 features of ``rows``."""
        blocks: list[np.ndarray] = []
        for column in self.columns:
            if column in NUMERIC:
                j = NUMERIC.index(column)
                z = (rows.numeric[:, j] - self.mean[j]) / self.std[j]
                blocks.append(np.nan_to_num(z, nan=0.0)[:, None])
            else:
                blocks.append(_one_hot(rows.categorical[column], self.categories[column]))
        return np.concatenate(blocks, axis=1).astype(np.float32)


def _one_hot(values: np.ndarray, categories: tuple[str, ...]) -> np.ndarray:
    """Rows of zeros with a 1 at the value's category; missing and unseen values stay zero."""
    index = {v: k for k, v in enumerate(categories)}
    out = np.zeros((values.shape[0], len(categories)))
    codes = np.array([index.get(v, -1) for v in values.tolist()], dtype=np.int64)
    hit = codes >= 0
    out[np.flatnonzero(hit), codes[hit]] = 1.0
    return out
