"""Every algorithm runs on every fleet and computes what the serial fleet computes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedloom.algorithms import registry
from fedloom.app.build import build_run
from fedloom.app.config import load_config

TINY = ["data.name=synthetic", "data.num_clients=8", "model.name=logreg", "cohort.size=4",
        "client.lr=0.01", "client.batch_size=10", "rounds=2", "fleet.threads=1",
        "fleet.workers=2"]
#: what an algorithm needs of the run beyond TINY (FedPer: a model with a body and a head)
NEEDS = {"fedper": ["model.name=mlp", "model.hidden=8"]}
SYNC = sorted(n for n in registry() if n not in ("fedasync", "fedbuff"))


def _final(tmp_path: Path, name: str, kind: str) -> torch.Tensor:
    cfg = load_config(None, [*TINY, *NEEDS.get(name, ()), f"algorithm.name={name}",
                             f"fleet.kind={kind}", f"out={tmp_path / kind}"])
    return build_run(cfg).run().final.params


@pytest.mark.parametrize("name", [*SYNC, "fedbuff"])
@pytest.mark.parametrize("kind", ["thread", "vectorized"])
def test_algorithm_on_fleet_matches_serial(name: str, kind: str, tmp_path: Path) -> None:
    serial = _final(tmp_path, name, "serial")
    other = _final(tmp_path, name, kind)
    if kind == "thread":
        assert torch.equal(serial, other)
    else:
        assert torch.allclose(serial, other, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["scaffold", "ditto", "fedbuff"])
def test_stateful_algorithm_on_process_fleet_is_bitwise_serial(name: str, tmp_path: Path) -> None:
    assert torch.equal(_final(tmp_path, name, "serial"), _final(tmp_path, name, "process"))
