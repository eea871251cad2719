"""The contract between `MemoryPolicy` and its memory cores.

Shape legend: T time, B env columns, D model dim, L layers.
"""

from __future__ import annotations

import abc
from typing import NamedTuple

import torch
from torch import nn

Tensor = torch.Tensor


class CoreOutput(NamedTuple):
    """What a memory core returns for a chunk of T steps."""

    features: Tensor
    """[T, B, D] input of the actor and critic heads."""
    state: dict[str, Tensor]
    """The state after the chunk (tensors with the env column first, see `policies.State`)."""
    aux_loss: Tensor
    """[] auxiliary loss (Expire-Span's span loss, zero otherwise)."""
    alive: Tensor
    """[B, L] memories per layer alive for the next step (width 0 for cores without memories)."""
    spans: Tensor
    """[T, B, L] span e of each new memory per layer (width 0 for cores without spans)."""


class MemoryCore(nn.Module, abc.ABC):
    """A recurrent core: maps embedded observations [T, B, D] to features, carrying a state.

    ``episode_starts[t, b]`` means step t of env b begins a new episode: nothing from
    before it may influence outputs at or after t.
    """

    @abc.abstractmethod
    def initial_state(
        self, num_envs: int, device: torch.device, dtype: torch.dtype
    ) -> dict[str, Tensor]:
        """The state of ``num_envs`` envs before their first step."""

    @abc.abstractmethod
    def forward(
        self, x: Tensor, state: dict[str, Tensor], episode_starts: Tensor
    ) -> CoreOutput:
        """Run ``x`` [T, B, D] from ``state``; ``episode_starts`` [T, B] bool."""

    def span_parameters(self) -> list[nn.Parameter]:
        """Parameters of the span predictors (trained with their own learning rate)."""
        return []
