"""Verified files: parsed once per process while unchanged, parsed again once replaced, refused
when they fail their checksum; text decoded as UTF-8 with the line of a bad byte named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedloom.core.errors import DataError
from fedloom.data.checksum import VerifiedCache, sha256_hex, utf8_text


def test_a_verified_file_is_parsed_once_until_it_is_replaced(tmp_path: Path) -> None:
    parsed: list[str] = []

    def parse(raw: bytes, source: str) -> int:
        parsed.append(source)
        return len(raw)

    cache = VerifiedCache(parse, maxsize=2)
    path = tmp_path / "f.txt"
    path.write_bytes(b"abc")
    assert cache(path, sha256_hex(b"abc")) == 3
    assert cache(tmp_path / "." / "f.txt", sha256_hex(b"abc")) == 3  # same resolved file
    assert parsed == [str(path.resolve())]
    path.write_bytes(b"abcdef")
    os.utime(path, ns=(1, 1))  # a new mtime (and size): a miss
    assert cache(path, sha256_hex(b"abcdef")) == 6
    with pytest.raises(DataError, match=r"f\.txt: checksum mismatch"):
        cache(path, sha256_hex(b"abc"))
    cache.clear()
    assert cache(path, sha256_hex(b"abcdef")) == 6
    assert len(parsed) == 3


def test_utf8_text_names_the_line_of_a_bad_byte() -> None:
    assert utf8_text("é\n".encode(), source="s") == "é\n"
    with pytest.raises(DataError, match=r"^s, line 3: not UTF-8 text \(invalid start byte\)$"):
        utf8_text(b"a\nb\n\xffc\n", source="s")
