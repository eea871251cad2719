"""The recurrent state of a memory policy, as a container of tensors a learner can handle blindly.

Shape legend: B env columns, M memory slots, L layers, D model dim.

Every tensor of a `State` has the env column as its first dimension, so selecting,
snapshotting, moving and checkpointing work the same whatever core made the state:

- LSTM: ``hidden``, ``cell`` [B, L, D].
- Transformer cores, per layer ``l``: ``memory_{l}`` [B, M_l, D] (cached layer inputs),
  ``memory_age_{l}`` [B, M_l] (steps from the memory to the next step), ``memory_valid_{l}``
  [B, M_l] (slot holds a memory). A zero-padded slot is empty (``valid`` false), which is
  what lets `State.cat` pad states of different widths.
- Tensors named ``derived_*`` are caches computed from the others with the parameters of the
  policy that made them (a transformer core's per-memory keys, values and spans, carried
  while the policy steps without autograd). They are only valid while those parameters are
  unchanged: `fresh` drops them, and the policy recomputes them when they are missing. A
  learner must call `fresh` on a state kept across a parameter update.

A state records the policy kind that made it, so a policy refuses a foreign one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

Tensor = torch.Tensor
Columns = int | slice | Sequence[int] | Tensor

DERIVED_PREFIX = "derived_"
"""Name prefix of the state tensors that are caches of the others (see `State.fresh`)."""


class State:
    """Named tensors of one policy kind, all indexed by env column along dim 0.

    States are values: every method returns a new `State` and never modifies this one
    (a policy's ``forward`` also returns a fresh state), so a snapshot taken with
    `clone` at a chunk boundary stays valid while the rollout goes on.
    """

    __slots__ = ("kind", "tensors")

    def __init__(self, kind: str, tensors: Mapping[str, Tensor]) -> None:
        sizes = {name: tensor.shape[0] if tensor.dim() > 0 else None for name, tensor in
                 tensors.items()}
        if len(set(sizes.values())) > 1 or None in sizes.values():
            raise ValueError(f"state tensors must share the env dimension 0, got sizes {sizes}")
        self.kind = kind
        self.tensors = dict(tensors)

    @property
    def num_envs(self) -> int:
        """Number of env columns B."""
        return next(iter(self.tensors.values())).shape[0]

    @property
    def device(self) -> torch.device:
        return next(iter(self.tensors.values())).device

    @property
    def nbytes(self) -> int:
        """Bytes held by the state's tensors."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def __len__(self) -> int:
        return self.num_envs

    def __getitem__(self, columns: Columns) -> State:
        """The state of env columns ``columns``: int, slice, index list, index or bool tensor."""
        if isinstance(columns, int):
            columns = slice(columns, columns + 1) if columns != -1 else slice(-1, None)
        elif isinstance(columns, Tensor):
            columns = columns.to(self.device)
        elif not isinstance(columns, slice):
            columns = torch.as_tensor(columns, dtype=torch.long, device=self.device)
        return State(self.kind, {name: t[columns] for name, t in self.tensors.items()})

    def select(self, columns: Columns) -> State:
        """Same as ``state[columns]``."""
        return self[columns]

    def fresh(self) -> State:
        """This state without its ``derived_*`` caches: what to carry across a change of the
        policy's parameters (the policy recomputes the caches from the rest)."""
        kept = {n: t for n, t in self.tensors.items() if not n.startswith(DERIVED_PREFIX)}
        return State(self.kind, kept)

    def to(self, device: torch.device | str) -> State:
        return State(self.kind, {name: t.to(device) for name, t in self.tensors.items()})

    def detach(self) -> State:
        return State(self.kind, {name: t.detach() for name, t in self.tensors.items()})

    def clone(self) -> State:
        """A detached copy that shares no storage with this state (a snapshot)."""
        return State(self.kind, {name: t.detach().clone() for name, t in self.tensors.items()})

    def state_dict(self) -> dict[str, Any]:
        """Plain data for ``torch.save``: ``{"kind": str, "tensors": {name: tensor}}``."""
        return {"kind": self.kind, "tensors": {n: t.detach() for n, t in self.tensors.items()}}

    @classmethod
    def from_state_dict(
        cls, state_dict: Mapping[str, Any], device: torch.device | str | None = None
    ) -> State:
        """Rebuild a state written by `state_dict`, optionally onto ``device``."""
        tensors = state_dict["tensors"]
        if device is not None:
            tensors = {name: t.to(device) for name, t in tensors.items()}
        return cls(state_dict["kind"], tensors)

    @classmethod
    def cat(cls, states: Iterable[State]) -> State:
        """Concatenate env columns; memory buffers of different widths are padded with
        empty (all-zero) slots along dim 1."""
        states = list(states)
        if not states:
            raise ValueError("State.cat needs at least one state")
        kinds = {s.kind for s in states}
        if len(kinds) > 1:
            raise ValueError(f"cannot concatenate states of different kinds: {sorted(kinds)}")
        tensors = {}
        for name in states[0].tensors:
            parts = [s.tensors[name] for s in states]
            if len({p.shape[2:] for p in parts}) > 1 or len({p.dim() for p in parts}) > 1:
                raise ValueError(f"state tensor {name!r} has incompatible shapes")
            if parts[0].dim() >= 2:
                width = max(p.shape[1] for p in parts)
                parts = [pad_slots(p, width) for p in parts]
            tensors[name] = torch.cat(parts, dim=0)
        return cls(states[0].kind, tensors)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{n}={tuple(t.shape)}" for n, t in self.tensors.items())
        return f"State(kind={self.kind!r}, {shapes})"


def pad_slots(tensor: Tensor, width: int) -> Tensor:
    """Pad dim 1 of ``tensor`` with zeros up to ``width``."""
    missing = width - tensor.shape[1]
    if missing == 0:
        return tensor
    padding = tensor.new_zeros((tensor.shape[0], missing, *tensor.shape[2:]))
    return torch.cat([tensor, padding], dim=1)
