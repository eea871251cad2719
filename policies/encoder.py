"""Observation encoder: embeds a Dict of minigrid images, Discrete tokens and float vectors.

Shape legend: T time, B env columns, V view size, E embedding size, D model dim.

Supported fields (each a value of a ``gymnasium.spaces.Dict``, or the whole space):

- ``Box(0, 255, (V, V, 3), uint8)``: a minigrid window of (object, colour, state) cells;
  each cell is embedded as the sum of an object, a colour and a state embedding (vocabulary
  sizes from ``minigrid.core.constants``; the state table also covers the agent's
  direction 0..3, which minigrid stores in the state channel of the agent's cell).
- ``Discrete(n)``: an integer token (int64 [T, B]) with its own embedding table.
- ``Box`` of a float dtype and rank 1: a feature vector, used as it is.

All embeddings are concatenated and go through a small MLP to the model width D.
"""

from __future__ import annotations

import functools

import gymnasium as gym
import numpy as np
import torch
from minigrid.core.constants import COLOR_TO_IDX, DIR_TO_VEC, OBJECT_TO_IDX, STATE_TO_IDX
from torch import nn

Tensor = torch.Tensor
Obs = dict[str, Tensor] | Tensor

NUM_OBJECTS = len(OBJECT_TO_IDX)
NUM_COLORS = len(COLOR_TO_IDX)
# The state channel holds door states, and the direction on the agent's own cell.
NUM_STATES = max(len(STATE_TO_IDX), len(DIR_TO_VEC))

SINGLE_KEY = "observation"
"""Field name used internally when the observation space is not a Dict."""

ALLOWED_SPACES = (
    "Box(0, 255, (H, W, 3), uint8) of minigrid (object, colour, state) cells, "
    "Discrete(n), or a float Box of rank 1 (flatten others with "
    "gymnasium.wrappers.FlattenObservation)"
)


def _quarter_turns() -> tuple[int, ...]:
    """For each heading d (minigrid's 0 east .. 3 north), the quarter turns k of
    ``torch.rot90(image, k, dims=(-3, -2))`` that bring the cell in front of the agent to where
    it is when the agent faces north. Found on a marked 3 x 3 window, not derived by hand."""
    turns = []
    for dx, dy in DIR_TO_VEC:
        marked = torch.zeros(3, 3, 1)
        marked[1 + dx, 1 + dy] = 1.0
        turns.append(next(k for k in range(4) if torch.rot90(marked, k, dims=(0, 1))[1, 0, 0]))
    return tuple(turns)


QUARTER_TURNS = _quarter_turns()


@functools.cache
def _turn_index(view: int, device: torch.device) -> Tensor:
    """[4, V·V]: for each heading, the source cell of every cell of the turned window."""
    cells = torch.arange(view * view).view(view, view)
    turned = [torch.rot90(cells, k, dims=(0, 1)).flatten() for k in QUARTER_TURNS]
    return torch.stack(turned).to(device)


def egocentric_view(image: Tensor) -> Tensor:
    """[..., V, V, 3] top-down windows centred on the agent -> the same windows turned so that
    the agent always faces north (its heading is the state channel of the centre cell)."""
    view = image.shape[-2]
    heading = image[..., view // 2, view // 2, 2].long().clamp(0, 3)  # [...]
    index = _turn_index(view, image.device)[heading]  # [..., V·V]
    cells = image.flatten(-3, -2)  # [..., V·V, 3]
    return cells.gather(-2, index[..., None].expand(*index.shape, 3)).view(image.shape)


class MinigridCellEmbedding(nn.Module):
    """[T, B, H, W, 3] uint8 cells -> [T, B, H·W·E]: summed object, colour, state embeddings
    (of the window turned to the agent's heading first, if ``egocentric``)."""

    def __init__(self, height: int, width: int, embed_dim: int, egocentric: bool = False) -> None:
        super().__init__()
        if egocentric and height != width:
            raise ValueError(f"an egocentric view needs a square window, got {height} x {width}")
        self.egocentric = egocentric
        self.object = nn.Embedding(NUM_OBJECTS, embed_dim)
        self.color = nn.Embedding(NUM_COLORS, embed_dim)
        self.state = nn.Embedding(NUM_STATES, embed_dim)
        self.out_dim = height * width * embed_dim

    def forward(self, image: Tensor) -> Tensor:
        if self.egocentric:
            image = egocentric_view(image)
        cells = image.long()
        embedded = (self.object(cells[..., 0]) + self.color(cells[..., 1])
                    + self.state(cells[..., 2]))  # [T, B, H, W, E]
        return embedded.flatten(start_dim=2)  # [T, B, H, W, E] -> [T, B, H·W·E]


class TokenEmbedding(nn.Module):
    """[T, B] integer token of a Discrete(n, start) field -> [T, B, E]."""

    def __init__(self, space: gym.spaces.Discrete, embed_dim: int) -> None:
        super().__init__()
        self.start = int(space.start)
        self.embedding = nn.Embedding(int(space.n), embed_dim)
        self.out_dim = embed_dim

    def forward(self, token: Tensor) -> Tensor:
        return self.embedding(token.long() - self.start)


class FloatFeatures(nn.Module):
    """[T, B, F] float vector, passed through (the encoder casts it to the model's dtype)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.out_dim = size

    def forward(self, features: Tensor) -> Tensor:
        return features


def _field_encoder(
    key: str, space: gym.Space, cell_embed_dim: int, token_embed_dim: int, egocentric: bool
) -> nn.Module:
    if isinstance(space, gym.spaces.Discrete):
        return TokenEmbedding(space, token_embed_dim)
    if isinstance(space, gym.spaces.Box):
        shape = space.shape
        if space.dtype == np.uint8 and len(shape) == 3 and shape[2] == 3:
            return MinigridCellEmbedding(shape[0], shape[1], cell_embed_dim, egocentric)
        if np.issubdtype(space.dtype, np.floating) and len(shape) == 1:
            return FloatFeatures(shape[0])
    raise ValueError(f"observation field {key!r} has unsupported space {space}; "
                     f"allowed: {ALLOWED_SPACES}")


class ObservationEncoder(nn.Module):
    """Embeds observations [T, B, ...] of ``observation_space`` into [T, B, D]."""

    def __init__(
        self,
        observation_space: gym.Space,
        d_model: int,
        hidden: int,
        cell_embed_dim: int,
        token_embed_dim: int,
        egocentric: bool = False,
    ) -> None:
        super().__init__()
        self.is_dict = isinstance(observation_space, gym.spaces.Dict)
        spaces = observation_space.spaces if self.is_dict else {SINGLE_KEY: observation_space}
        if not spaces:
            raise ValueError("observation space is an empty Dict; it needs at least one field")
        self.keys = list(spaces)
        self.fields = nn.ModuleList(
            _field_encoder(key, space, cell_embed_dim, token_embed_dim, egocentric)
            for key, space in spaces.items()
        )
        in_dim = sum(field.out_dim for field in self.fields)
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, d_model))

    def forward(self, obs: Obs) -> Tensor:
        """``obs``: dict of [T, B, ...] tensors (one tensor for a non-Dict space) -> [T, B, D]."""
        if not self.is_dict:
            obs = {SINGLE_KEY: obs}
        missing = [key for key in self.keys if key not in obs]
        if missing:
            raise ValueError(f"observation is missing field {missing[0]!r}; expected {self.keys}")
        dtype = self.mlp[0].weight.dtype
        fields = zip(self.keys, self.fields, strict=True)
        parts = [field(obs[key]).to(dtype) for key, field in fields]
        return self.mlp(torch.cat(parts, dim=-1))  # [T, B, sum of field widths] -> [T, B, D]
