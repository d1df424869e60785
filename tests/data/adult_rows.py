"""Small Adult files in the real format (comma + space, the test file's comment line and
trailing '.'), for the adult tests."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from fedloom.data import adult
from fedloom.data.config import CATEGORICAL, COLUMNS
from fedloom.data.locate import DatasetFiles

#: three training rows whose encoding is worked out by hand in test_adult_csv.py
TRAIN = [
    "20, Private, 100, Bachelors, 13, Never-married, Sales, Own-child, White, Male, 0, 0, 40, "
    "United-States, <=50K",
    "40, Self-emp-inc, 300, Doctorate, 16, Married-civ-spouse, Prof-specialty, Husband, Black, "
    "Male, 1000, 0, 60, ?, >50K",
    "?, ?, 200, Bachelors, 13, Never-married, Sales, Own-child, White, Female, 0, 0, 50, "
    "Canada, <=50K",
]
#: test rows: an unseen workclass and education (Never-worked, Masters), extreme numbers
TEST = [
    "50, Never-worked, 200, Masters, 14, Never-married, Sales, Own-child, White, Male, 0, 0, "
    "50, Canada, >50K.",
    "30, Private, 100, Doctorate, 16, Married-civ-spouse, Prof-specialty, Husband, White, "
    "Female, 0, 0, 40, United-States, <=50K.",
]
TEST_HEADER = "|1x3 Cross validator"

_VALUES = {
    "workclass": ["Private", "Self-emp-inc", "Local-gov", "?"],
    "education": ["Bachelors", "HS-grad", "Doctorate", "Masters"],
    "marital-status": ["Never-married", "Married-civ-spouse", "Divorced"],
    "occupation": ["Sales", "Prof-specialty", "Craft-repair", "?"],
    "relationship": ["Husband", "Wife", "Own-child", "Not-in-family"],
    "race": ["White", "Black", "Asian-Pac-Islander"],
    "sex": ["Male", "Female"],
    "native-country": ["United-States", "Mexico", "Canada", "?"],
}


def random_lines(n: int, seed: int, *, dot: bool = False) -> list[str]:
    """``n`` random rows; the label follows the education (Doctorate/Masters: mostly >50K)."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        cat = {c: str(rng.choice(_VALUES[c])) for c in CATEGORICAL}
        rich = cat["education"] in ("Doctorate", "Masters")
        label = ">50K" if rng.random() < (0.8 if rich else 0.2) else "<=50K"
        num = {"age": rng.integers(17, 90), "fnlwgt": rng.integers(10_000, 500_000),
               "education-num": rng.integers(1, 17), "capital-gain": rng.integers(0, 5000),
               "capital-loss": rng.integers(0, 2000), "hours-per-week": rng.integers(1, 99)}
        fields = [str(num[c]) if c in num else cat[c] for c in COLUMNS]
        lines.append(", ".join([*fields, label + ("." if dot else "")]))
    return lines


def write_adult(root: Path, train: Sequence[str], test: Sequence[str], *,
                header: bool = True) -> DatasetFiles:
    """Write ``adult/adult.data`` and ``adult/adult.test`` under ``root`` (the test file with
    the comment line first) and return their spec with the files' digests."""
    folder = root / "adult"
    folder.mkdir(parents=True, exist_ok=True)
    contents = {
        adult.TRAIN_FILE: ("\n".join(train) + "\n\n").encode(),
        adult.TEST_FILE: ("\n".join([TEST_HEADER] * header + list(test)) + "\n\n").encode(),
    }
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    return DatasetFiles(key="adult", folders=("adult",), sha256={
        name: hashlib.sha256(data).hexdigest() for name, data in contents.items()})


def use_files(monkeypatch: pytest.MonkeyPatch, files: DatasetFiles) -> None:
    """Make the loader expect ``files``' digests (the real ones are pinned in the module)."""
    monkeypatch.setattr(adult, "ADULT_FILES", files)
    adult.clear_cache()
