"""Transformer-XL baseline: the Expire-Span blocks with a fixed window of the last M memories.

Shape legend: T time (queries of this chunk), B env columns, N keys (memories + chunk).

A query at t attends to itself and to the M steps before it that belong to its episode
(Dai et al., 2019, with the same pre-norm blocks, relative position bias and slot buffer as
`policies.expire_span`, so the two differ only in which memories are kept). Every cached
memory costs compute, so memory and time grow with M.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from policies.config import TransformerXLConfig
from policies.transformer import KeyLayout, LayerMask, TransformerCore

Tensor = torch.Tensor


class TransformerXLCore(TransformerCore):
    """Transformer blocks over a sliding window of the last ``memory_size`` steps."""

    def __init__(self, config: TransformerXLConfig) -> None:
        super().__init__(config, max_distance=config.memory_size)
        self.memory_size = config.memory_size

    def memory_mask(
        self, layer: int, features: Tensor, keys: KeyLayout, context: Any
    ) -> LayerMask:
        num_steps = keys.distance.shape[1]
        attended = keys.visible & (keys.distance <= self.memory_size)  # [B, T, N]
        log_mask = torch.zeros(attended.shape, dtype=features.dtype, device=attended.device)
        log_mask = log_mask.masked_fill(~attended, -math.inf)
        alive_next = num_steps - keys.position <= self.memory_size  # [B, N]
        return LayerMask(log_mask, alive_next, None, features.new_zeros(()))
