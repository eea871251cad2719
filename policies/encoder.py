"""Observation encoder: embeds minigrid cells, integer tokens and feature vectors.

Shape legend: T time, B env columns, V view size, E embedding size, D model dim.

The observation space is a ``gymnasium.spaces.Dict`` or ``Tuple`` of fields, nested or not,
or one field on its own. Nested keys are flattened (:func:`flatten_space`): ``{"a": {"b":
...}}`` gives the field ``"a.b"``, a Tuple gives ``"0"``, ``"1"``, ..., a lone field is
``"observation"``. Each field is read according to its space:

- ``Box(0, 255, (V, V, 3), uint8)``: a minigrid window of (object, colour, state) cells;
  each cell is embedded as the sum of an object, a colour and a state embedding (vocabulary
  sizes from ``minigrid.core.constants``; the state table also covers the agent's
  direction 0..3, which minigrid stores in the state channel of the agent's cell). Every
  ``uint8`` Box of shape ``(H, W, 3)`` is read this way: flatten pixel frames of that shape
  to one axis first (``envs.gym_adapter`` does so for envs that are not minigrid envs).
- ``Discrete(n)``: an integer token (int64 [T, B]) with its own embedding table.
- ``MultiDiscrete(nvec)``: one token per component, embedded with one table that holds a
  block of ``nvec[i]`` rows for each component i; the K component embeddings are
  concatenated (K·E features).
- Any other ``Box`` (float, integer or bool, any rank) and ``MultiBinary``: flattened to a
  float feature vector; a ``uint8`` Box with bounds 0..255 (pixels) is divided by 255.

All embeddings are concatenated and go through a small MLP to the model width D.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from minigrid.core.constants import COLOR_TO_IDX, DIR_TO_VEC, OBJECT_TO_IDX, STATE_TO_IDX
from torch import nn

Tensor = torch.Tensor
Obs = Mapping[str, Any] | tuple | Tensor

NUM_OBJECTS = len(OBJECT_TO_IDX)
NUM_COLORS = len(COLOR_TO_IDX)
# The state channel holds door states, and the direction on the agent's own cell.
NUM_STATES = max(len(STATE_TO_IDX), len(DIR_TO_VEC))

SINGLE_KEY = "observation"
"""Field name used when the observation space is not a Dict or Tuple."""

ALLOWED_SPACES = (
    "Discrete(n), MultiDiscrete(nvec), MultiBinary(n), Box of any rank and numeric dtype "
    "(uint8 (H, W, 3) is read as minigrid (object, colour, state) cells), "
    "or a Dict or Tuple of these, nested or not"
)
"""The observation spaces the encoder reads, for error messages."""


def describe(space: gym.Space) -> str:
    """``space`` on one line (numpy prints the bounds of a Box of rank > 1 on several)."""
    return " ".join(str(space).split())


def _items(space: gym.spaces.Dict | gym.spaces.Tuple) -> Iterator[tuple[str, gym.Space]]:
    if isinstance(space, gym.spaces.Dict):
        return iter(space.spaces.items())
    return ((str(index), sub) for index, sub in enumerate(space.spaces))


def _is_container(space: gym.Space) -> bool:
    return isinstance(space, (gym.spaces.Dict, gym.spaces.Tuple))


def flatten_space(space: gym.Space) -> dict[str, gym.Space]:
    """The fields of ``space`` under their flat keys, in the space's order: the leaves of a
    nested Dict or Tuple (``"a.b"``, ``"0"``), or ``{SINGLE_KEY: space}`` for a lone field."""
    if not _is_container(space):
        return {SINGLE_KEY: space}
    fields: dict[str, gym.Space] = {}

    def add(container: gym.spaces.Dict | gym.spaces.Tuple, prefix: str) -> None:
        for key, sub in _items(container):
            name = prefix + key
            if _is_container(sub):
                add(sub, name + ".")
            elif name in fields:
                raise ValueError(
                    f"observation space {describe(space)} has two fields named {name!r}")
            else:
                fields[name] = sub

    add(space, "")
    return fields


def flatten_observation(space: gym.Space, obs: Any) -> dict[str, Any]:
    """``obs`` of ``space`` as a dict under the keys of :func:`flatten_space`. An observation
    that is already flat (a dict with those keys, as ``envs.gym_adapter`` hands out) is
    returned as it is."""
    if not _is_container(space):
        return {SINGLE_KEY: obs}
    if isinstance(obs, Mapping) and not any(
        isinstance(value, (Mapping, tuple, list)) for value in obs.values()
    ):
        return dict(obs)
    flat: dict[str, Any] = {}

    def add(container: gym.spaces.Dict | gym.spaces.Tuple, value: Any, prefix: str) -> None:
        for key, sub in _items(container):
            try:
                part = value[key] if isinstance(container, gym.spaces.Dict) else value[int(key)]
            except (KeyError, IndexError):
                raise ValueError(f"observation is missing field {prefix + key!r}") from None
            if _is_container(sub):
                add(sub, part, prefix + key + ".")
            else:
                flat[prefix + key] = part

    add(space, obs, "")
    return flat


def is_cell_image(space: gym.Space) -> bool:
    """Whether the encoder reads ``space`` as a window of minigrid cells (uint8 H x W x 3)."""
    shape = getattr(space, "shape", None)
    return (isinstance(space, gym.spaces.Box) and space.dtype == np.uint8
            and shape is not None and len(shape) == 3 and shape[2] == 3)  # fmt: skip


def is_supported_field(space: gym.Space) -> bool:
    """Whether the encoder reads a (non-container) field of this space."""
    if isinstance(space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)):
        return True
    return isinstance(space, gym.spaces.Box) and space.dtype.kind in "biuf"


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


class _LookupRows(torch.autograd.Function):
    """``weight[index]`` whose weight gradient is one ``index_add_``: the same sums in the
    same order as torch's embedding backward, which on CPU adds index by index in a slower
    loop (about 8x index_add_'s time on the cells of a corridor minibatch: docs/experiments.md,
    Performance)."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        ctx.num_rows = weight.shape[0]
        return nn.functional.embedding(index, weight)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (index,) = ctx.saved_tensors
        grad = grad.reshape(-1, grad.shape[-1])  # [K, E] one row per looked-up index
        weight_grad = grad.new_zeros(ctx.num_rows, grad.shape[1])
        return weight_grad.index_add_(0, index.reshape(-1), grad), None


class Embedding(nn.Embedding):
    """`nn.Embedding` (same parameters, same numbers) with a faster weight gradient on CPU
    (see `_LookupRows`); on other devices, and with any of nn.Embedding's options, torch's
    own backward."""

    def forward(self, index: Tensor) -> Tensor:
        plain = (self.padding_idx is None and self.max_norm is None
                 and not self.scale_grad_by_freq and not self.sparse)
        if (plain and self.weight.requires_grad and index.device.type == "cpu"
                and torch.is_grad_enabled()):
            return _LookupRows.apply(self.weight, index)
        return super().forward(index)


class MinigridCellEmbedding(nn.Module):
    """[T, B, H, W, 3] uint8 cells -> [T, B, H·W·E]: summed object, colour, state embeddings
    (of the window turned to the agent's heading first, if ``egocentric``)."""

    def __init__(self, height: int, width: int, embed_dim: int, egocentric: bool = False) -> None:
        super().__init__()
        if egocentric and height != width:
            raise ValueError(f"an egocentric view needs a square window, got {height} x {width}")
        self.egocentric = egocentric
        self.object = Embedding(NUM_OBJECTS, embed_dim)
        self.color = Embedding(NUM_COLORS, embed_dim)
        self.state = Embedding(NUM_STATES, embed_dim)
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
        self.embedding = Embedding(int(space.n), embed_dim)
        self.out_dim = embed_dim

    def forward(self, token: Tensor) -> Tensor:
        return self.embedding(token.long() - self.start)


class MultiTokenEmbedding(nn.Module):
    """[T, B, *nvec.shape] tokens of a MultiDiscrete(nvec, start) field -> [T, B, K·E]: one
    embedding per component (K of them), from one table with a block of rows per component."""

    def __init__(self, space: gym.spaces.MultiDiscrete, embed_dim: int) -> None:
        super().__init__()
        sizes = torch.as_tensor(space.nvec.flatten(), dtype=torch.long)  # [K]
        # Component i's token t is row offsets[i] + t - start[i] of the shared table.
        offsets = torch.cumsum(sizes, 0) - sizes
        start = torch.as_tensor(space.start.flatten(), dtype=torch.long)
        self.register_buffer("shift", offsets - start, persistent=False)
        self.embedding = Embedding(int(sizes.sum()), embed_dim)
        self.out_dim = len(sizes) * embed_dim

    def forward(self, tokens: Tensor) -> Tensor:
        tokens = tokens.long().flatten(start_dim=2)  # [T, B, *nvec.shape] -> [T, B, K]
        return self.embedding(tokens + self.shift).flatten(start_dim=2)  # -> [T, B, K·E]


class FloatFeatures(nn.Module):
    """[T, B, *shape] numbers -> [T, B, F] flattened features (F the product of ``shape``),
    divided by ``scale`` if given; the encoder casts them to the model's dtype."""

    def __init__(self, shape: tuple[int, ...], scale: float | None = None) -> None:
        super().__init__()
        self.out_dim = int(np.prod(shape))
        self.scale = scale

    def forward(self, features: Tensor) -> Tensor:
        features = features.reshape(*features.shape[:2], self.out_dim)  # [T, B, *shape] -> [T,B,F]
        if self.scale is not None:
            features = features.float() / self.scale
        return features


def _is_pixels(space: gym.spaces.Box) -> bool:
    return space.dtype == np.uint8 and bool((space.low == 0).all() and (space.high == 255).all())


def _field_encoder(
    key: str, space: gym.Space, cell_embed_dim: int, token_embed_dim: int, egocentric: bool
) -> nn.Module:
    if isinstance(space, gym.spaces.Discrete):
        return TokenEmbedding(space, token_embed_dim)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return MultiTokenEmbedding(space, token_embed_dim)
    if is_cell_image(space):
        shape = space.shape
        return MinigridCellEmbedding(shape[0], shape[1], cell_embed_dim, egocentric)
    if isinstance(space, gym.spaces.MultiBinary):
        return FloatFeatures(space.shape)
    if is_supported_field(space):
        return FloatFeatures(space.shape, 255.0 if _is_pixels(space) else None)
    what = "unsupported observation space" if key == SINGLE_KEY else (
        f"observation field {key!r} has unsupported space")
    raise ValueError(f"{what} {describe(space)}; allowed: {ALLOWED_SPACES}")


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
        self.observation_space = observation_space
        spaces = flatten_space(observation_space)
        if not spaces:
            raise ValueError(f"observation space {describe(observation_space)} has no field; "
                             "it needs at least one")  # fmt: skip
        self.keys = list(spaces)
        self.fields = nn.ModuleList(
            _field_encoder(key, space, cell_embed_dim, token_embed_dim, egocentric)
            for key, space in spaces.items()
        )
        in_dim = sum(field.out_dim for field in self.fields)
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, d_model))

    def forward(self, obs: Obs) -> Tensor:
        """``obs``: [T, B, ...] tensors, nested as the observation space (one tensor for a lone
        field) or flat under the keys of :func:`flatten_space` -> [T, B, D]."""
        obs = flatten_observation(self.observation_space, obs)
        missing = [key for key in self.keys if key not in obs]
        if missing:
            raise ValueError(f"observation is missing field {missing[0]!r}; expected {self.keys}")
        dtype = self.mlp[0].weight.dtype
        fields = zip(self.keys, self.fields, strict=True)
        parts = [field(obs[key]).to(dtype) for key, field in fields]
        return self.mlp(torch.cat(parts, dim=-1))  # [T, B, sum of field widths] -> [T, B, D]


class _FieldTarget:
    """How one observation field is reconstructed: the width of its slice of the decoder's
    output and its loss against the observed value (a mean over the field's elements)."""

    def __init__(self, space: gym.Space) -> None:
        self.kind = ""
        self.width = 0
        if is_cell_image(space):  # object, colour and state classes of every cell
            self.kind, self.cells = "cells", int(np.prod(space.shape[:2]))
            self.classes = (NUM_OBJECTS, NUM_COLORS, NUM_STATES)
            self.width = self.cells * sum(self.classes)
        elif isinstance(space, gym.spaces.Discrete):
            self.kind, self.start, self.width = "token", int(space.start), int(space.n)
        elif isinstance(space, gym.spaces.MultiDiscrete):
            self.kind = "tokens"
            self.sizes = [int(n) for n in space.nvec.flatten()]
            self.starts = [int(s) for s in space.start.flatten()]
            self.width = sum(self.sizes)
        elif isinstance(space, gym.spaces.MultiBinary):
            self.kind, self.width = "binary", int(np.prod(space.shape))
        elif isinstance(space, gym.spaces.Box):
            low, high = space.low.astype(np.float64), space.high.astype(np.float64)
            if np.isfinite(low).all() and np.isfinite(high).all():  # else: not reconstructed
                self.kind, self.width = "box", int(np.prod(space.shape))
                span = np.where(high > low, high - low, 1.0)
                self.low = torch.as_tensor(low.flatten(), dtype=torch.float32)
                self.scale = torch.as_tensor(span.flatten(), dtype=torch.float32)

    def loss(self, out: Tensor, value: Tensor) -> Tensor:
        """``out`` [N, width] decoder outputs, ``value`` [N, ...] the observed field."""
        value = value.reshape(out.shape[0], -1)
        if self.kind == "cells":
            cells = value.long().view(-1, self.cells, 3)
            logits = out.view(-1, self.cells, sum(self.classes))
            parts = logits.split(self.classes, dim=-1)
            losses = [nn.functional.cross_entropy(part.flatten(0, 1), cells[..., c].flatten())
                      for c, part in enumerate(parts)]  # fmt: skip
            return torch.stack(losses).mean()
        if self.kind == "token":
            return nn.functional.cross_entropy(out, value[:, 0].long() - self.start)
        if self.kind == "tokens":
            parts = out.split(self.sizes, dim=-1)
            losses = [nn.functional.cross_entropy(part, value[:, k].long() - self.starts[k])
                      for k, part in enumerate(parts)]  # fmt: skip
            return torch.stack(losses).mean()
        if self.kind == "binary":
            return nn.functional.binary_cross_entropy_with_logits(out, value.to(out.dtype))
        target = (value.to(out.dtype) - self.low.to(out)) / self.scale.to(out)
        return nn.functional.mse_loss(out, target)


class ObservationDecoder(nn.Module):
    """Reconstructs each step's observation from features [T, B, D]: an auxiliary loss that
    makes the features, and so the memories built from them, hold what was seen (Pleines et
    al., "Memory Gym", 2024, needed it for Transformer-XL on their finite tasks).

    Per field: cross-entropy for minigrid cells (object, colour, state), ``Discrete`` and
    ``MultiDiscrete`` tokens; binary cross-entropy for ``MultiBinary``; mean squared error for
    a ``Box`` with finite bounds, scaled to [0, 1] by them. A ``Box`` with an infinite bound
    has no scale to compare at and is not reconstructed. The loss is the mean over the fields
    reconstructed (0 if none is)."""

    def __init__(self, observation_space: gym.Space, d_model: int, hidden: int) -> None:
        super().__init__()
        self.observation_space = observation_space
        targets = {key: _FieldTarget(space) for key, space in
                   flatten_space(observation_space).items()}  # fmt: skip
        self.targets = {key: target for key, target in targets.items() if target.width}
        self.widths = [target.width for target in self.targets.values()]
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.ReLU(),
                                 nn.Linear(hidden, max(sum(self.widths), 1)))  # fmt: skip

    def loss(self, features: Tensor, obs: Obs) -> Tensor:
        """The reconstruction loss of ``obs`` [T, B, ...] from ``features`` [T, B, D]."""
        if not self.targets:
            return features.new_zeros(())
        obs = flatten_observation(self.observation_space, obs)
        out = self.mlp(features.flatten(0, 1))  # [T·B, sum of widths]
        parts = out.split(self.widths, dim=-1)
        losses = [target.loss(part, obs[key].flatten(0, 1))
                  for (key, target), part in zip(self.targets.items(), parts, strict=True)]
        return torch.stack(losses).mean()
