"""fedloom sets GOMP_SPINCOUNT for torch's OpenMP runtime when it is imported first."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fedloom.core import openmp

SHOW = ("import os, sys; {first}; import torch; from fedloom.core import openmp; "
        "print(os.environ.get('GOMP_SPINCOUNT'), openmp.too_late())")


def _run(first: str, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", SHOW.format(first=first)],
                         env=clean | env, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_fedloom_first_sets_brief_spinning() -> None:
    assert _run("import fedloom") == [str(openmp.SPINS), "False"]


def test_torch_first_is_too_late_and_says_so() -> None:
    assert _run("import torch; import fedloom") == ["None", "True"]


@pytest.mark.parametrize(("env", "expected"), [
    ({"GOMP_SPINCOUNT": "5"}, "5"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "None")])
def test_the_users_choice_is_kept(env: dict[str, str], expected: str) -> None:
    assert _run("import fedloom", **env) == [expected, "False"]
    assert _run("import torch; import fedloom", **env) == [expected, "False"]


def test_note_is_logged_once(caplog: pytest.LogCaptureFixture,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openmp, "_late", True)
    monkeypatch.setattr(openmp, "_noted", False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with caplog.at_level("INFO", logger="fedloom.core.openmp"):
        openmp.note_if_too_late()
        openmp.note_if_too_late()
    assert [r.getMessage() for r in caplog.records if "GOMP_SPINCOUNT" in r.getMessage()] \
        and len(caplog.records) == 1
