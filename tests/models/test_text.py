"""The character LSTM: shapes, parameter count (formula and by hand), picklable factory,
integer inputs of any width, and the config checks."""

from __future__ import annotations

import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.core.errors import ConfigError
from fedloom.models import ModelConfig, ModelName, model_factory
from fedloom.models.text import CharLSTM, num_parameters


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_paper_model_on_tiny_shakespeare_has_815945_parameters() -> None:
    # by hand: embedding 65*8 = 520; layer 1: 4*256*(8 + 256) + 8*256 = 272,384;
    # layer 2: 4*256*(256 + 256) + 8*256 = 526,336; head 256*65 + 65 = 16,705
    assert 520 + 272_384 + 526_336 + 16_705 == 815_945
    model = model_factory(ModelConfig(name=ModelName.LSTM), (80,), 65)()
    assert count(model) == 815_945
    assert model(torch.zeros(4, 80, dtype=torch.int16)).shape == (4, 65)


@settings(max_examples=25, deadline=None)
@given(vocab=st.integers(2, 40), embedding=st.integers(1, 6), hidden=st.integers(1, 12),
       layers=st.integers(1, 3))
def test_parameter_formula(vocab: int, embedding: int, hidden: int, layers: int) -> None:
    model = CharLSTM(vocab_size=vocab, embedding=embedding, hidden=hidden, layers=layers)
    assert count(model) == num_parameters(vocab, embedding, hidden, layers)


def test_config_sizes_the_model_and_the_factory_pickles() -> None:
    cfg = ModelConfig(name=ModelName.LSTM, embedding=4, lstm_hidden=32, lstm_layers=1)
    fn = pickle.loads(pickle.dumps(model_factory(cfg, (10,), 20)))
    model = fn()
    assert isinstance(model, CharLSTM) and count(model) == num_parameters(20, 4, 32, 1)
    assert model.lstm.hidden_size == 32 and model.lstm.num_layers == 1


@pytest.mark.parametrize("dtype", [torch.int16, torch.int32, torch.int64])
def test_codes_of_any_integer_width_give_the_same_logits(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = CharLSTM(vocab_size=9, embedding=3, hidden=5, layers=2)
    x = torch.randint(0, 9, (2, 7))
    assert torch.equal(model(x.to(dtype)), model(x))


def test_output_reads_the_last_position_only() -> None:
    torch.manual_seed(0)
    model = CharLSTM(vocab_size=9, embedding=3, hidden=5, layers=1)
    x = torch.randint(0, 9, (1, 6))
    out, _ = model.lstm(model.embed(x))
    assert torch.allclose(model(x), model.head(out[:, -1]))
    changed = x.clone()
    changed[0, -1] = (x[0, -1] + 1) % 9
    assert not torch.allclose(model(changed), model(x))  # the last character matters


def test_refuses_image_inputs_and_bad_sizes() -> None:
    with pytest.raises(ConfigError, match=r"model.name = 'lstm': needs windows.*\(1, 28, 28\)"):
        model_factory(ModelConfig(name=ModelName.LSTM), (1, 28, 28), 10)
    with pytest.raises(ConfigError) as err:
        ModelConfig(name=ModelName.LSTM, embedding=0, lstm_hidden=-1, lstm_layers=0)
    assert len(err.value.problems) == 3 and "lstm_hidden = -1" in str(err.value)
