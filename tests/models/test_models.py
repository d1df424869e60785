"""The shipped models: the FedAvg paper's sizes, picklable factories, seeded initialisation."""

from __future__ import annotations

import pickle

import pytest
import torch

from fedloom.core.errors import ConfigError
from fedloom.models import ModelConfig, ModelName, init_module, model_factory


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_the_fedavg_papers_models_have_their_published_sizes() -> None:
    mnist = ((1, 28, 28), 10)
    assert count(model_factory(ModelConfig(name=ModelName.MLP), *mnist)()) == 199_210
    assert count(model_factory(ModelConfig(name=ModelName.CNN), *mnist)()) == 1_663_370
    assert count(model_factory(ModelConfig(name=ModelName.LOGREG), (60,), 10)()) == 610


def test_every_model_maps_a_batch_to_one_logit_per_class() -> None:
    for name in ModelName:
        shape = {ModelName.LOGREG: (60,), ModelName.LSTM: (12,)}.get(name, (1, 28, 28))
        codes = name == ModelName.LSTM  # windows of character codes (models/text.py)
        model = model_factory(ModelConfig(name=name, hidden=16), shape, 7)()
        x = torch.zeros(3, *shape, dtype=torch.int64 if codes else torch.float32)
        assert model(x).shape == (3, 7)


def test_factories_pickle_for_spawned_workers() -> None:
    fn = model_factory(ModelConfig(name=ModelName.CNN), (1, 28, 28), 10)
    assert count(pickle.loads(pickle.dumps(fn))()) == count(fn())


def test_initialisation_depends_on_the_seed_only_and_leaves_the_global_rng_alone() -> None:
    fn = model_factory(ModelConfig(name=ModelName.MLP, hidden=8), (1, 4, 4), 3)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b, c = init_module(fn, 5), init_module(fn, 5), init_module(fn, 6)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_bad_model_settings_name_the_key() -> None:
    with pytest.raises(ConfigError, match="hidden"):
        ModelConfig(hidden=0)
    with pytest.raises(ConfigError, match=r"model.name = 'cnn'.*input shape"):
        model_factory(ModelConfig(name=ModelName.CNN), (60,), 10)
