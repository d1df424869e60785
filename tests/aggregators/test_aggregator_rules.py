"""Aggregators as update rules: the registry and config, the run-time fallback, composition
with a server optimiser, and a run built from a config."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch

from fedloom.aggregators import AggregatorConfig, RobustRule, build_rule
from fedloom.aggregators.options import ByzantineOptions, CenteredClipOptions
from fedloom.algorithms.combined import Combined
from fedloom.algorithms.fedopt import FedOptOptions, fedadam
from fedloom.app.build import build_run
from fedloom.app.config import config_to_dict, load_config, parse_run_config
from fedloom.core.errors import ConfigError
from fedloom.core.packages import ClientResult

W5 = torch.ones(5, dtype=torch.float64)
LINE = torch.tensor([[0.0], [1.0], [2.0], [3.0], [100.0]])


def _results(*values: float) -> list[ClientResult]:
    return [ClientResult(round=1, client_id=i, params=torch.tensor([v], dtype=torch.float64),
                         num_examples=1, num_steps=1) for i, v in enumerate(values)]


def test_a_round_too_small_for_krum_falls_back_to_the_median(
        caplog: pytest.LogCaptureFixture) -> None:
    rule = RobustRule(AggregatorConfig(name="krum", options=ByzantineOptions(f=1)))
    assert rule.combine(1, LINE, W5, {}).metrics == {"aggregator_fallback": 0.0}
    with caplog.at_level(logging.WARNING, logger="fedloom.aggregators.rules"):
        out = rule.combine(2, LINE[:4], W5[:4], {})   # 4 <= 2f + 2
    assert out.update.tolist() == [1.5] and out.metrics == {"aggregator_fallback": 1.0}
    assert "round 2" in caplog.text and "n > 2f + 2" in caplog.text and "median" in caplog.text


def test_centered_clip_starts_from_the_last_round_update() -> None:
    rule = RobustRule(AggregatorConfig(name="centered_clip",
                                       options=CenteredClipOptions(tau=1.0)))
    extras = rule.init_extras(1)
    first = rule.combine(1, torch.tensor([[0.0], [10.0]]), W5[:2], extras)
    assert first.update.tolist() == [0.5]                 # from 0, as in the by-hand test
    second = rule.combine(2, torch.tensor([[0.0], [10.0]]), W5[:2], first.extras)
    assert second.update.tolist() == [0.75]               # from 0.5


def test_fedadam_steps_from_the_median() -> None:
    opts = FedOptOptions(server_lr=0.1, beta1=0.5, beta2=0.5, tau=0.1)
    robust = Combined(fedadam(opts), RobustRule(AggregatorConfig(name="median")))
    plain = fedadam(opts)
    x0 = torch.tensor([0.0], dtype=torch.float64)
    got = robust.aggregate(1, robust.init(x0), _results(1.0, 2.0, 100.0))
    # the median update is 2: FedAdam's step from a single update of 2, computed by hand
    want = plain.aggregate(1, plain.init(x0), _results(2.0))
    m1, v1 = 0.5 * 2.0, 0.5 * 0.01 + 0.5 * 4.0
    assert got.params.item() == pytest.approx(0.1 * m1 / (math.sqrt(v1) + 0.1), rel=1e-12)
    assert torch.equal(got.params, want.params)
    assert torch.equal(got.extras["v"], want.extras["v"])
    assert robust.row_metrics(got)["aggregator_fallback"] == 0.0


def test_config_names_the_aggregator_and_its_options() -> None:
    cfg = load_config(None, ["aggregator.name=multi_krum", "aggregator.f=2", "aggregator.m=4"])
    assert cfg.aggregator.name == "multi_krum"
    assert (cfg.aggregator.options.f, cfg.aggregator.options.m) == (2, 4)
    assert config_to_dict(cfg)["aggregator"] == {"name": "multi_krum", "f": 2, "m": 4}
    assert parse_run_config(config_to_dict(cfg)) == cfg
    assert load_config(None, []).aggregator == AggregatorConfig(name="mean")
    assert build_rule(AggregatorConfig()) is None


@pytest.mark.parametrize(("overrides", "says"), [
    (["aggregator.name=bulyan", "aggregator.f=2"], "n >= 4f + 3 = 11 updates, got n = 10"),
    (["aggregator.name=krum", "aggregator.f=1", "cohort.size=4"], "n > 2f + 2"),
    (["aggregator.name=trimmed_mean", "aggregator.beta=0.5"], "aggregator.beta = 0.5"),
    (["aggregator.name=median", "aggregator.f=1"], "aggregator.f = 1: unknown key"),
    (["aggregator.name=mode"], "aggregator.name = 'mode': must be one of bulyan"),
])
def test_impossible_aggregator_configs_are_refused(overrides: list[str], says: str) -> None:
    with pytest.raises(ConfigError, match=says.replace("+", r"\+")):
        load_config(None, overrides)


TINY = ["data.name=synthetic", "data.num_clients=12", "model.name=logreg", "cohort.size=5",
        "client.lr=0.01", "client.batch_size=10", "rounds=3", "fleet.threads=1"]


@pytest.mark.parametrize("name", ["median", "krum", "geometric_median", "centered_clip"])
def test_a_run_built_from_config_uses_the_rule(name: str, tmp_path: Path) -> None:
    cfg = load_config(None, [*TINY, f"aggregator.name={name}", "algorithm.name=fedadam"])
    run = build_run(cfg)
    assert isinstance(run.algorithm, Combined)
    rows = run.run().rows
    assert [r["aggregator_fallback"] for r in rows] == [0.0, 0.0, 0.0]
    assert all(math.isfinite(float(r["test_loss"])) for r in rows)  # type: ignore[arg-type]


def test_an_algorithm_that_reads_each_result_is_refused() -> None:
    cfg = load_config(None, [*TINY, "aggregator.name=median", "algorithm.name=scaffold"])
    with pytest.raises(ConfigError, match="median replaces the example-weighted mean"):
        build_run(cfg)
