"""The shape of the package: small modules (the layers themselves are checked by the import
contracts of `make check`)."""

from __future__ import annotations

from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "fedloom"
MAX_LINES = 400  # past this a module is asking to be split (STYLE.md)


def test_no_module_is_over_400_lines() -> None:
    sizes = {str(p.relative_to(SRC)): len(p.read_text(encoding="utf-8").splitlines())
             for p in SRC.rglob("*.py") if "generated" not in p.parts}
    assert len(sizes) > 50
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}
