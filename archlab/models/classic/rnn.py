"""Recurrent sequence classifiers: Elman RNN, LSTM and GRU, over ``torch.nn.RNN/LSTM/GRU``.

A recurrent layer reads the sequence ``x_1..x_T`` one step at a time, carrying a state ``h_t``:

    RNN   h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
    LSTM  i, f, g, o = sigma, sigma, tanh, sigma(W_i* x_t + W_h* h_{t-1} + b)
          c_t = f * c_{t-1} + i * g,     h_t = o * tanh(c_t)                  (Hochreiter & Schmidhuber 1997)
    GRU   r, z = sigma(W_ir x_t + W_hr h_{t-1} + b_r), sigma(W_iz x_t + W_hz h_{t-1} + b_z)
          n = tanh(W_in x_t + b_in + r * (W_hn h_{t-1} + b_hn))
          h_t = (1 - z) * n + z * h_{t-1}                                     (Cho et al. 2014)

``num_layers`` layers are stacked (layer l reads layer l-1's outputs); a bidirectional layer also
runs a second recurrence from ``t = T`` back to ``t = 1`` and concatenates both states, so each
output ``o_t = [h_t^fwd, h_t^bwd]`` has ``D * hidden_size`` features (``D = 2``, else 1). The
*readout* turns the top layer's outputs into one feature vector for the linear classifier:

- ``"last"``: the final state of each direction, ``[h_T^fwd, h_1^bwd]`` -- both have read the whole
  sequence (for the backward direction that is its state at ``t = 1``, not at ``t = T``);
- ``"mean"``: the average output over time, ``(1/T) sum_t o_t``;
- ``"flatten"``: all outputs concatenated, ``[o_1, ..., o_T]`` (needs a fixed ``seq_len``). The
  MNIST-1D paper's ``GRUBase`` is ``gru`` with ``hidden_size=6, bidirectional=True,
  readout="flatten"``: GRU(1, 6, bidirectional) and Linear(2 * 6 * 40, 10), 5,134 parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from ...nn import InitScheme, init_weights
from ...registry import register
from ..base import ArchModel


@dataclass
class RecurrentConfig:
    input_size: int = 1
    """features per time step F (1 for a scalar sequence such as MNIST-1D)"""
    seq_len: int = 40
    """time steps T (fixes the classifier's input size for the "flatten" readout)"""
    hidden_size: int = 64
    """state size H of each direction of each layer"""
    num_layers: int = 1
    """stacked recurrent layers"""
    bidirectional: bool = False
    """also run each layer from the last step to the first and concatenate the two states"""
    dropout: float = 0.0
    """dropout probability between stacked layers and on the readout features"""
    num_classes: int = 10
    """number of classes (output logits)"""
    readout: Literal["last", "mean", "flatten"] = "last"
    """how the outputs over time become one vector: final states, time average, or all steps concatenated"""
    init: InitScheme = "default"
    """weight initialisation scheme (see archlab.nn.init); "orthogonal" makes each gate's W_hh orthogonal"""

    def __post_init__(self) -> None:
        if min(self.input_size, self.seq_len, self.hidden_size, self.num_layers) < 1:
            raise ValueError("input_size, seq_len, hidden_size and num_layers must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class RecurrentClassifier(ArchModel):
    """Recurrent layers -> readout -> Dropout -> Linear; subclasses pick the cell (RNN, LSTM, GRU).

    Shapes:
        x: ``[B, T]`` (one feature per step) or ``[B, T, F]``
        outputs: ``[B, T, D * H]`` -> readout ``[B, D * H]`` (``[B, T * D * H]`` for "flatten")
        logits: ``[B, num_classes]``
    """

    config_class = RecurrentConfig
    cell: ClassVar[type[nn.RNNBase]]

    def __init__(self, config: RecurrentConfig) -> None:
        super().__init__(config)
        self.rnn = self.cell(
            config.input_size,
            config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            # torch only applies dropout between layers, and warns when there is no second layer.
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            bidirectional=config.bidirectional,
        )
        width = (2 if config.bidirectional else 1) * config.hidden_size
        if config.readout == "flatten":
            width *= config.seq_len
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(width, config.num_classes)
        init_weights(self, config.init)

    @classmethod
    def example_input(cls, config: RecurrentConfig, batch_size: int = 2) -> torch.Tensor:
        return torch.randn(batch_size, config.seq_len, config.input_size)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The readout vector fed to the classifier (``[B, D * H]``, or ``[B, T * D * H]`` for flatten)."""
        if x.dim() == 2:  # [B, T]: a scalar per time step
            x = x.unsqueeze(-1)
        outputs, state = self.rnn(x)
        readout = self.config.readout
        if readout == "mean":
            return outputs.mean(dim=1)
        if readout == "flatten":
            return outputs.flatten(1)
        h_n = state[0] if isinstance(state, tuple) else state  # the LSTM also returns its cell state
        # h_n is [num_layers * D, B, H]; its last D rows are the top layer's final states, forward
        # (after t = T) then backward (after reading back to t = 1).
        directions = 2 if self.config.bidirectional else 1
        return h_n[-directions:].transpose(0, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


@register("rnn", family="classic")
class RNNClassifier(RecurrentClassifier):
    """Elman RNN (tanh) sequence classifier."""

    cell = nn.RNN


@register("lstm", family="classic")
class LSTMClassifier(RecurrentClassifier):
    """LSTM sequence classifier (Hochreiter & Schmidhuber 1997)."""

    cell = nn.LSTM


@register("gru", family="classic")
class GRUClassifier(RecurrentClassifier):
    """GRU sequence classifier (Cho et al. 2014)."""

    cell = nn.GRU
