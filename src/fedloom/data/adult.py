"""UCI Adult (Census Income) as a federated dataset: clients are the values of one column.

The published split: ``adult.data`` (32,561 rows) trains, ``adult.test`` (16,281 rows) tests;
both are SHA-256 verified (the digests of ``../shared/data/SHA256SUMS``) and found as
:mod:`fedloom.data.locate` finds files (``data.dir``, ``$FEDLOOM_DATA``, ``../shared/data``; in
an ``adult/`` folder or not, gzipped or not). Features are encoded as
:mod:`fedloom.data.adult_csv` says (one-hot categories and standardised numbers, both learned on
the training rows only; 105 features on the real files, 99 with ``data.features=categorical``,
the q-FFL paper's); the label is 1 for income ``>50K``.

Natural clients come from the categorical column ``data.column`` (default ``education``):

* without ``data.groups``: one client per value seen in training, in sorted order (``?`` is a
  value here, so rows with the column missing form client ``?``);
* with ``data.groups``: one client per listed group of values, in the listed order, then one
  client ``other`` for every value not listed (left out when it has no training rows). The
  q-FFL setup is ``data.column=education data.groups=[[Doctorate]]``: client 0 holds the PhDs,
  client 1 everyone else.

Each client's local test split is the test rows with its values, so federated evaluation
(``eval.federated=true``) reports accuracy per group; test rows whose value never occurs in
training belong to no client (except ``other``, which takes every unlisted value).

Example:
    >>> # cfg = DataConfig(name=DatasetName.ADULT, num_clients=2, column="education",
    >>> #                  groups=(("Doctorate",),))
    >>> # data = load_adult(cfg, seed=0)   # client 0: Doctorate, client 1: the rest
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from fedloom.core.errors import ConfigError, DataError
from fedloom.data.adult_csv import AdultEncoding, AdultRows, parse_adult
from fedloom.data.checksum import VerifiedCache, utf8_text
from fedloom.data.config import DataConfig
from fedloom.data.dataset import ArrayData, FederatedData
from fedloom.data.locate import DatasetFiles, locate_files

logger = logging.getLogger(__name__)

TRAIN_FILE = "adult.data"
TEST_FILE = "adult.test"
ADULT_FILES = DatasetFiles(key="adult", folders=("adult",), sha256={
    TRAIN_FILE: "5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d",
    TEST_FILE: "a2a9044bc167a35b2361efbabec64e89d69ce82d9790d2980119aac5fd7e9c05",
})
DEFAULT_COLUMN = "education"
OTHER = "other"
NUM_CLASSES = 2

def load_adult(cfg: DataConfig, seed: int) -> FederatedData:
    """UCI Adult with its natural clients: the values (or groups of values) of ``cfg.column``.

    ``seed`` is unused: nothing here is random (a re-split by ``data.partition`` is seeded by
    its caller, :func:`fedloom.data.load.load_federated`).

    Raises:
        DataError: a file is missing, fails its checksum, or has a malformed line (the message
            names the file and the line).
        ConfigError: a value in ``data.groups`` is not a value of the column in the training
            file.
    """
    del seed
    files = ADULT_FILES
    paths = locate_files(files, cfg.dir)
    train_rows = _ROWS(paths[TRAIN_FILE], files.sha256[TRAIN_FILE])
    test_rows = _ROWS(paths[TEST_FILE], files.sha256[TEST_FILE])
    if len(train_rows) == 0:
        raise DataError(f"{paths[TRAIN_FILE]}: no data rows")
    encoding = AdultEncoding.fit(train_rows, cfg.features)
    column = cfg.column or DEFAULT_COLUMN
    names, client_train, client_test = column_clients(
        train_rows.categorical[column], test_rows.categorical[column], column=column,
        groups=cfg.groups, source=str(paths[TRAIN_FILE]))
    logger.info("adult by %s: %s", column, ", ".join(
        f"{n} ({len(tr)} train / {len(te)} test)"
        for n, tr, te in zip(names, client_train, client_test)))
    return FederatedData(
        name="adult", train=_arrays(encoding, train_rows), test=_arrays(encoding, test_rows),
        client_train=tuple(torch.from_numpy(i) for i in client_train),
        client_test=tuple(torch.from_numpy(i) for i in client_test),
        num_classes=NUM_CLASSES, input_shape=(encoding.num_features,))


def column_clients(
    train_values: np.ndarray, test_values: np.ndarray, *, column: str,
    groups: tuple[tuple[str, ...], ...] = (), source: str = TRAIN_FILE,
) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """The clients made from one column: their names and their train and test row indices.

    Without ``groups`` one client per value of ``train_values`` (sorted); with ``groups`` one
    per group (named by its values joined with ``+``), then :data:`OTHER` for every value in no
    group when that has training rows.

    Raises:
        ConfigError: a grouped value does not occur in ``train_values`` (naming ``source``).
    """
    known = sorted(set(train_values.tolist()))
    if not groups:
        return (known, [np.flatnonzero(train_values == v) for v in known],
                [np.flatnonzero(test_values == v) for v in known])
    problems = [f"data.groups[{i}] = {list(g)!r}: {v!r} is not a value of column {column!r} "
                f"in {source} (its values: {', '.join(known)})"
                for i, g in enumerate(groups) for v in g if v not in known]
    if problems:
        raise ConfigError(problems)
    names = ["+".join(g) for g in groups]
    train = [np.flatnonzero(np.isin(train_values, g)) for g in groups]
    test = [np.flatnonzero(np.isin(test_values, g)) for g in groups]
    listed = [v for g in groups for v in g]
    other_train = np.flatnonzero(~np.isin(train_values, listed))
    if other_train.size:
        names.append(OTHER)
        train.append(other_train)
        test.append(np.flatnonzero(~np.isin(test_values, listed)))
    return names, train, test


def _arrays(encoding: AdultEncoding, rows: AdultRows) -> ArrayData:
    return ArrayData(x=torch.from_numpy(encoding.transform(rows)),
                     y=torch.from_numpy(rows.labels.copy()))


def _parse(raw: bytes, source: str) -> AdultRows:
    return parse_adult(utf8_text(raw, source=source), source=source)


#: the parsed rows of each verified file (callers must not modify them)
_ROWS = VerifiedCache(_parse, maxsize=4)


def clear_cache() -> None:
    """Forget every parsed file (tests, or to free memory)."""
    _ROWS.clear()
