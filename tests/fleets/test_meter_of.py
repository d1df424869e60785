"""Who measures a round's bytes: :func:`meter_of` looks through the wrapper layers (the
decoder, an attack, secure aggregation) to the fleet that measures them, and the round loop
reports what that fleet measured instead of the sizes a simulation counts."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from fedloom.app.build import build_run
from fedloom.app.config import load_config
from fedloom.attacks.config import AttackConfig
from fedloom.attacks.fleet import AttackedFleet
from fedloom.compression.codecs import Float16
from fedloom.core.packages import Downlink, Outcome
from fedloom.core.traffic import Traffic
from fedloom.fleets.base import Fleet, WrappedFleet, meter_of
from fedloom.fleets.decoding import DecodingFleet
from fedloom.fleets.secagg import SecAggFleet
from fedloom.runtime.loop import ServerLoop
from fedloom.secagg import SecAggConfig
from tests.loopback import SYNTH

DOWN, UP = 1000, 7  # what Measured "measures" per round


class Measured(WrappedFleet):
    """``inner``'s rounds, as if measured on a wire: DOWN bytes down and UP up per round."""

    def __init__(self, inner: Fleet) -> None:
        super().__init__(inner)
        self.moved = Traffic(framing_down=0, framing_up=0)

    def fit(self, round: int, tasks: Sequence[Downlink]) -> list[Outcome]:
        out = self.inner.fit(round, tasks)
        self.moved = Traffic(bytes_down=self.moved.bytes_down + DOWN,
                             bytes_up=self.moved.bytes_up + UP,
                             framing_down=0, framing_up=(self.moved.framing_up or 0) + round)
        return out

    def traffic(self) -> Traffic:
        return self.moved


def _loop(*overrides: str) -> ServerLoop:
    loop = build_run(load_config(None, [*SYNTH, *overrides]))
    assert isinstance(loop, ServerLoop)
    return loop


def test_meter_of_finds_the_measuring_fleet_under_any_wrappers() -> None:
    plain = _loop().fleet
    measured = Measured(plain)
    secagg = SecAggConfig(enabled=True, threshold=2)
    wrappers = [measured, DecodingFleet(measured, Float16()),
                AttackedFleet(measured, AttackConfig(), frozenset(), seed=0),
                SecAggFleet(AttackedFleet(DecodingFleet(measured, Float16()), AttackConfig(),
                                          frozenset(), seed=0), secagg)]
    assert all(meter_of(w) is measured for w in wrappers)
    assert meter_of(plain) is None  # a simulation: nobody measures, the loop counts
    assert meter_of(DecodingFleet(plain, Float16())) is None
    assert meter_of(SecAggFleet(plain, secagg)) is None


@pytest.mark.parametrize("wrap", ["attack", "secagg"])
def test_rows_report_the_bytes_measured_under_a_wrapper(wrap: str) -> None:
    counted = _loop().run().rows
    size = 3 * 4 * _loop().layout.size  # three clients, one float32 model each way
    assert all(r["bytes_down"] == r["bytes_up"] == size for r in counted)
    if wrap == "attack":
        loop = _loop()
        loop.fleet = AttackedFleet(Measured(loop.fleet), AttackConfig(), frozenset(), seed=0)
    else:
        loop = _loop("secagg.enabled=true", "secagg.threshold=2")
        assert isinstance(loop.fleet, SecAggFleet)
        loop.fleet.inner = Measured(loop.fleet.inner)
    rows = loop.run().rows
    assert [(r["bytes_down"], r["bytes_up"]) for r in rows] == [(DOWN, UP)] * 3
    assert [r["framing_bytes_up"] for r in rows] == [1, 2, 3]  # each round's own difference
