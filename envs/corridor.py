"""Corridor: carry one colour from the start of a long corridor to its junction.

Both implementations live here: :class:`BatchedCorridor` (torch, the fast
path) and :class:`CorridorEnv` (minigrid, registered as ``ExpireRL/Corridor-v0``).
Shape legend: B num_envs, V view size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import torch
from minigrid.core.world_object import Ball, Wall

from envs.core import (
    BALL,
    COLOR_NAMES,
    EAST,
    FORWARD,
    GREY,
    LEFT,
    NORTH,
    NUM_COLORS,
    RIGHT,
    SEGMENT_HEIGHT,
    SOUTH,
    BatchedEnv,
    Obs,
    TaskConfig,
    Tensor,
    bucket_representatives,
    check_int,
    check_view_size,
    encode_cells,
    image_space,
    segment_boundaries,
    segment_cells,
    window_coords,
)
from envs.reference import RGB, ReferenceEnv, build_segment

CORRIDOR_ROW = 2  # y of the corridor; the cue stands above the start, at (1, 1)


@dataclass(frozen=True)
class CorridorConfig(TaskConfig):
    """The corridor's parameters, validated (shared by both implementations and the CLI)."""

    task: ClassVar[str] = "corridor"
    length: int = 1000
    """Cells between the cue and the junction."""
    num_colors: int = 2
    """Number of cue colours, 2..6."""
    view_size: int = 3
    """Side of the agent's square view (odd, 3..15)."""
    max_steps: int | None = None
    """Time limit of an episode (default 4 x length + 20, well above a random walk's)."""
    min_length: int | None = None
    """Random lengths: each episode's length drawn log-uniformly from [min_length, length]
    (default: the full length, no random lengths)."""

    def __post_init__(self) -> None:
        self._set("length", check_int("length", self.length, 1))
        self._set("num_colors", check_int("num_colors", self.num_colors, 2, NUM_COLORS))
        self._set("view_size", check_view_size(self.view_size))
        # A uniform policy needs 3 * length steps on average (one step in three
        # moves forward): 4 * length + 20 leaves it room at every length.
        default = 4 * self.length + 20
        max_steps = default if self.max_steps is None else self.max_steps
        self._set("max_steps", check_int("max_steps", max_steps, self.length + 1))
        # The time limit stays that of the longest. min_length is at least the view size, so
        # that no window shows both the cue and the junction.
        min_length = self.length if self.min_length is None else self.min_length
        low = min(self.view_size, self.length)
        self._set("min_length", check_int("min_length", min_length, low, self.length))

    @property
    def shortest_longest(self) -> int:
        """The least a length curriculum may cap the episodes at: ``min_length`` for a
        random-length corridor, else the view size (no window may show cue and junction)."""
        return self.min_length if self.min_length < self.length else min(self.view_size,
                                                                          self.length)

    def draw_lengths(self, uniforms: Tensor, longest: Tensor) -> Tensor:
        """Episode lengths for ``uniforms`` in [0, 1): log-uniform over [min_length,
        ``longest``], every integer length from the bucket it rounds down from."""
        low = math.log(self.min_length)
        high = torch.log(longest.to(uniforms.device, uniforms.dtype) + 1.0)
        lengths = torch.exp(low + uniforms * (high - low)).long()
        return torch.minimum(lengths.clamp_min(self.min_length), longest)

    def check_layout(self, layout: dict[str, Any]) -> dict[str, int]:
        """Validate a layout from :meth:`BatchedCorridor.layout` against this config."""
        try:
            values = {key: int(layout[key]) for key in ("length", "cue", "top", "bottom")}
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"corridor layout needs integer length, cue, top, bottom: {error}"
            ) from None
        if not self.min_length <= values["length"] <= self.length:
            allowed = (
                f"the env's length {self.length}" if self.min_length == self.length
                else f"the env's range [{self.min_length}, {self.length}]"
            )
            raise ValueError(f"layout length {values['length']} does not match {allowed}")
        cue, top, bottom = values["cue"], values["top"], values["bottom"]
        in_range = all(0 <= c < self.num_colors for c in (cue, top, bottom))
        if not in_range or top == bottom or cue not in (top, bottom):
            raise ValueError(
                f"corridor layout needs two distinct colours in [0, {self.num_colors}) at the "
                f"ends with the cue among them, got {values}"
            )
        return values


class BatchedCorridor(BatchedEnv):
    """The corridor task for ``num_envs`` envs at once, as torch tensors.

    See :class:`CorridorEnv` for the task. State per env: position along the
    corridor, heading, the cue colour and the two end colours (a few integers:
    memory does not grow with the length).
    """

    config_class = CorridorConfig
    name = "corridor"
    curriculum_parameter = "length"

    def __init__(
        self,
        num_envs: int,
        device: str | torch.device = "cpu",
        seed: int | None = None,
        **task_kwargs: Any,
    ):
        self.config = CorridorConfig.from_kwargs(**task_kwargs)
        self.length = self.config.length
        self.view_size = self.config.view_size
        self.single_observation_space = gym.spaces.Dict({"image": image_space(self.view_size)})
        self.device = torch.device(device)
        boundaries = segment_boundaries(self.length, self.view_size // 2)
        self.boundaries = torch.tensor(boundaries, device=self.device)
        self.kind_keys, self.kind_turns = self._episode_kinds()
        # The longest episode drawn (a length curriculum lowers it, see `set_longest`); a
        # tensor, so that it is part of the env's state and costs no host sync.
        self.longest = torch.tensor(self.length, device=self.device)
        # The share of random-length episodes that get exactly `longest` (see `set_longest`).
        self.full_fraction = torch.tensor(0.0, device=self.device)
        super().__init__(num_envs, self.config.max_steps, device, seed)
        self.table = self._build_table()

    def _episode_kinds(self) -> tuple[Tensor, Tensor]:
        """Every possible episode (colour key, right turn): cue, other colour, cue on top or not."""
        colors = self.config.num_colors
        keys, turns = [], []
        for cue in range(colors):
            for other in range(colors):
                if other != cue:
                    keys += [
                        (cue * colors + cue) * colors + other,
                        (cue * colors + other) * colors + cue,
                    ]
                    turns += [LEFT, RIGHT]
        return torch.tensor(keys, device=self.device), torch.tensor(turns, device=self.device)

    def _new_episodes(self, count: int) -> dict[str, Tensor]:
        # Uniform over the kinds = uniform cue, uniform other colour, fair coin for the side.
        draws = torch.rand(count, generator=self.generator, device=self.device)
        kinds = len(self.kind_keys)
        kind = (draws * kinds).long().clamp_max(kinds - 1)
        if self.config.min_length < self.length:  # only then: fixed lengths keep their stream
            uniforms = torch.rand(count, generator=self.generator, device=self.device)
            episode_length = self.config.draw_lengths(uniforms, self.longest)
            # The draws that would have been the shortest become the longest.
            full = uniforms < self.full_fraction
            episode_length = torch.where(full, self.longest, episode_length)
        else:
            episode_length = self.longest.expand_as(kind).clone()
        return {
            "position": torch.zeros_like(kind),
            "episode_length": episode_length,
            "color_key": self.kind_keys[kind],
            "table_base": self.kind_keys[kind] * (len(self.boundaries) + 1),
            "right_turn": self.kind_turns[kind],
        }

    def set_longest(self, longest: int, full_fraction: float = 0.0) -> None:
        """Draw the next episodes' lengths up to ``longest`` only (``min_length`` ..
        ``length``; a fixed-length corridor then has exactly that length): a training
        curriculum. With random lengths, a share ``full_fraction`` of the episodes is
        exactly ``longest`` long (no extra random draws). Episodes under way keep theirs."""
        check_int("longest", longest, self.config.shortest_longest, self.length)
        if not 0.0 <= full_fraction <= 1.0:
            raise ValueError(f"full_fraction must be in [0, 1], got {full_fraction}")
        self.longest = torch.tensor(int(longest), device=self.device)
        self.full_fraction = torch.tensor(float(full_fraction), device=self.device)

    @property
    def curriculum_stage(self) -> int:
        return int(self.longest)

    def set_curriculum_stage(self, stage: int, full_fraction: float = 0.0) -> None:
        self.set_longest(stage, full_fraction)

    # The colours are kept packed in one key (the table lookup needs only it).
    @property
    def cue(self) -> Tensor:
        return self.color_key // self.config.num_colors**2

    @property
    def top(self) -> Tensor:
        return self.color_key // self.config.num_colors % self.config.num_colors

    @property
    def bottom(self) -> Tensor:
        return self.color_key % self.config.num_colors

    def _apply(self, actions: Tensor) -> tuple[Tensor, Tensor]:
        terminated = (self.position == self.episode_length) & (actions != FORWARD)
        self.position += actions == FORWARD
        # Forward at the junction bumps into the wall.
        self.position = torch.minimum(self.position, self.episode_length)
        self.success = terminated & (actions == self.right_turn)
        self.actions, self.terminated = actions, terminated
        return self.success.float(), terminated

    def _render(self, position: Tensor, cue: Tensor, top: Tensor, bottom: Tensor) -> Tensor:
        """The window [K, V, V, 3] at ``position`` [K] for the given colours (heading east)."""
        y = torch.full_like(position, CORRIDOR_ROW)
        xs, ys = window_coords(position + 1, y, self.view_size)
        obj, color, state = segment_cells(xs, ys, self.length, GREY, BALL, 0, top, bottom)
        cue_cell = (xs == 1) & (ys == CORRIDOR_ROW - 1)
        obj = torch.where(cue_cell, BALL, obj)
        color = torch.where(cue_cell, cue[:, None, None].expand_as(color), color)
        return encode_cells(obj, color, state, torch.full_like(position, EAST))

    def _build_table(self) -> Tensor:
        """Every distinct window: [C**3 * buckets, V, V, 3], see :meth:`_observe`."""
        colors = self.config.num_colors
        positions = bucket_representatives(self.boundaries.tolist())
        grid = torch.cartesian_prod(
            torch.arange(colors),
            torch.arange(colors),
            torch.arange(colors),
            torch.tensor(positions),
        ).to(self.device)  # [C**3 * buckets, 4]: cue, top, bottom, position
        cue, top, bottom, position = grid.unbind(1)
        return self._render(position, cue, top, bottom)

    def _observe(self) -> Obs:
        # Look the window up by (colours, position bucket): the agent heads east. A shorter
        # episode's windows near its junction are those of the full length's (the position
        # is counted back from the junction there); elsewhere they are the same anyway.
        to_go = self.episode_length - self.position
        position = torch.where(to_go <= self.view_size // 2, self.length - to_go, self.position)
        bucket = torch.bucketize(position, self.boundaries, right=True)
        return {"image": self.table.index_select(0, self.table_base + bucket)}

    def _final_observe(self) -> Obs:
        # An episode that ended in an arm shows the agent turned towards it.
        obs = self._observe()
        turned = torch.where(self.actions == LEFT, NORTH, SOUTH)
        centre = self.view_size // 2
        heading = torch.where(self.terminated, turned, EAST).to(torch.uint8)
        obs["image"][:, centre, centre, 2] = heading
        return obs

    def _episode_info(self, done: Tensor) -> dict[str, Tensor]:
        return {"success": self.success}  # only true where the episode terminated

    def layout(self, index: int) -> dict[str, Any]:
        return {
            "length": int(self.episode_length[index]),
            "cue": int(self.cue[index]),
            "top": int(self.top[index]),
            "bottom": int(self.bottom[index]),
        }

    def oracle_actions(self) -> Tensor:
        """Forward to the junction, then into the arm whose object has the cue's colour."""
        return torch.where(self.position == self.episode_length, self.right_turn, FORWARD)


class CorridorEnv(ReferenceEnv):
    """Corridor: remember a colour seen at the start of a long corridor.

    ## Description
    The agent starts at the west end of a corridor ``length`` cells long and,
    at the start only, sees a coloured ball (the cue) in the wall beside it.
    At the east end is a junction with two arms; in them stand two balls, one
    of the cue's colour and one of another colour, in random order.

    ## Observation
    ``{"image": uint8[V, V, 3]}``: minigrid (object, colour, state) triples of
    the ``view_size`` x ``view_size`` cells around the agent (top-down, the
    agent's own cell shows ``(agent, red, direction)``).

    ## Actions
    ``0 left, 1 right, 2 forward``. In the corridor only ``forward`` moves (one
    cell east); the corridor is too narrow to turn, so there is no way back and
    a uniformly random policy reaches the junction in about ``3 * length``
    steps. At the junction ``left`` enters the top arm and ``right`` the
    bottom arm; ``forward`` bumps into the east wall.

    ## Rewards
    +1 for entering the arm whose ball matches the cue, 0 for the other arm.

    ## Termination
    Entering an arm terminates the episode; it is truncated after
    ``max_steps`` (default ``4 * length + 20``).

    ## Memory requirement
    One colour (out of ``num_colors``) for at least ``length`` steps: the cue
    leaves the view after ``view_size // 2 + 1`` steps and the junction is
    ``length`` steps away. Oracle: success 1.0. Memoryless bound: 1/2 (at the
    junction the observation is the same whichever ball matches).

    ## Random lengths
    With ``min_length`` below ``length``, every episode draws its own length
    log-uniformly from ``[min_length, length]`` (the layout's ``length``); the
    time limit stays that of ``length``. A training option: shorter episodes
    teach the agent to use the cue sooner, at less memory per step, and the
    same option is open to every policy. ``min_length`` must be at least
    ``view_size``, so that no window shows both the cue and the junction.

    ## Registered configurations
    ``ExpireRL/Corridor-v0`` (``length=1000, num_colors=2, view_size=3``);
    every parameter can be passed to ``gymnasium.make``.
    """

    render_window = (15, SEGMENT_HEIGHT)

    def __init__(self, render_mode: str | None = None, **kwargs: Any):
        """``kwargs``: the task's parameters (`CorridorConfig`) and minigrid's render options."""
        params, render_kwargs = CorridorConfig.split(kwargs)
        self.config = CorridorConfig.from_kwargs(**params)
        super().__init__(
            width=self.config.length + 3,
            height=SEGMENT_HEIGHT,
            max_steps=self.config.max_steps,
            view_size=self.config.view_size,
            mission="go to the ball with the colour you saw at the start",
            render_mode=render_mode,
            **render_kwargs,
        )

    def _sample_layout(self) -> dict[str, Any]:
        num_colors = self.config.num_colors
        cue, other = (int(c) for c in self.np_random.choice(num_colors, 2, replace=False))
        top, bottom = (cue, other) if self.np_random.integers(2) == 0 else (other, cue)
        length = self.config.length
        if self.config.min_length < length:
            uniform = torch.tensor([self.np_random.random()])
            length = int(self.config.draw_lengths(uniform, torch.tensor(length))[0])
        return {"length": length, "cue": cue, "top": top, "bottom": bottom}

    def _build(self, layout: dict[str, Any]) -> None:
        values = self.config.check_layout(layout)
        self.cue, self.top, self.bottom = values["cue"], values["top"], values["bottom"]
        self.success = False
        self.length = values["length"]
        self.width = self.length + 3  # beyond a shorter corridor's end wall: unseen, as batched
        self.grid = self.grid.__class__(self.width, self.height)
        build_segment(
            self.grid,
            0,
            self.length,
            Wall(),
            Ball(COLOR_NAMES[self.top]),
            Ball(COLOR_NAMES[self.bottom]),
        )
        self.grid.set(1, CORRIDOR_ROW - 1, Ball(COLOR_NAMES[self.cue]))
        self.agent_pos = (1, CORRIDOR_ROW)
        self.agent_dir = EAST

    def _apply(self, action: int) -> tuple[float, bool]:
        x, y = self.agent_pos
        junction = self.length + 1
        if x == junction and action in (LEFT, RIGHT):
            chosen = self.top if action == LEFT else self.bottom
            self.agent_dir = NORTH if action == LEFT else SOUTH
            self.success = chosen == self.cue
            return float(self.success), True
        if action == FORWARD and x < junction:
            self.agent_pos = (x + 1, y)
        return 0.0, False

    def _episode_info(self) -> dict[str, Any]:
        return {"success": self.success}

    salient_name = "cue"

    def caption(self) -> str:
        """The cue's colour and the arms' balls."""
        return (f"cue: {COLOR_NAMES[self.cue]}   arms: top {COLOR_NAMES[self.top]}, "
                f"bottom {COLOR_NAMES[self.bottom]}")  # fmt: skip

    def salient_color(self, obs: dict[str, Any]) -> RGB | None:
        """The cue's colour while the cue (at x = 1) is in view."""
        if abs(self.agent_pos[0] - 1) <= self.agent_view_size // 2:
            return self.color_rgb(self.cue)
        return None
