"""A client that trains by running an external command (FEDn's style).

For each fit task the command gets an input and an output model path: the placeholders
``{input}`` and ``{output}`` in the command are replaced by them, or they are appended as its
last two arguments. The input is a safetensors file of the model's named tensors; its metadata
and the environment (``FEDLOOM_ROUND``, ``FEDLOOM_CLIENT_ID``, ``FEDLOOM_CONFIG`` as JSON) carry
the round's settings. The command writes the trained model to the output path (safetensors, the
same names and shapes) and may write ``<output>.json`` with ``{"num_examples": N, "metrics":
{"train_loss": x}}``. The command runs without a shell; what it writes is read as raw tensors,
never unpickled, and checked like any update.

Example:
    >>> client = CommandClient("python train.py {input} {output}", timeout=600)
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fedloom.core.errors import ClientError
from fedloom.core.layout import ParamLayout
from fedloom.core.metrics import Mean
from fedloom.core.packages import ClientResult, Downlink
from fedloom.runtime.clients import Client, task_config


class CommandClient(Client):
    """Runs ``command`` for every fit task.

    Args:
        command: the command line (split like a shell would, but run without one).
        workdir: where the temporary model files go (default: the system's temp dir).
        timeout: seconds the command may run (None: no limit).
        num_examples: reported when the command writes no ``num_examples``.
    """

    def __init__(self, command: str | Sequence[str], *, workdir: str | Path | None = None,
                 timeout: float | None = None, num_examples: int = 1) -> None:
        self.argv = shlex.split(command) if isinstance(command, str) else list(command)
        if not self.argv:
            raise ClientError("the training command is empty")
        self.workdir = workdir
        self.timeout = timeout
        self.num_examples = num_examples

    def _command(self, source: Path, target: Path) -> list[str]:
        if any("{input}" in a or "{output}" in a for a in self.argv):
            return [a.replace("{input}", str(source)).replace("{output}", str(target))
                    for a in self.argv]
        return [*self.argv, str(source), str(target)]

    def run_fit(self, downlink: Downlink, layout: ParamLayout) -> ClientResult:
        config = json.dumps(task_config(downlink.round, downlink.client_id, downlink.config))
        with tempfile.TemporaryDirectory(prefix="fedloom-", dir=self.workdir) as tmp:
            source, target = Path(tmp) / "input.safetensors", Path(tmp) / "output.safetensors"
            save_file({k: v.contiguous() for k, v in layout.unflatten(downlink.params).items()},
                      str(source), metadata={"round": str(downlink.round),
                                             "client_id": str(downlink.client_id),
                                             "config": config})
            env = {**os.environ, "FEDLOOM_ROUND": str(downlink.round),
                   "FEDLOOM_CLIENT_ID": str(downlink.client_id), "FEDLOOM_CONFIG": config}
            self._run(self._command(source, target), env)
            params = read_model(target, layout)
            num_examples, metrics = self._sidecar(Path(f"{target}.json"))
        return ClientResult(round=downlink.round, client_id=downlink.client_id, params=params,
                            num_examples=num_examples, num_steps=0,
                            metrics={k: Mean.of(v, num_examples) for k, v in metrics.items()})

    def _run(self, argv: list[str], env: dict[str, str]) -> None:
        try:
            done = subprocess.run(argv, env=env, capture_output=True, text=True,
                                  timeout=self.timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise ClientError(f"training command {argv[0]!r} failed: {err}") from None
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip()[-800:]
            raise ClientError(f"training command exited with status {done.returncode}: {tail}")

    def _sidecar(self, path: Path) -> tuple[int, dict[str, float]]:
        if not path.exists():
            return self.num_examples, {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            num = int(data.get("num_examples", self.num_examples))
            metrics = {str(k): float(v) for k, v in dict(data.get("metrics", {})).items()}
        except (ValueError, TypeError, AttributeError) as err:
            raise ClientError(f"{path.name}: not a JSON object with num_examples and metrics "
                              f"({err})") from None
        if num < 1 or not all(math.isfinite(v) for v in metrics.values()):
            raise ClientError(f"{path.name}: num_examples must be >= 1 and metrics finite")
        return num, metrics


def read_model(path: Path, layout: ParamLayout) -> torch.Tensor:
    """The flat model in a safetensors file, checked against the layout."""
    if not path.exists():
        raise ClientError(f"the training command wrote no model at {path}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ClientError(f"{path.name} is not a safetensors file: {err}") from None
    missing = [e.name for e in layout.entries if e.name not in tensors]
    wrong = [e.name for e in layout.entries
             if e.name in tensors and tuple(tensors[e.name].shape) != e.shape]
    if missing or wrong:
        raise ClientError(f"{path.name}: missing tensors {missing[:5]}, wrong shapes "
                          f"{wrong[:5]}")
    flat = layout.flatten(tensors)
    if not bool(torch.isfinite(flat).all()):
        raise ClientError(f"{path.name} holds NaN or infinite values")
    return flat
