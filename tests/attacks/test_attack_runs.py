"""Data attacks by hand, and attacks wired through the one build path on every simulation
fleet; robust aggregation in a deployment."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedloom.algorithms.combined import Combined
from fedloom.app.build import build_run
from fedloom.app.config import load_config
from fedloom.app.server import ServerOptions, build_deployment
from fedloom.attacks.config import AttackConfig, AttackName, BackdoorOptions
from fedloom.attacks.poison import add_trigger, poison, triggered_test
from fedloom.core.errors import ConfigError
from fedloom.data.dataset import ArrayData, FederatedData
from tests.loopback import serve_to_the_end


def _data() -> FederatedData:
    x = torch.arange(4, dtype=torch.uint8).repeat_interleave(16).reshape(4, 1, 4, 4)
    y = torch.tensor([0, 1, 2, 3])
    return FederatedData(name="tiny", train=ArrayData(x=x, y=y), test=ArrayData(x=x, y=y),
                         client_train=(torch.tensor([0, 1]), torch.tensor([2, 3])),
                         client_test=None, num_classes=4, input_shape=(1, 4, 4))


def test_label_flip_poisons_only_the_malicious_clients_copies() -> None:
    data = _data()
    out = poison(data, AttackConfig(name=AttackName.LABEL_FLIP), {1}, seed=0)
    assert out.client_train[0].tolist() == [0, 1]          # honest: untouched
    assert out.arrays().y[out.client_train[1]].tolist() == [1, 0]   # 3 - 2, 3 - 3
    assert out.arrays().y[:4].tolist() == [0, 1, 2, 3]      # originals kept
    assert torch.equal(out.arrays().x[out.client_train[1]], data.arrays().x[2:])


def test_backdoor_triggers_a_seeded_share_with_the_target_label() -> None:
    opts = BackdoorOptions(target=0, poison_fraction=0.5, size=2)
    out = poison(_data(), AttackConfig(name=AttackName.BACKDOOR, options=opts), {1}, seed=0)
    x, y = out.arrays().x[out.client_train[1]], out.arrays().y[out.client_train[1]]
    hit = [bool(xi[0, -1, -1] == 255) for xi in x]
    assert sum(hit) == 1 and [int(yi) for yi, h in zip(y, hit) if h] == [0]
    assert next(int(yi) for yi, h in zip(y, hit) if not h) in (2, 3)
    trig = add_trigger(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), size=2)[0, 0]
    assert trig.tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 255, 0], [0, 0, 0, 255]]
    test = triggered_test(_data().test, opts)   # the target class is left out
    assert test.y.tolist() == [0, 0, 0] and bool((test.x[:, 0, -1, -1] == 255).all())


TINY = ["data.name=synthetic", "data.num_clients=12", "model.name=logreg", "cohort.size=6",
        "client.lr=0.01", "client.batch_size=10", "rounds=2", "fleet.threads=1",
        "attack.fraction=0.25"]


def _final(*overrides: str) -> torch.Tensor:
    return build_run(load_config(None, [*TINY, *overrides])).run().final.params


@pytest.mark.parametrize("attack", ["label_flip", "sign_flip", "gaussian", "alie", "ipm"])
def test_attacks_act_the_same_on_every_fleet(attack: str) -> None:
    serial = _final(f"attack.name={attack}")
    assert not torch.equal(serial, _final())          # the attack changed the run
    for kind in ("thread", "process"):
        assert torch.equal(serial, _final(f"attack.name={attack}", f"fleet.kind={kind}"))
    vectorized = _final(f"attack.name={attack}", "fleet.kind=vectorized")
    assert torch.allclose(serial, vectorized, rtol=1e-4, atol=1e-5)


def test_backdoor_run_reports_its_success_rate() -> None:
    cfg = load_config(None, ["data.num_clients=20", "cohort.size=5", "rounds=1",
                             "model.name=mlp", "model.hidden=8", "fleet.threads=1",
                             "attack.name=backdoor", "attack.target=7"])
    try:
        rows = build_run(cfg).run().rows
    except Exception as err:  # MNIST not on this machine
        pytest.skip(f"MNIST unavailable: {err}")
    assert 0.0 <= float(rows[-1]["backdoor_accuracy"]) <= 1.0  # type: ignore[arg-type]


def test_a_backdoor_needs_images() -> None:
    with pytest.raises(ConfigError, match="the trigger needs uint8 images"):
        build_run(load_config(None, [*TINY, "attack.name=backdoor"]))


def test_attacks_outside_a_flat_simulation_are_refused() -> None:
    with pytest.raises(ConfigError, match="asynchronous"):
        build_run(load_config(None, [*TINY, "attack.name=sign_flip",
                                     "algorithm.name=fedasync"]))
    with pytest.raises(ConfigError, match=r"attack\.fraction = 1\.0: must be in"):
        load_config(None, ["attack.name=ipm", "attack.fraction=1.0"])


def test_a_deployed_server_aggregates_by_the_median(tmp_path: Path) -> None:
    cfg = load_config(None, [*TINY[:-1], "data.num_clients=6", "cohort.size=5",
                             "aggregator.name=median", f"out={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="attacks are simulated"):
        build_deployment(load_config(None, [*TINY, "attack.name=ipm"]),
                         ServerOptions(address="127.0.0.1:0", insecure=True, console=False))
    dep = build_deployment(cfg, ServerOptions(address="127.0.0.1:0", insecure=True,
                                              console=False))
    assert isinstance(dep.loop.algorithm, Combined)
    rows = serve_to_the_end(dep, clients=6).rows
    assert [r["aggregator_fallback"] for r in rows] == [0.0, 0.0]
    assert torch.equal(dep.loop.state.params, build_run(cfg).run().final.params)
