"""A deployment keeps serving through failed and lying clients (issue: deployment hardening,
items 1 and 2): a failed client does not end the run, a round short of results is retried with
a fresh cohort, forged example counts are refused, and a global model that would overflow is
never adopted."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest
import torch

from fedloom.app.client import ConfigClient
from fedloom.app.config import load_config
from fedloom.app.server import (
    DEPLOY_RETRIES,
    Deployment,
    ServerOptions,
    build_deployment,
    deployment_cohort,
)
from fedloom.core.errors import ClientError
from fedloom.core.layout import ParamLayout
from fedloom.core.packages import ClientResult, Downlink
from fedloom.runtime.loop import History
from tests.loopback import SYNTH, thread_clients

RUNS = itertools.count()


class Lying(ConfigClient):
    """Trains like everyone, then changes what it sends."""

    def __init__(self, forge: str) -> None:
        super().__init__()
        self.forge = forge

    def run_fit(self, downlink: Downlink, layout: ParamLayout) -> ClientResult:
        honest = super().run_fit(downlink, layout)
        if self.forge == "fail":
            raise RuntimeError("this client always fails")
        if self.forge == "count":  # zeros, weighted by a forged example count
            return dataclasses.replace(honest, params=torch.zeros_like(honest.params),
                                       num_examples=1 << 40)
        return dataclasses.replace(honest, params=torch.full_like(honest.params, 3e38))


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # each run directory under runs/ here


def serve(overrides: list[str], bad: dict[int, str], clients: int = 6,
          **options: object) -> tuple[Deployment, History]:
    cfg = load_config(None, [*SYNTH, *overrides, f"out=runs/{next(RUNS)}"])
    dep = build_deployment(cfg, ServerOptions(address="127.0.0.1:0", insecure=True,
                                              console=False, **options))  # type: ignore[arg-type]
    honest = [c for c in range(clients) if c not in bad]
    try:
        with thread_clients(dep.server.port, honest, client=ConfigClient()):
            runners = [thread_clients(dep.server.port, [c], client=Lying(how))
                       for c, how in bad.items()]
            for r in runners:
                r.__enter__()
            try:
                dep.fleet.wait_for_clients(clients, 30)
                return dep, dep.loop.run()
            finally:
                for r in runners:
                    r.__exit__(None, None, None)
    finally:
        dep.server.stop(grace=0.5)


def test_deployment_defaults() -> None:
    cohort = deployment_cohort(load_config(None, SYNTH).cohort)
    assert (cohort.min_success, cohort.retries) == (2, DEPLOY_RETRIES)  # half of 3, rounded up
    kept = deployment_cohort(load_config(None, [*SYNTH, "cohort.min_success=3",
                                                "cohort.retries=0"]).cohort)
    assert (kept.min_success, kept.retries) == (3, 0)


def test_a_client_that_always_fails_does_not_end_the_run() -> None:
    _, history = serve(["rounds=4", "cohort.size=6"], {2: "fail"})
    assert len(history.rows) == 4
    assert all(r["num_failures"] == 1 and r["num_results"] == 5 for r in history.rows)


def test_a_round_short_of_results_is_retried_with_a_fresh_cohort() -> None:
    """Every client must succeed (min_success = cohort size): rounds whose cohort holds the
    failing client run again with another cohort, and say so in their row."""
    _, history = serve(["rounds=4", "cohort.min_success=3"], {2: "fail"})
    assert len(history.rows) == 4
    retried = [r for r in history.rows if r.get("round_attempts", 1) > 1]
    assert retried and all(r["num_failures"] == 0 for r in history.rows)
    with pytest.raises(ClientError, match=r"only 2 of 3 clients succeeded.*after 2 attempts"):
        serve(["rounds=2", "cohort.size=3", "cohort.min_success=3", "cohort.retries=1",
               "data.num_clients=3"], {2: "fail"}, clients=3)


def test_a_forged_example_count_is_refused_and_the_model_survives() -> None:
    dep, history = serve(["rounds=3", "cohort.size=6"], {4: "count"})
    assert all(r["num_failures"] == 1 for r in history.rows)  # client 4's result, each round
    assert float(dep.loop.state.params.abs().max()) > 0.01  # not zeroed
    zeroed, unbounded = serve(["rounds=1", "cohort.size=6"], {4: "count"}, max_examples=None)
    assert unbounded.rows[0]["num_failures"] == 0  # without the bound it is taken:
    assert float(zeroed.loop.state.params.abs().max()) < 1e-6  # and zeroes the model


def test_a_model_that_would_overflow_is_never_adopted() -> None:
    """Updates near float32's maximum: the aggregate's norm overflows; the round is retried
    without adopting it, naming the client, and the run ends with a finite model."""
    dep, history = serve(["rounds=3", "cohort.size=3"], {1: "huge"})
    assert len(history.rows) == 3
    assert any(r.get("round_attempts", 1) > 1 for r in history.rows)
    params = dep.loop.state.params
    assert bool(torch.isfinite(params).all()) and float(params.abs().max()) < 1e3
