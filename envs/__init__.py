"""The suite's memory tasks: Corridor, Portal and Instruction.

Every task exists twice with one behaviour: a batched torch implementation
(``make_batched``), the fast path for training, and a minigrid reference env
(``gymnasium.make("ExpireRL/<Task>-v0")``) for rendering, videos and
interoperability. Importing this package registers the gymnasium ids.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch

from envs.core import ACTION_NAMES, NUM_ACTIONS, BatchedEnv, check_device
from envs.corridor import BatchedCorridor, CorridorEnv
from envs.instruction import BatchedInstruction, InstructionEnv
from envs.portal import BatchedPortal, PortalEnv
from envs.reference import ReferenceEnv
from envs.vector import NumpyVectorEnv

# One row per task: batched class, reference class, gymnasium id.
TASKS: dict[str, tuple[type[BatchedEnv], type[ReferenceEnv], str]] = {
    "corridor": (BatchedCorridor, CorridorEnv, "ExpireRL/Corridor-v0"),
    "portal": (BatchedPortal, PortalEnv, "ExpireRL/Portal-v0"),
    "instruction": (BatchedInstruction, InstructionEnv, "ExpireRL/Instruction-v0"),
}


def _check_name(name: str) -> None:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")


def make_batched(
    name: str,
    num_envs: int,
    device: str | torch.device = "cpu",
    seed: int | None = None,
    **task_kwargs: Any,
) -> BatchedEnv:
    """Build the batched torch implementation of task ``name`` with ``num_envs`` envs."""
    _check_name(name)
    return TASKS[name][0](num_envs, device=check_device(device), seed=seed, **task_kwargs)


def make_reference(name: str, **kwargs: Any) -> ReferenceEnv:
    """Build the minigrid reference env of task ``name`` (same as ``gymnasium.make``)."""
    _check_name(name)
    return TASKS[name][1](**kwargs)


def make_vector(name: str, num_envs: int, **kwargs: Any) -> NumpyVectorEnv:
    """A gymnasium ``VectorEnv`` over the batched implementation (numpy in and out)."""
    render_mode = kwargs.pop("render_mode", None)
    if render_mode is not None:
        raise ValueError(
            f"the batched vector env does not render (render_mode={render_mode!r}); "
            "use gymnasium.make for a rendering env"
        )
    return NumpyVectorEnv(make_batched(name, num_envs, **kwargs))


def _vector_entry_point(name: str):
    def make(num_envs: int = 1, **kwargs: Any) -> NumpyVectorEnv:
        return make_vector(name, num_envs, **kwargs)

    return make


def register_envs() -> None:
    """Register the gymnasium ids (done on import; safe to call again)."""
    for name, (_, reference, env_id) in TASKS.items():
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point=reference,
            vector_entry_point=_vector_entry_point(name),
            disable_env_checker=False,
        )


register_envs()

__all__ = [
    "ACTION_NAMES",
    "NUM_ACTIONS",
    "TASKS",
    "BatchedEnv",
    "NumpyVectorEnv",
    "make_batched",
    "make_reference",
    "make_vector",
]
