"""LSTM baseline core: ``torch.nn.LSTM`` with its state reset per env at episode starts.

Shape legend: T time, B env columns, L layers, D model dim (the LSTM's hidden size).
"""

from __future__ import annotations

import torch
from torch import nn

from policies.config import LSTMConfig
from policies.core import CoreOutput, MemoryCore

Tensor = torch.Tensor


class LSTMCore(MemoryCore):
    """An LSTM stepped through time so each env's (h, c) is zeroed where its episode starts."""

    def __init__(self, config: LSTMConfig) -> None:
        super().__init__()
        self.num_layers = config.num_layers
        self.d_model = config.d_model
        self.lstm = nn.LSTM(config.d_model, config.d_model, num_layers=config.num_layers)

    def initial_state(
        self, num_envs: int, device: torch.device, dtype: torch.dtype
    ) -> dict[str, Tensor]:
        zeros = torch.zeros(num_envs, self.num_layers, self.d_model, device=device, dtype=dtype)
        return {"hidden": zeros, "cell": zeros.clone()}

    def forward(
        self, x: Tensor, state: dict[str, Tensor], episode_starts: Tensor
    ) -> CoreOutput:
        hidden = state["hidden"].transpose(0, 1)  # [B, L, D] -> [L, B, D] as nn.LSTM wants
        cell = state["cell"].transpose(0, 1)
        carry = (~episode_starts).to(x.dtype)[:, None, :, None]  # [T, 1, B, 1]
        outputs = []
        for t in range(x.shape[0]):
            output, (hidden, cell) = self.lstm(x[t : t + 1], (hidden * carry[t], cell * carry[t]))
            outputs.append(output)
        features = torch.cat(outputs, dim=0)  # T x [1, B, D] -> [T, B, D]
        new_state = {"hidden": hidden.transpose(0, 1), "cell": cell.transpose(0, 1)}
        steps, batch = episode_starts.shape
        return CoreOutput(features, new_state, x.new_zeros(()), x.new_zeros(batch, 0),
                          x.new_zeros(steps, batch, 0))
