"""Shared machinery of the batched (pure torch) task implementations.

Shape legend: B num_envs, V view size (odd), C = 3 channels (object, colour, state).

Observations follow minigrid's encoding: every cell of a top-down ``V x V``
window centred on the agent is an ``(object, colour, state)`` triple of
``uint8``, indexed ``image[i, j]`` for the cell at ``(x - V//2 + i, y - V//2 + j)``
(minigrid's ``[x, y]`` order). The agent's own cell holds
``(agent, red, direction)`` as in minigrid's full-grid encoding, so the agent's
heading is part of the picture. Cells outside the grid are ``unseen``.
"""

from __future__ import annotations

import abc
import ast
import dataclasses
import inspect
import itertools
import textwrap
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX

Tensor = torch.Tensor
Obs = dict[str, Tensor]
StepResult = tuple[Obs, Tensor, Tensor, Tensor, dict[str, Tensor]]

# Actions shared by every task (minigrid's ids for the first three actions).
LEFT, RIGHT, FORWARD = 0, 1, 2
NUM_ACTIONS = 3
ACTION_NAMES = ("left", "right", "forward")

COLOR_NAMES: tuple[str, ...] = tuple(COLOR_TO_IDX)  # red, green, blue, purple, yellow, grey
NUM_COLORS = len(COLOR_NAMES)
UNSEEN = OBJECT_TO_IDX["unseen"]
EMPTY = OBJECT_TO_IDX["empty"]
WALL = OBJECT_TO_IDX["wall"]
DOOR = OBJECT_TO_IDX["door"]
BALL = OBJECT_TO_IDX["ball"]
AGENT = OBJECT_TO_IDX["agent"]
GREY = COLOR_TO_IDX["grey"]
RED = COLOR_TO_IDX["red"]
CLOSED = STATE_TO_IDX["closed"]

# Directions as in minigrid: 0 east (+x), 1 south (+y), 2 west (-x), 3 north (-y).
EAST, SOUTH, WEST, NORTH = 0, 1, 2, 3
DIR_TO_VEC = ((1, 0), (0, 1), (-1, 0), (0, -1))


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """Return ``value`` as an int, or raise a ValueError naming ``name`` and its range."""
    allowed = f"[{low}, {high}]" if high is not None else f">= {low}"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be an integer {allowed}, got {value}")
    return int(value)


def field_docstrings(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass, whitespace folded (the fields' help)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, following in itertools.pairwise(body):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):  # fmt: skip
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


class TaskConfig:
    """Base of the tasks' parameter dataclasses (`CorridorConfig`, ...).

    A task's parameters are declared once, as the fields of its dataclass with a
    docstring under each: the batched env, the reference env (``gymnasium.make``
    keyword arguments), the training and evaluation flags (``--length`` ...) and
    the stored run config all read them from there. Construction validates every
    value (a ValueError names the parameter and what is allowed) and fills in the
    defaults that depend on other parameters (e.g. a time limit that grows with
    the length).
    """

    task: ClassVar[str]
    """The task's name (``corridor``, ...)."""

    @classmethod
    def parameters(cls) -> tuple[str, ...]:
        """The parameter names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    @classmethod
    def split(cls, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``kwargs`` as (this task's parameters, everything else)."""
        names = cls.parameters()
        return ({k: v for k, v in kwargs.items() if k in names},
                {k: v for k, v in kwargs.items() if k not in names})  # fmt: skip

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> TaskConfig:
        """The validated parameters; an unknown name is a ValueError listing the known ones."""
        params, unknown = cls.split(kwargs)
        if unknown:
            raise ValueError(f"{next(iter(unknown))!r} is not a parameter of the {cls.task} "
                             f"task (its parameters: {', '.join(cls.parameters())})")  # fmt: skip
        return cls(**params)

    def to_dict(self) -> dict[str, Any]:
        """Every parameter's resolved value (plain data, e.g. for config.json)."""
        return {name: getattr(self, name) for name in self.parameters()}

    def _set(self, name: str, value: Any) -> None:
        """Store a validated value on the frozen dataclass (in ``__post_init__``)."""
        object.__setattr__(self, name, value)


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device, or a ValueError naming it and what is available."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r}: no CUDA device is available (use 'cpu')")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA "
                         "device(s) are available")  # fmt: skip
    return device


def check_view_size(view_size: Any) -> int:
    """Validate a view size: odd, between 3 and 15."""
    view_size = check_int("view_size", view_size, 3, 15)
    if view_size % 2 == 0:
        raise ValueError(f"view_size must be odd (3, 5, ..., 15), got {view_size}")
    return view_size


CELL_HIGH = np.array([max(OBJECT_TO_IDX.values()), max(COLOR_TO_IDX.values()),
                      max(max(STATE_TO_IDX.values()), len(DIR_TO_VEC) - 1)], dtype=np.uint8)
"""The largest (object, colour, state) of a cell; the state channel of the agent's own cell
holds its heading, 0..3."""


def image_space(view_size: int) -> gym.spaces.Box:
    """The observation space of one agent-centred ``V x V x 3`` minigrid window: cell codes,
    bounded by `CELL_HIGH` (not pixels, and not mistaken for them by image-checking tools)."""
    high = np.broadcast_to(CELL_HIGH, (view_size, view_size, 3))
    return gym.spaces.Box(np.zeros_like(high), high, dtype=np.uint8)


def window_coords(x: Tensor, y: Tensor, view_size: int) -> tuple[Tensor, Tensor]:
    """Grid coordinates of every cell of the window centred on ``(x, y)``.

    ``x, y``: [B] -> (xs, ys): [B, V, V], ``xs[b, i, j] = x[b] - V//2 + i``.
    """
    offsets = torch.arange(view_size, device=x.device) - view_size // 2  # [V]
    xs = x[:, None, None] + offsets[None, :, None]  # [B, V, 1]
    ys = y[:, None, None] + offsets[None, None, :]  # [B, 1, V]
    return xs.expand(-1, -1, view_size), ys.expand(-1, view_size, -1)


def encode_cells(obj: Tensor, color: Tensor, state: Tensor, agent_dir: Tensor) -> Tensor:
    """Stack per-cell triples [B, V, V] into a uint8 image [B, V, V, 3] with the agent drawn."""
    image = torch.stack((obj, color, state), dim=-1).to(torch.uint8)  # [B, V, V, 3]
    centre = image.shape[1] // 2
    image[:, centre, centre, 0] = AGENT
    image[:, centre, centre, 1] = RED
    image[:, centre, centre, 2] = agent_dir.to(torch.uint8)
    return image


class BatchedEnv(abc.ABC):
    """Base class of the batched tasks: ``num_envs`` copies stepped at once as tensors.

    Subclasses keep their whole state as tensors with ``num_envs`` first and
    implement ``_new_episodes`` (the per-episode state of ``count`` fresh
    episodes), ``_apply`` (one step of the dynamics) and ``_observe``.

    Starting episodes in the envs that just finished: on CPU only those envs
    draw fresh episodes (found with ``nonzero``, free there); on an
    accelerator (``sync_free``) every env draws one and ``torch.where`` keeps
    the running ones, so that no step waits on the host.

    Finished environments reset inside the same ``step``: the returned
    observation is the new episode's first one, and ``info`` holds
    ``success``, ``episode_return`` and ``episode_length`` (valid where
    ``terminated | truncated``) plus task-specific per-episode counters. With
    ``keep_final_obs = True`` it also holds ``final_obs``, the last observation
    of the episodes that ended (used by the gymnasium vector wrapper).
    """

    name: str = ""
    keep_final_obs: bool = False
    curriculum_parameter: str | None = None
    """The task parameter a training curriculum grows up to (None: no curriculum); such a
    task also has ``curriculum_stage`` and ``set_curriculum_stage(stage, full_fraction)``."""
    stage_restarts_episodes: bool = False
    """Whether a new curriculum stage replaces the running episodes (so a learner's memory of
    them must go too) rather than applying to the next ones."""
    score_counter: str | None = None
    """The per-episode counter the task is scored by against its oracle (e.g. Portal's
    ``goals``); None: the success rate."""

    def __init__(self, num_envs: int, max_steps: int, device: str | torch.device, seed: int | None):
        self.num_envs = check_int("num_envs", num_envs, 1)
        self.max_steps = max_steps
        self.device = torch.device(device)
        # Whether finished envs restart without reading anything back to the host.
        self.sync_free = self.device.type != "cpu"
        self.single_action_space = gym.spaces.Discrete(NUM_ACTIONS)
        self.generator = torch.Generator(device=self.device)
        self._seed(seed)
        self.step_count = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self.episode_return = torch.zeros(self.num_envs, device=self.device)
        self._start_episodes(None)

    # -- the subclass's part ------------------------------------------------
    single_observation_space: gym.spaces.Dict

    @abc.abstractmethod
    def _new_episodes(self, count: int) -> dict[str, Tensor]:
        """Per-episode state of ``count`` fresh episodes: attribute name -> [count, ...]."""

    @abc.abstractmethod
    def _apply(self, actions: Tensor) -> tuple[Tensor, Tensor]:
        """Advance the dynamics by one step: (reward [B] float, terminated [B] bool)."""

    @abc.abstractmethod
    def _observe(self) -> Obs:
        """The current observation of every env."""

    def _final_observe(self) -> Obs:
        """The observation of an episode's last state (before the reset); see ``step``."""
        return self._observe()

    @abc.abstractmethod
    def _episode_info(self, done: Tensor) -> dict[str, Tensor]:
        """Per-episode statistics read before the reset (``success`` and task counters)."""

    @abc.abstractmethod
    def layout(self, index: int) -> dict[str, Any]:
        """Env ``index``'s current episode as plain data (see the reference env's reset)."""

    @abc.abstractmethod
    def oracle_actions(self) -> Tensor:
        """Actions [B] of the scripted oracle, which reads the hidden layout."""

    # -- the common part -----------------------------------------------------
    def _seed(self, seed: int | None) -> None:
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))

    def rand_int(self, low: int | Tensor, high: int | Tensor, shape: tuple[int, ...]) -> Tensor:
        """Uniform integers in ``[low, high]`` (inclusive) from the env's generator."""
        u = torch.rand(shape, generator=self.generator, device=self.device)
        return (low + (u * (high - low + 1)).long().clamp_max(high - low)).long()

    def reset(self, seed: int | None = None, desync: bool = False) -> Obs:
        """Start a new episode in every env and return the first observations.

        ``desync=True`` starts each env's first episode at a random point of
        its time limit so that envs finish at different times (a learner's
        option; an episode started that way may be truncated early).
        """
        if seed is not None:
            self._seed(seed)
        self._start_episodes(None)
        self.episode_return.zero_()
        if desync:
            self.step_count = self.rand_int(0, self.max_steps - 1, (self.num_envs,))
        else:
            self.step_count.zero_()
        return self._observe()

    def _start_episodes(self, done: Tensor | None) -> None:
        """Start fresh episodes in every env (``done=None``) or where ``done`` [B] is true."""
        if done is None:
            for key, value in self._new_episodes(self.num_envs).items():
                setattr(self, key, value)
        elif not self.sync_free:
            index = done.nonzero().squeeze(1)  # [n]
            if len(index) > 0:
                for key, value in self._new_episodes(len(index)).items():
                    getattr(self, key)[index] = value
                self.episode_return[index] = 0.0
                self.step_count[index] = 0
        else:
            for key, value in self._new_episodes(self.num_envs).items():
                keep = done.view(-1, *([1] * (value.dim() - 1)))
                setattr(self, key, torch.where(keep, value, getattr(self, key)))
            self.episode_return.masked_fill_(done, 0.0)
            self.step_count.masked_fill_(done, 0)

    def step(self, actions: Tensor) -> StepResult:
        """Step every env with ``actions`` [B] (ints in [0, 3))."""
        actions = torch.as_tensor(actions, device=self.device)
        reward, terminated = self._apply(actions)
        self.step_count += 1
        truncated = (self.step_count >= self.max_steps) & ~terminated
        done = terminated | truncated
        self.episode_return += reward
        info = self._episode_info(done)
        info["episode_return"] = self.episode_return.clone()
        info["episode_length"] = self.step_count.clone()
        if self.keep_final_obs:
            info["final_obs"] = self._final_observe()
        self._start_episodes(done)
        return self._observe(), reward, terminated, truncated, info

    def state_dict(self) -> dict[str, Any]:
        """The whole state (every tensor and the generator), to resume exactly."""
        tensors = {
            key: value.clone() for key, value in vars(self).items() if isinstance(value, Tensor)
        }
        return {"tensors": tensors, "generator": self.generator.get_state()}

    def load_state_dict(self, data: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` of an env built with the same settings."""
        for key, value in data["tensors"].items():
            current = getattr(self, key, None)
            if isinstance(current, Tensor) and current.shape[1:] != value.shape[1:]:
                raise ValueError(f"env state {key!r} does not fit this env")
            setattr(self, key, value.to(self.device))
        self.generator.set_state(data["generator"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_envs={self.num_envs}, device={self.device})"


SEGMENT_HEIGHT = 5  # rows of one segment block: wall, arm, corridor, arm, wall


def segment_cells(
    lx: Tensor,
    ly: Tensor,
    length: int,
    wall_color: Tensor | int,
    end_object: int,
    end_state: int,
    top_color: Tensor,
    bottom_color: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Cells of one segment block, the geometry shared by Corridor and Portal.

    A block is ``length + 3`` cells wide and 5 rows high: walls around, a
    corridor on row 2 from ``x = 1`` (the start) to ``x = length + 1`` (the
    end), and two objects at the end, one in the row above (``top``, reached
    with ``left``) and one below (``bottom``, reached with ``right``).

    ``lx, ly``: [B, V, V] coordinates inside the block; ``wall_color``,
    ``top_color``, ``bottom_color``: [B], [B, V, V] or scalars. Returns (object, colour,
    state), each [B, V, V]; cells left or right of the block are ``unseen``.
    """

    def per_env(value: Tensor | int) -> Tensor | int:
        if isinstance(value, Tensor) and value.dim() == 1:
            return value[:, None, None]  # [B] -> [B, 1, 1]
        return value

    end_x = length + 1
    inside = (lx >= 0) & (lx <= end_x + 1) & (ly >= 0) & (ly < SEGMENT_HEIGHT)
    floor = (ly == 2) & (lx >= 1) & (lx <= end_x)
    top = (lx == end_x) & (ly == 1)
    bottom = (lx == end_x) & (ly == 3)
    zeros = torch.zeros_like(lx)
    obj = torch.where(floor, EMPTY, WALL)
    obj = torch.where(top | bottom, end_object, obj)
    obj = torch.where(inside, obj, UNSEEN)
    color = torch.where(floor, zeros, zeros + per_env(wall_color))
    color = torch.where(top, zeros + per_env(top_color), color)
    color = torch.where(bottom, zeros + per_env(bottom_color), color)
    color = torch.where(inside, color, zeros)
    state = torch.where(top | bottom, end_state, zeros)
    return obj, color, state


def segment_boundaries(length: int, half: int) -> list[int]:
    """Positions along a segment where the agent's window changes.

    The window of half-width ``half`` at ``position`` (0 = start, ``length`` =
    end) differs from the one before it only within ``half`` cells of either
    end; in between every window looks alike. So
    ``torch.bucketize(position, boundaries, right=True)`` numbers the distinct
    windows, and observations are looked up in a table built once (one row
    per bucket, :func:`bucket_representatives`): a step costs a few tensor ops
    whatever the view size.
    """
    return sorted(
        {*range(1, half + 2), *range(length - half, length + 1)} & {*range(1, length + 1)}
    )


def bucket_representatives(boundaries: list[int]) -> list[int]:
    """One position in each bucket of :func:`segment_boundaries` (its first)."""
    return [0, *boundaries]
