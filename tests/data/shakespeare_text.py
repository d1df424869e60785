"""Small speaker-labelled texts in Tiny Shakespeare's format, and pointing the loader at them."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from fedloom.data import shakespeare
from fedloom.data.locate import DatasetFiles

WORDS = ("thou", "art", "my", "lord", "good", "night", "sweet", "prince", "away", "fie")


def use_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str | bytes) -> Path:
    """Write ``text`` as ``<tmp>/tiny-shakespeare/input.txt`` and make it the verified file;
    returns the data root (``data.dir``)."""
    raw = text.encode() if isinstance(text, str) else text
    folder = tmp_path / "tiny-shakespeare"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / shakespeare.FILE).write_bytes(raw)
    files = DatasetFiles(key="tiny_shakespeare", folders=("tiny-shakespeare",),
                         sha256={shakespeare.FILE: hashlib.sha256(raw).hexdigest()})
    monkeypatch.setattr(shakespeare, "TEXT_FILES", files)
    shakespeare.clear_cache()
    return tmp_path


def play(roles: int, speeches: int, seed: int = 0) -> str:
    """A made-up play: ``speeches`` speeches of one to three lines, by ``roles`` speakers
    (speaker k speaks about k + 1 times as often as speaker 0)."""
    rng = random.Random(seed)
    names = [f"Speaker {chr(ord('A') + k)}" for k in range(roles)]
    blocks = []
    for _ in range(speeches):
        name = rng.choices(names, weights=range(1, roles + 1))[0]
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))).capitalize()
                 + rng.choice(".,!?") for _ in range(rng.randint(1, 3))]
        blocks.append(f"{name}:\n" + "\n".join(lines) + "\n")
    return "\n".join(blocks)
