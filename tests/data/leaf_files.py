"""Small LEAF datasets written in LEAF's own JSON layout, for the tests."""

from __future__ import annotations

import json
from pathlib import Path

Users = dict[str, tuple[list[object], list[object]]]


def leaf_doc(users: Users, *, hierarchies: bool = False) -> dict[str, object]:
    """One LEAF JSON document holding ``users`` (name -> (x, y)), as LEAF's scripts write it."""
    doc: dict[str, object] = {
        "users": list(users),
        "num_samples": [len(x) for x, _ in users.values()],
        "user_data": {name: {"x": x, "y": y} for name, (x, y) in users.items()},
    }
    if hierarchies:
        doc["hierarchies"] = [f"group_{i % 2}" for i in range(len(users))]
    return doc


def write_leaf(root: Path, train: list[Users], test: list[Users], *,
               hierarchies: bool = False) -> Path:
    """``root/train/part_<i>.json`` and ``root/test/part_<i>.json``, one per ``Users``."""
    for split, files in (("train", train), ("test", test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i, users in enumerate(files):
            text = json.dumps(leaf_doc(users, hierarchies=hierarchies))
            (root / split / f"part_{i}.json").write_text(text)
    return root


def pixels(seed: int) -> list[float]:
    """A FEMNIST-like image as LEAF stores it: 784 values ``k / 255``."""
    return [((i * 7 + seed * 13) % 256) / 255 for i in range(784)]


def femnist_files(root: Path) -> Path:
    """Train: f1 (2 images) and f2 (1) in one file, f3 (3) in another; test: f1 (1), f3 (2)
    and f9 (1, a writer not in the train folder). Labels are the image seeds mod 62."""
    def user(*seeds: int) -> tuple[list[object], list[object]]:
        return [pixels(s) for s in seeds], [s % 62 for s in seeds]

    return write_leaf(root, train=[{"f1": user(0, 1), "f2": user(2)},
                                   {"f3": user(3, 4, 61)}],
                      test=[{"f1": user(5), "f3": user(6, 7), "f9": user(8)}],
                      hierarchies=True)
