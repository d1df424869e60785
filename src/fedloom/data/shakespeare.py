"""Tiny Shakespeare as a federated next-character task: one client per speaking role.

The file (``tiny-shakespeare/input.txt``, checksum-verified) is speaker labelled: blocks
separated by blank lines, each a ``NAME:`` line followed by the lines of the speech. The rules:

- **Roles.** A role is a speaker name with its whitespace runs collapsed to one space, compared
  without case (``LADY  CAPULET`` is ``LADY CAPULET``, ``Nurse`` is ``NURSE``); it is shown as
  first spelled. Tiny Shakespeare has no play titles, so a name that speaks in several plays
  (``GLOUCESTER``, ``First Citizen``) is one role, where LEAF keys roles by (play, name).
  Clients are the roles in order of first appearance.
- **Text.** A role's text is every line of its speeches, each ending in a newline, in file
  order; speaker lines and blank lines are not part of it. A speaker line followed directly by a
  blank line (the file has about 120) is a speech without text and adds nothing.
- **Dropping.** A role is kept when its text has at least ``max(data.min_chars, data.seq_len +
  2)`` characters: fewer cannot give one training and one test window.
- **Examples.** Every window of ``data.seq_len`` consecutive characters of a role's text (as
  LEAF, default 80) is an input; the character after it is the label. Windows never cross roles.
- **Split.** In time order: of a role's ``n`` windows the last ``round(data.test_fraction * n)``
  (at least one, at most ``n - 1``) are its local test split (``client_test``), the others train.
  The central test set is every kept role's test windows (also of roles that
  ``data.num_clients`` leaves out).
- **Vocabulary.** The characters of all speeches (every role, before dropping), sorted by code
  point: :func:`vocabulary`. A character's index is its input code and its class, so
  ``num_classes`` is the vocabulary's size (65 for Tiny Shakespeare) and sizes both the model's
  embedding and its output layer.

Windows are held as character codes in int16 (int32 beyond 32,768 characters), which
:class:`~fedloom.data.dataset.ArrayData` passes through unnormalised, so every fleet, the
evaluators and the partitioners see plain arrays: 2 bytes per window character, about 160 MB
for Tiny Shakespeare at ``seq_len`` 80 (int64 would be 640 MB).

Example:
    >>> roles = parse_roles(b"A:\\nhi\\n\\nB:\\nyo\\n\\na:\\nho\\n", source="play.txt")
    >>> roles
    {'A': 'hi\\nho\\n', 'B': 'yo\\n'}
    >>> vocabulary_of(roles)
    '\\nhioy'
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from fedloom.core.errors import DataError
from fedloom.data.checksum import VerifiedCache, utf8_text
from fedloom.data.config import DataConfig
from fedloom.data.dataset import ArrayData, FederatedData, contiguous_ranges
from fedloom.data.locate import DatasetFiles, locate_files

logger = logging.getLogger(__name__)

FILE = "input.txt"
TEXT_FILES = DatasetFiles(
    key="tiny_shakespeare", folders=("tiny-shakespeare", "tiny_shakespeare"),
    sha256={FILE: "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"})


def parse_roles(raw: bytes, *, source: str) -> dict[str, str]:
    """Every role's text (see the module docstring), by role name, in order of appearance.

    Raises:
        DataError: naming ``source`` (and the line): not UTF-8, empty, no newline at the end
            (truncated), a block that does not start with a ``NAME:`` line, a last speaker with
            no speech, or no speech at all.
    """
    text = utf8_text(raw, source=source).replace("\r\n", "\n")
    if not text.strip():
        raise DataError(f"{source}: empty; expected blocks of a 'NAME:' line and its speech")
    lines = text.split("\n")
    if lines[-1]:
        raise DataError(f"{source}, line {len(lines)}: no newline at the end of the file: it "
                        "looks truncated")
    names: dict[str, str] = {}
    speeches: dict[str, list[str]] = {}
    key: str | None = None  # the speaker of the block being read
    start, said = 0, 0  # the block's speaker line and how many lines of speech it has
    for number, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            key = None
        elif key is None:
            name = " ".join(line.rstrip()[:-1].split())
            if not line.rstrip().endswith(":") or not name:
                raise DataError(f"{source}, line {number}: expected a speaker line 'NAME:' to "
                                f"start the block, got {line[:60]!r}")
            key, start, said = name.casefold(), number, 0
            names.setdefault(key, name)
            speeches.setdefault(key, [])
        else:
            speeches[key].append(line + "\n")
            said += 1
    if key is not None and said == 0:
        raise DataError(f"{source}, line {start}: the last speaker, {names[key]!r}, has no "
                        "speech: the file looks truncated")
    roles = {names[k]: "".join(v) for k, v in speeches.items() if v}
    if not roles:
        raise DataError(f"{source}: no speech: every speaker line is followed by a blank line")
    return roles


def vocabulary_of(roles: Mapping[str, str]) -> str:
    """The characters of every role's text, sorted by code point."""
    return "".join(sorted(set().union(*(set(t) for t in roles.values()))))


def encode(text: str, vocab: str, dtype: torch.dtype) -> torch.Tensor:
    """``text`` as indices into ``vocab`` (which must hold each of its characters)."""
    points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    table = np.frombuffer(vocab.encode("utf-32-le"), dtype=np.uint32)
    return torch.from_numpy(np.searchsorted(table, points).astype(np.int64)).to(dtype)


def code_dtype(vocab: str) -> torch.dtype:
    """The smallest signed integer type (not uint8, which ArrayData normalises as pixels)."""
    return torch.int16 if len(vocab) <= 2**15 else torch.int32


def split_point(num_windows: int, test_fraction: float) -> int:
    """How many of a role's ``num_windows`` (>= 2) windows train: the first ones, in time
    order; the rest (at least one, rounded) are its local test split."""
    test = min(num_windows - 1, max(1, round(test_fraction * num_windows)))
    return num_windows - test


def windows(codes: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ``seq_len`` window of ``codes`` (views, not copies) and the code after each,
    as int64 labels."""
    return codes.unfold(0, seq_len, 1)[:-1], codes[seq_len:].long()


#: every role's text of each verified file (callers must not modify it)
_ROLES = VerifiedCache(lambda raw, source: parse_roles(raw, source=source), maxsize=2)


def _roles(cfg: DataConfig) -> tuple[Path, dict[str, str]]:
    path = locate_files(TEXT_FILES, cfg.dir)[FILE].resolve()
    return path, _ROLES(path, TEXT_FILES.sha256[FILE])


def vocabulary(cfg: DataConfig) -> str:
    """The vocabulary of the text ``cfg`` names: character ``vocabulary(cfg)[i]`` is code and
    class ``i`` of :func:`load_shakespeare`'s examples."""
    return vocabulary_of(_roles(cfg)[1])


def load_shakespeare(cfg: DataConfig, seed: int) -> FederatedData:
    """Tiny Shakespeare with its roles as clients (see the module docstring).

    ``seed`` is unused: parsing, windows and the time-ordered split involve no randomness.

    Raises:
        DataError: the file is missing, fails its checksum or is malformed (naming the file and
            line), or no role has enough characters for ``data.min_chars`` and ``data.seq_len``.
    """
    del seed
    path, roles = _roles(cfg)
    vocab = vocabulary_of(roles)
    threshold = max(cfg.min_chars, cfg.seq_len + 2)
    kept = {name: text for name, text in roles.items() if len(text) >= threshold}
    if not kept:
        longest = max(len(t) for t in roles.values())
        raise DataError(f"{path}: no role has {threshold} characters (data.min_chars = "
                        f"{cfg.min_chars}, data.seq_len = {cfg.seq_len}); the longest has "
                        f"{longest}")
    logger.info("%s: %d of %d roles have at least %d characters", path, len(kept), len(roles),
                threshold)
    dtype = code_dtype(vocab)
    parts: list[tuple[torch.Tensor, torch.Tensor, int]] = []
    for text in kept.values():
        x, y = windows(encode(text, vocab, dtype), cfg.seq_len)
        parts.append((x, y, split_point(len(y), cfg.test_fraction)))
    train = ArrayData(x=torch.cat([x[:k] for x, _, k in parts]),
                      y=torch.cat([y[:k] for _, y, k in parts]))
    test = ArrayData(x=torch.cat([x[k:] for x, _, k in parts]),
                     y=torch.cat([y[k:] for _, y, k in parts]))
    return FederatedData(name="shakespeare", train=train, test=test,
                         client_train=contiguous_ranges([k for _, _, k in parts]),
                         client_test=contiguous_ranges([len(y) - k for _, y, k in parts]),
                         num_classes=len(vocab), input_shape=(cfg.seq_len,))


def clear_cache() -> None:
    """Forget every parsed text (tests, or to free memory)."""
    _ROLES.clear()
