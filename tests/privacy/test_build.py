"""privacy.* in a run config: applied by the one build path, epsilon in every row, the run stops
before the round that would exceed privacy.target_epsilon, refusals with reasons."""

from __future__ import annotations

import pytest

from fedloom.app.build import build_run
from fedloom.app.config import load_config
from fedloom.core.errors import ConfigError
from fedloom.runtime.loop import ServerLoop

BASE = ["rounds=4", "data.name=synthetic", "model.name=logreg", "cohort.size=10",
        "privacy.noise_multiplier=1.0", "privacy.clip=0.5", "eval.every=4"]


def run(*extra: str) -> ServerLoop:
    loop = build_run(load_config(None, [*BASE, *extra]))
    assert isinstance(loop, ServerLoop)
    return loop


@pytest.mark.parametrize("mech", ["central", "adaptive", "local", "sample"])
def test_every_row_carries_epsilon(mech: str) -> None:
    loop = run(f"privacy.mechanism={mech}", "privacy.count_stddev=1.0")
    rows = loop.run().rows
    eps = [r["epsilon"] for r in rows]
    assert len(rows) == 4 and all(isinstance(e, float) for e in eps)
    assert eps == sorted(eps) and eps[0] > 0
    assert loop.stopped is None
    if mech in ("central", "adaptive"):
        assert all("clip_norm" in r for r in rows)
    if mech == "adaptive":
        assert rows[0]["clip_norm"] == 0.5 and rows[-1]["clip_norm"] != 0.5


def test_stops_before_the_round_that_would_exceed_the_target() -> None:
    full = [r["epsilon"] for r in run("privacy.mechanism=central").run().rows]
    target = (full[1] + full[2]) / 2  # round 3 would exceed it
    loop = run("privacy.mechanism=central", f"privacy.target_epsilon={target}")
    rows = loop.run().rows
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[-1]["epsilon"] <= target
    assert loop.stopped is not None and "round 3" in loop.stopped


def test_central_dp_changes_the_model_and_is_seeded() -> None:
    a = run("privacy.mechanism=central").run().final.params
    b = run("privacy.mechanism=central").run().final.params
    plain = build_run(load_config(None, BASE[:4])).run().final.params
    assert bool((a == b).all()) and not bool((a == plain).all())


def test_refusals_name_the_reason() -> None:
    with pytest.raises(ConfigError, match="robust aggregate"):
        load_config(None, [*BASE, "privacy.mechanism=central", "aggregator.name=median"])
    with pytest.raises(ConfigError, match="SecAgg hides"):
        load_config(None, [*BASE, "privacy.mechanism=central", "secagg.enabled=true"])
    with pytest.raises(ConfigError, match="count_stddev"):
        run("privacy.mechanism=adaptive")  # cohort 10: the default count noise is too small
    with pytest.raises(ConfigError, match=r"privacy\.mechanism"):
        load_config(None, [*BASE, "privacy.mechanism=everything"])
    # client-side noise composes with a robust aggregator
    load_config(None, [*BASE, "privacy.mechanism=local", "aggregator.name=median"])


def test_run_summary_carries_epsilon() -> None:
    from fedloom.reporting.report import summarize_rows

    rows = run("privacy.mechanism=local").run().rows
    assert summarize_rows(rows, None)["epsilon"] == rows[-1]["epsilon"]
    assert "epsilon" not in summarize_rows([{"round": 1, "test_accuracy": 0.5}], None)
