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
    """An LSTM whose state (h, c) is zeroed, per env, where that env's episode starts.

    A chunk is cut at the steps where any env starts an episode and each piece runs as one
    ``nn.LSTM`` call (one fused sequence kernel, not one call per step): on corridor runs a
    chunk of 128 steps has a few such steps, so this is several times faster than stepping.
    Finding the cuts reads the chunk's episode starts on the host, once per chunk of more than
    one step (the learner's), never in a rollout's single steps.
    """

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
        steps = x.shape[0]
        cuts = [0]
        if steps > 1:
            cuts += (episode_starts[1:].any(dim=1).nonzero().squeeze(1) + 1).tolist()
        outputs = []
        for begin, end in zip(cuts, [*cuts[1:], steps], strict=True):
            carry = (~episode_starts[begin]).to(x.dtype)[None, :, None]  # [1, B, 1]
            output, (hidden, cell) = self.lstm(x[begin:end], (hidden * carry, cell * carry))
            outputs.append(output)
        features = torch.cat(outputs, dim=0)  # pieces of [t, B, D] -> [T, B, D]
        new_state = {"hidden": hidden.transpose(0, 1), "cell": cell.transpose(0, 1)}
        steps, batch = episode_starts.shape
        return CoreOutput(features, new_state, x.new_zeros(()), x.new_zeros(batch, 0),
                          x.new_zeros(steps, batch, 0))
