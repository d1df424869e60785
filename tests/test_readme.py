"""The README's Python examples run, so the documentation cannot drift.

Blocks run in the README's order in one namespace, as a reader would type them into one
session; a block guarded by ``if __name__ == "__main__":`` is a script (its workers import it):
it runs as its own file in its own process. Every block runs in a fresh directory.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedloom.core.errors import DataError
from fedloom.data import load_federated
from fedloom.data.config import DataConfig

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(encoding="utf-8"),
                    flags=re.S | re.M)
SCRIPTS = [b for b in BLOCKS if 'if __name__ == "__main__":' in b]
SESSION = [b for b in BLOCKS if b not in SCRIPTS]


def test_the_readme_has_examples_of_both_kinds() -> None:
    assert len(SESSION) >= 3 and len(SCRIPTS) >= 2


def test_the_session_examples_run_in_order(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        load_federated(DataConfig(name="mnist", num_clients=2), seed=0)
    except DataError as err:
        pytest.skip(f"the README's examples train on MNIST, which is not here: {err}")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme"}
    for i, block in enumerate(SESSION):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
    assert "history" in namespace and "state" in namespace


@pytest.mark.integration
@pytest.mark.parametrize("index", range(len(SCRIPTS)))
def test_the_script_examples_run_as_scripts(index: int, tmp_path: Path) -> None:
    script = tmp_path / f"readme_example_{index}.py"
    script.write_text(SCRIPTS[index], encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr
