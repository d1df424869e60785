from __future__ import annotations

from pathlib import Path

import pytest

from fedloom.app.config import RunConfig, config_to_yaml, load_config
from fedloom.core.errors import ConfigError
from fedloom.data.config import DatasetName, PartitionKind

CONFIGS = sorted(p for p in (Path(__file__).parents[2] / "configs").rglob("*.yaml")
                 if not p.name.startswith("sweep"))  # sweep files: tests/scheduler


def test_there_are_shipped_configs() -> None:
    names = {p.name for p in CONFIGS}
    assert {"default.yaml", "fedavg_mnist_2nn_iid.yaml", "fedavg_mnist_2nn_noniid.yaml",
            "fedavg_mnist_cnn_iid.yaml", "fedavg_mnist_cnn_noniid.yaml",
            "fedavg_synthetic_1_1.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_validates(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert cfg.name == path.stem
    text = path.read_text()
    assert "lr" in text.split("\n", 5)[0] + text, "each config names its learning rate"
    assert any(line.startswith("#") and "lr" in line for line in text.splitlines()), \
        f"{path.name} must say which learning rate it chose and why"


def test_defaults_and_overrides() -> None:
    cfg = load_config(None, ["rounds=7", "seed=3", "out=/tmp/x", "data.name=fashion_mnist",
                             "data.num_clients=50", "data.partition=dirichlet", "data.alpha=0.3",
                             "data.shards_per_client=3", "model.name=cnn",
                             "algorithm.name=fedavg", "cohort.size=5", "client.epochs=2",
                             "client.batch_size=0", "client.lr=0.02", "client.momentum=0.9",
                             "fleet.kind=serial", "eval.every=4", "data.beta=0.5"])
    assert (cfg.rounds, cfg.seed, cfg.out) == (7, 3, "/tmp/x")
    assert cfg.data.name == DatasetName.FASHION_MNIST
    assert cfg.data.partition == PartitionKind.DIRICHLET
    assert (cfg.data.num_clients, cfg.data.alpha, cfg.data.beta) == (50, 0.3, 0.5)
    assert cfg.data.shards_per_client == 3
    assert cfg.model.name == "cnn"
    assert (cfg.cohort.size, cfg.client.epochs, cfg.client.batch_size) == (5, 2, 0)
    assert (cfg.client.lr, cfg.client.momentum, cfg.eval.every) == (0.02, 0.9, 4)


def test_synthetic_defaults_resolve() -> None:
    cfg = load_config(None, ["data.name=synthetic", "data.num_clients=30"])
    assert cfg.data.partition == PartitionKind.NATURAL
    assert cfg.data.alpha == 1.0
    assert load_config(None, ["data.partition=dirichlet"]).data.alpha == 0.5


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["cohort.size=500", "data.alpha=0", "data.partition=dirichlet",
                           "client.lr=-1", "client.bogus=1", "model.name=resnet",
                           "rounds=many", "algorithm.name=nope"])
    text = str(info.value)
    for expected in ("data.alpha = 0.0: Dirichlet concentration must be > 0",
                     "client.lr = -1.0: must be > 0",
                     "client.bogus = 1: unknown key",
                     "model.name = 'resnet': must be one of mlp, cnn, logreg",
                     "rounds = 'many': must be of type int",
                     "algorithm.name = 'nope': must be one of ditto, fedadagrad, fedadam"):
        assert expected in text, text
    assert len(info.value.problems) >= 6


def test_cohort_larger_than_clients() -> None:
    with pytest.raises(ConfigError, match=r"cohort.size = 500: must be <= data.num_clients"):
        load_config(None, ["cohort.size=500"])


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rounds: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["rounds"])


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS[0], ["client.lr=0.03", "algorithm.server_lr=0.5"])
    path = tmp_path / "config.yaml"
    path.write_text(config_to_yaml(cfg))
    assert load_config(path) == cfg
