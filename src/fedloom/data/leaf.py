"""LEAF's federated datasets from the JSON files its scripts write (``data.name = leaf``).

LEAF (Caldas et al., 2018) preprocesses each dataset into ``<dir>/train/*.json`` and
``<dir>/test/*.json``. Each file holds::

    {"users": ["f0001_41", ...], "num_samples": [154, ...],
     "user_data": {"f0001_41": {"x": [...], "y": [...]}, ...},
     "hierarchies": [...]}            # optional, one entry per user

FEMNIST, Shakespeare, Sent140 and Synthetic are read; which one is ``data.leaf_dataset``, or,
when that is null, detected from the first example (see :mod:`fedloom.data.leaf_features` for
how each one's examples become arrays, and how much memory they take).

**Clients.** Every user of the train folder is a natural client, in file-name order and then
in the order of each file's ``users`` list. Its local test split is the test-folder user of the
same name; a train user with no test examples (LEAF's ``--t user`` split puts whole users in
one folder or the other) gets an empty local split. The central test set is every test-folder
example, including those of users who are not in the train folder. ``hierarchies`` is checked
(one entry per user) and otherwise not used.

**Checks.** A file that is not JSON (with the line and column), a missing key, a ``users`` list
that does not match ``num_samples`` or ``user_data``, a user listed twice (in one folder), a
``num_samples`` that is not the length of the user's ``x`` and ``y``, examples of the wrong shape
or type, and labels out of range are each a :class:`DataError` naming the file, the user and
what was wrong.

**Where.** ``data.leaf_dir`` is the folder holding ``train/`` and ``test/``, or the folder
above their ``data/`` folder, as LEAF lays it out (``<leaf>/data/femnist``). Without it,
``data.dir`` is tried the same way, then each root of :func:`fedloom.data.locate.search_roots`
(``data.dir``, ``$FEDLOOM_DATA``, ``../shared/data``) is searched for ``leaf/<dataset>/data``.
LEAF data cannot be downloaded ready-made: its scripts download and sample the raw data
(``./preprocess.sh -s niid --sf 0.05 -k 0 -t sample`` in ``leaf/data/femnist``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedloom.core.errors import DataError
from fedloom.data.config import DataConfig, LeafDataset
from fedloom.data.dataset import ArrayData, FederatedData, contiguous_ranges
from fedloom.data.leaf_features import (
    FEATURIZERS,
    FEMNIST_CLASSES,
    SHAKESPEARE_CLASSES,
    detect,
)
from fedloom.data.locate import search_roots
from fedloom.data.pixels import uint8_mean_std

logger = logging.getLogger(__name__)

_FIXED_CLASSES = {LeafDataset.FEMNIST: FEMNIST_CLASSES,
                  LeafDataset.SHAKESPEARE: SHAKESPEARE_CLASSES, LeafDataset.SENT140: 2}


@dataclass(frozen=True, slots=True)
class LeafUser:
    """One user's raw examples, and where they were read (for messages)."""

    name: str
    x: list[object]
    y: list[object]
    where: str


@dataclass(slots=True)
class _Split:
    """The featurised examples of one folder, user by user."""

    names: list[str]
    x: list[np.ndarray]
    y: list[np.ndarray]


def load_leaf(cfg: DataConfig, seed: int) -> FederatedData:
    """A LEAF dataset with its users as natural clients (see the module docstring).

    Args:
        cfg: the ``data`` section (``leaf_dir``, ``leaf_dataset``, ``leaf_text_features``).
        seed: unused (the data is read, not drawn); part of the loader signature.

    Raises:
        DataError: the folder or its files are missing or malformed.
    """
    del seed
    folder, kind = find_leaf_folder(cfg)
    train_files, test_files = (json_files(folder / split) for split in ("train", "test"))
    train, kind = _featurise(train_files, kind, cfg.leaf_text_features)
    test, _ = _featurise(test_files, kind, cfg.leaf_text_features)
    x_train, y_train = _stack(train, test, f"{folder / 'train'}")
    x_test, y_test = _stack(test, train, f"{folder / 'test'}")
    if x_train.dtype != x_test.dtype:  # FEMNIST: one folder lossless uint8, the other float32
        x_train, x_test = _as_float(x_train), _as_float(x_test)
    num_classes = _FIXED_CLASSES.get(kind, int(torch.cat([y_train, y_test]).max()) + 1)
    mean, std = uint8_mean_std(x_train) if x_train.dtype == torch.uint8 else (0.0, 1.0)
    client_train = contiguous_ranges([len(y) for y in train.y])
    test_ranges = dict(zip(test.names, contiguous_ranges([len(y) for y in test.y])))
    empty = torch.zeros(0, dtype=torch.int64)
    client_test = tuple(test_ranges.get(name, empty) for name in train.names)
    missing = sum(name not in test_ranges for name in train.names)
    logger.info("leaf %s from %s: %d users, %d train and %d test examples; %d users have no "
                "test examples", kind, folder, len(train.names), len(y_train), len(y_test),
                missing)
    return FederatedData(
        name=f"leaf_{kind}",
        train=ArrayData(x=x_train, y=y_train, mean=mean, std=std),
        test=ArrayData(x=x_test, y=y_test, mean=mean, std=std),
        client_train=client_train, client_test=client_test, num_classes=num_classes,
        input_shape=tuple(x_train.shape[1:]),
    )


def find_leaf_folder(cfg: DataConfig) -> tuple[Path, LeafDataset | None]:
    """The folder holding ``train/`` and ``test/``, and the dataset if the config or the
    folder's place (``leaf/<dataset>/data``) names it."""
    kinds = [cfg.leaf_dataset] if cfg.leaf_dataset is not None else list(LeafDataset)
    explicit = cfg.leaf_dir if cfg.leaf_dir is not None else cfg.dir
    candidates: list[tuple[Path, LeafDataset | None]] = []
    if explicit is not None:
        base = Path(explicit).expanduser()
        candidates += [(base, cfg.leaf_dataset), (base / "data", cfg.leaf_dataset)]
    if cfg.leaf_dir is None:
        candidates += [(root / "leaf" / str(k) / sub, k) for root in search_roots(cfg.dir)
                       for k in kinds for sub in ("data", ".")]
    for path, kind in candidates:
        if (path / "train").is_dir() and (path / "test").is_dir():
            return path.resolve(), kind
    looked = "\n".join(f"  {p}" for p, _ in candidates)
    raise DataError(
        f"leaf: no folder with train/ and test/ found. Looked in:\n{looked}\n"
        "LEAF data is made by LEAF's own scripts (e.g. ./preprocess.sh -s niid --sf 0.05 -k 0 "
        "-t sample in leaf/data/femnist); set data.leaf_dir to the folder they write "
        "(leaf/data/femnist/data).")


def json_files(folder: Path) -> list[Path]:
    """The ``*.json`` files of ``folder``, sorted by name (an error if there are none)."""
    files = sorted(p for p in folder.glob("*.json") if p.is_file())
    if not files:
        raise DataError(f"{folder}: no .json files (LEAF writes one or more per split)")
    return files


def read_users(files: list[Path]) -> Iterator[LeafUser]:
    """Every user of ``files``, checked (see the module docstring), one file in memory at a
    time."""
    seen: dict[str, Path] = {}
    for path in files:
        for user in _file_users(path):
            if user.name in seen:
                raise DataError(f"{path}: user {user.name!r} is also in {seen[user.name]}")
            seen[user.name] = path
            yield user


def _file_users(path: Path) -> list[LeafUser]:
    try:
        with path.open("r", encoding="utf-8") as handle:
            doc = json.load(handle)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON: line {exc.lineno} column {exc.colno}: "
                        f"{exc.msg}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a JSON object with users, num_samples, user_data")
    for key, kind, what in (("users", list, "array"), ("num_samples", list, "array"),
                            ("user_data", dict, "object")):
        if not isinstance(doc.get(key), kind):
            raise DataError(f"{path}: missing {key!r} (a JSON {what})")
    users, counts, data = doc["users"], doc["num_samples"], doc["user_data"]
    if len(users) != len(counts):
        raise DataError(f"{path}: 'users' lists {len(users)} users but 'num_samples' has "
                        f"{len(counts)} counts")
    hierarchies = doc.get("hierarchies")
    if hierarchies is not None and (not isinstance(hierarchies, list)
                                    or len(hierarchies) != len(users)):
        size = len(hierarchies) if isinstance(hierarchies, list) else "not a list"
        raise DataError(f"{path}: 'hierarchies' must have one entry per user ({len(users)}); "
                        f"it has {size}")
    extra = sorted(set(map(str, data)) - set(map(str, users)))
    if extra:
        raise DataError(f"{path}: 'user_data' has user {extra[0]!r}, who is not in 'users'")
    return [_user(path, name, count, data) for name, count in zip(users, counts)]


def _user(path: Path, name: object, count: object, data: dict[str, object]) -> LeafUser:
    where = f"{path}: user {name!r}"
    if not isinstance(name, str):
        raise DataError(f"{where}: user names must be strings")
    if name not in data:
        raise DataError(f"{path}: user {name!r} is in 'users' but not in 'user_data'")
    entry = data[name]
    if not (isinstance(entry, dict) and isinstance(entry.get("x"), list)
            and isinstance(entry.get("y"), list)):
        raise DataError(f"{where}: user_data entry must be an object with lists 'x' and 'y'")
    x, y = entry["x"], entry["y"]
    if not isinstance(count, int) or isinstance(count, bool) or count != len(x) \
            or count != len(y):
        raise DataError(f"{where}: num_samples says {count!r} but x has {len(x)} examples and "
                        f"y {len(y)} labels")
    return LeafUser(name=name, x=x, y=y, where=where)


def _featurise(files: list[Path], kind: LeafDataset | None,
               width: int) -> tuple[_Split, LeafDataset]:
    """Every user's examples as arrays; ``kind`` None: detected from the first example."""
    split = _Split(names=[], x=[], y=[])
    for user in read_users(files):
        if user.x:
            kind = detect(user.x[0], user.where) if kind is None else kind
            try:
                x, y = FEATURIZERS[kind](user.x, user.y, user.where, width)
            except DataError as exc:
                raise DataError(f"{exc} (reading LEAF {kind})") from None
        else:
            x, y = np.zeros(0), np.zeros(0, dtype=np.int64)
        split.names.append(user.name)
        split.x.append(x)
        split.y.append(y)
    if kind is None:
        raise DataError(f"{files[0].parent}: no user has any example")
    return split, kind


def _stack(split: _Split, other: _Split, folder: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One folder's examples as tensors; every user's example shape must be the first's
    (of this folder, else of ``other``)."""
    shaped = [x for x in split.x if x.size] or [x for x in other.x if x.size]
    if not shaped:
        raise DataError(f"{folder}: no user has any example")
    shape = shaped[0].shape[1:]
    dtype = np.float32 if any(x.dtype == np.float32 for x in shaped) else shaped[0].dtype
    parts = []
    for name, x in zip(split.names, split.x):
        if not x.size:
            continue
        if x.shape[1:] != shape:
            raise DataError(f"{folder}: user {name!r}: examples have shape {x.shape[1:]} but "
                            f"the first user's have {shape}")
        parts.append(x.astype(np.float32) / 255.0 if x.dtype != dtype else x)  # FEMNIST only
    x_all = np.concatenate(parts) if parts else np.zeros((0, *shape), dtype=dtype)
    return torch.from_numpy(x_all), torch.from_numpy(np.concatenate(split.y).astype(np.int64))


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32).div_(255.0) if x.dtype == torch.uint8 else x
