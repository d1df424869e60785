"""The FedAvg paper's next-character model: character embedding, stacked LSTM, linear head.

Inputs are windows of character codes (any integer dtype; :mod:`fedloom.data.shakespeare`
stores int16) and the output is one logit per vocabulary character for the character after the
window, read off the last position's LSTM output. With a vocabulary of ``V`` characters,
embedding width ``E``, ``L`` layers of ``H`` units, the parameters number

    V*E  +  4H(E + H) + 8H  +  (L - 1) * (4H(2H) + 8H)  +  H*V + V

(PyTorch's LSTM keeps two bias vectors per layer: ``8H``). The paper's model (E = 8, L = 2,
H = 256) on Tiny Shakespeare's 65 characters has 815,945.

Example:
    >>> model = CharLSTM(vocab_size=65, embedding=8, hidden=256, layers=2)
    >>> model(torch.zeros(3, 80, dtype=torch.int16)).shape, num_parameters(65, 8, 256, 2)
    (torch.Size([3, 65]), 815945)
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import nn

from fedloom.core.errors import ConfigError

if TYPE_CHECKING:
    from fedloom.models import ModelConfig, ModelFn


class CharLSTM(nn.Module):
    """Embedding -> ``layers``-layer LSTM -> linear head on the last position."""

    def __init__(self, *, vocab_size: int, embedding: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding)
        self.lstm = nn.LSTM(embedding, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(x.long()))
        return self.head(out[:, -1])  # type: ignore[no-any-return]


def num_parameters(vocab_size: int, embedding: int, hidden: int, layers: int) -> int:
    """The parameter count of :class:`CharLSTM` (the module docstring's formula)."""
    def lstm_layer(inputs: int) -> int:
        return 4 * hidden * (inputs + hidden) + 8 * hidden

    stacked = lstm_layer(embedding) + (layers - 1) * lstm_layer(hidden)
    return vocab_size * embedding + stacked + hidden * vocab_size + vocab_size


def char_lstm(vocab_size: int, embedding: int, hidden: int, layers: int) -> nn.Module:
    """A :class:`CharLSTM` (positional, for a picklable :func:`functools.partial`)."""
    return CharLSTM(vocab_size=vocab_size, embedding=embedding, hidden=hidden, layers=layers)


def lstm_factory(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> ModelFn:
    """``model.name = lstm``: the classes are the vocabulary, so ``num_classes`` also sizes the
    embedding; ``input_shape`` must be a window of codes, ``(seq_len,)``.

    Raises:
        ConfigError: the data's examples are not 1-d windows.
    """
    if len(input_shape) != 1:
        raise ConfigError(f"model.name = 'lstm': needs windows of character codes (seq_len,); "
                          f"the data has input shape {input_shape}")
    return partial(char_lstm, num_classes, cfg.embedding, cfg.lstm_hidden, cfg.lstm_layers)
