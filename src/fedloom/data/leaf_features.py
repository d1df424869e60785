"""Turning one LEAF user's ``x`` and ``y`` lists into arrays, per LEAF dataset.

Every function checks what it reads and raises :class:`DataError` naming ``where`` (the file
and the user) and what was wrong. The representations:

- **FEMNIST**: 784 values in [0, 1] per example (LEAF writes ``pixel / 255``), kept as uint8
  images (N, 1, 28, 28) when every value is a multiple of 1/255 (lossless, 784 bytes per example:
  the 805k examples of FEMNIST take 0.6 GB instead of 2.5 GB as float32); a user whose values
  are not gets float32 (and then the whole dataset is float32). Labels 0-61.
- **Shakespeare**: strings of a fixed length (80 in LEAF) over LEAF's 80-letter alphabet
  (:data:`LEAF_LETTERS`), encoded as int64 letter indices; any other character gets the extra
  index 80, so inputs and the next-letter label both have :data:`SHAKESPEARE_CLASSES` = 81
  values.
- **Sent140**: records ``[id, date, query, user, text]``; the text becomes a hashed bag of words:
  lower-cased tokens (runs of letters, digits, ``'``, ``@``, ``#``; so ``@user`` and ``#tag``
  stay tokens), each counted in bucket ``crc32(token) mod width`` (``data.leaf_text_features``,
  512 by default; CRC-32 is the same in every process, unlike Python's ``hash``), counts capped
  at 255 and stored as uint8 (``width`` bytes per tweet). Labels 0 (negative) and 1 (positive).
  Self-contained: no GloVe vectors or vocabulary file are needed, at the cost of collisions.
- **Synthetic**: float vectors of one width, stored float32; labels non-negative integers.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable, Sequence

import numpy as np

from fedloom.core.errors import DataError
from fedloom.data.config import LeafDataset

#: LEAF's Shakespeare alphabet (its ``language_utils.ALL_LETTERS``), in index order.
LEAF_LETTERS = ("\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]"
                "abcdefghijklmnopqrstuvwxyz}")
#: The index of every character outside :data:`LEAF_LETTERS`.
OTHER_LETTER = len(LEAF_LETTERS)
SHAKESPEARE_CLASSES = len(LEAF_LETTERS) + 1
FEMNIST_CLASSES = 62
FEMNIST_PIXELS = 28 * 28
SENT140_TEXT = 4  # the record's field holding the tweet
_TOKEN = re.compile(r"[a-z0-9'@#]+")
_ASCII_TABLE = np.full(128, OTHER_LETTER, dtype=np.int64)
_ASCII_TABLE[[ord(c) for c in LEAF_LETTERS]] = np.arange(len(LEAF_LETTERS))

#: (x, y, where, text_width) -> (inputs, int64 labels) for one user's examples
Featurize = Callable[[Sequence[object], Sequence[object], str, int],
                     tuple[np.ndarray, np.ndarray]]


def detect(x0: object, where: str) -> LeafDataset:
    """Which LEAF dataset an example's ``x`` comes from."""
    if isinstance(x0, str):
        return LeafDataset.SHAKESPEARE
    if isinstance(x0, list) and len(x0) == 5 and isinstance(x0[SENT140_TEXT], str):
        return LeafDataset.SENT140
    if isinstance(x0, list) and x0 and all(_is_number(v) for v in x0):
        return LeafDataset.FEMNIST if len(x0) == FEMNIST_PIXELS else LeafDataset.SYNTHETIC
    raise DataError(f"{where}: cannot tell which LEAF dataset an example x = {_short(x0)} comes "
                    "from; set data.leaf_dataset (femnist, shakespeare, sent140, synthetic)")


def femnist(x: Sequence[object], y: Sequence[object], where: str,
            width: int) -> tuple[np.ndarray, np.ndarray]:
    """FEMNIST images (uint8 when lossless, else float32) and labels 0-61."""
    values = _float_rows(x, where, "784 pixel values")
    if values.shape[1] != FEMNIST_PIXELS:
        raise DataError(f"{where}: x holds {values.shape[1]} values per example; FEMNIST "
                        f"images have {FEMNIST_PIXELS} (28x28)")
    if values.size and (values.min() < 0 or values.max() > 1):
        raise DataError(f"{where}: pixel values must be in [0, 1]; found "
                        f"{float(values.min())} .. {float(values.max())}")
    scaled = values * 255.0
    levels = np.rint(scaled)
    images: np.ndarray = values
    if not values.size or float(np.abs(scaled - levels).max()) <= 1e-3:
        images = levels.astype(np.uint8)
    return images.reshape(-1, 1, 28, 28), _labels(y, where, FEMNIST_CLASSES)


def shakespeare(x: Sequence[object], y: Sequence[object], where: str,
                width: int) -> tuple[np.ndarray, np.ndarray]:
    """Letter indices (int64, (N, length)) of the strings and of the next letters."""
    for i, s in enumerate(x):
        if not isinstance(s, str) or len(s) != len(str(x[0])):
            raise DataError(f"{where}: x[{i}] = {_short(s)}: Shakespeare inputs must be strings "
                            f"of one length ({len(str(x[0]))} like x[0])")
    for i, c in enumerate(y):
        if not isinstance(c, str) or len(c) != 1:
            raise DataError(f"{where}: y[{i}] = {_short(c)}: Shakespeare labels must be single "
                            "characters")
    length = len(str(x[0])) if x else 0
    inputs = _letter_ids("".join(str(s) for s in x)).reshape(len(x), length)
    return inputs, _letter_ids("".join(str(c) for c in y))


def sent140(x: Sequence[object], y: Sequence[object], where: str,
            width: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashed bag-of-words counts (uint8, (N, width)) and labels 0/1."""
    counts = np.zeros((len(x), width), dtype=np.int64)
    for i, record in enumerate(x):
        if not (isinstance(record, list) and len(record) == 5
                and isinstance(record[SENT140_TEXT], str)):
            raise DataError(f"{where}: x[{i}] = {_short(record)}: Sent140 examples must be "
                            "records [id, date, query, user, text] with the text a string")
        for token in _TOKEN.findall(record[SENT140_TEXT].lower()):
            counts[i, zlib.crc32(token.encode("utf-8")) % width] += 1
    return np.minimum(counts, 255).astype(np.uint8), _labels(y, where, 2)


def synthetic(x: Sequence[object], y: Sequence[object], where: str,
              width: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 feature vectors and non-negative integer labels."""
    return _float_rows(x, where, "feature values"), _labels(y, where, None)


FEATURIZERS: dict[LeafDataset, Featurize] = {
    LeafDataset.FEMNIST: femnist,
    LeafDataset.SHAKESPEARE: shakespeare,
    LeafDataset.SENT140: sent140,
    LeafDataset.SYNTHETIC: synthetic,
}


def _letter_ids(text: str) -> np.ndarray:
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    ascii_ids = _ASCII_TABLE[np.minimum(codes, 127)]
    return np.where(codes < 128, ascii_ids, OTHER_LETTER)


def _float_rows(x: Sequence[object], where: str, what: str) -> np.ndarray:
    """``x`` as a float32 (N, d) array of finite values: every row a list of d numbers.

    numpy parses the lists; only when that fails are rows inspected one by one, to name the
    first bad one.
    """
    try:
        values = np.asarray(x)
    except ValueError:  # rows of different lengths
        values = np.empty(0, dtype=object)
    if values.ndim != 2 or values.dtype.kind not in "iuf":
        width = len(x[0]) if x and isinstance(x[0], list) else None
        i = next((i for i, row in enumerate(x) if not isinstance(row, list)
                  or len(row) != width or not all(map(_is_number, row))), 0)
        raise DataError(f"{where}: x[{i}] = {_short(x[i] if x else x)}: every example must be "
                        f"a list of {width if width is not None else 'd'} {what} (like x[0])")
    if not np.isfinite(values).all():
        row = int(np.flatnonzero(~np.isfinite(values).all(axis=1))[0])
        raise DataError(f"{where}: x[{row}] holds a value that is not finite")
    return values.astype(np.float32)


def _labels(y: Sequence[object], where: str, num_classes: int | None) -> np.ndarray:
    """``y`` as int64 labels in ``0 .. num_classes - 1`` (any non-negative integer if None)."""
    try:
        raw = np.asarray(y)
    except ValueError:
        raw = np.empty(0, dtype=object)
    ok = raw.ndim == 1 and len(raw) == len(y) and raw.dtype.kind in "iuf"
    labels = raw.astype(np.int64) if ok and np.isfinite(raw).all() else None
    if labels is not None:
        good = (labels == raw) & (labels >= 0)
        if num_classes is not None:
            good &= labels < num_classes
        if good.all():
            return labels

    def bad(v: object) -> bool:
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
            return True
        return not (float(v).is_integer() and v >= 0
                    and (num_classes is None or v < num_classes))

    i = next((i for i, v in enumerate(y) if bad(v)), 0)
    allowed = "a non-negative integer" if num_classes is None else \
        f"an integer in 0..{num_classes - 1}"
    raise DataError(f"{where}: y[{i}] = {_short(y[i] if y else y)}: each label must be "
                    f"{allowed}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
