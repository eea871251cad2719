"""Instruction: carry out the latest of a stream of one-step instructions.

Both implementations live here: :class:`BatchedInstruction` (torch, the fast
path) and :class:`InstructionEnv` (minigrid, registered as
``ExpireRL/Instruction-v0``). Shape legend: B num_envs, N num_objects,
K instructions per episode (at most), V view size, S room size.

The file is longer than the other tasks' because the two implementations must draw the
same layouts and instructions, step alike and be read side by side: the equivalence tests
replay one against the other, and splitting them would hide what has to stay in step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import torch
from minigrid.core.world_object import Ball

from envs.core import (
    BALL,
    COLOR_NAMES,
    DIR_TO_VEC,
    EMPTY,
    FORWARD,
    GREY,
    LEFT,
    NUM_COLORS,
    RIGHT,
    UNSEEN,
    WALL,
    BatchedEnv,
    Obs,
    TaskConfig,
    Tensor,
    check_int,
    check_view_size,
    encode_cells,
    image_space,
    window_coords,
)
from envs.reference import RGB, ReferenceEnv


@dataclass(frozen=True)
class InstructionConfig(TaskConfig):
    """The instruction task's parameters, validated (shared by both implementations and the
    CLI)."""

    task: ClassVar[str] = "instruction"
    size: int = 5
    """Room side in free cells, 2..30."""
    num_objects: int = 4
    """Balls in the room, 2..6 (each its own colour)."""
    delay_min: int = 20
    """Fewest steps between instructions (at least the longest way to a ball, 2 x size + 4)."""
    delay_max: int = 40
    """Most steps between instructions."""
    view_size: int = 7
    """Side of the agent's square view (odd, 3..15)."""
    max_steps: int = 400
    """Time limit of an episode (at least delay_min)."""

    def __post_init__(self) -> None:
        self._set("size", check_int("size", self.size, 2, 30))
        self._set("num_objects", check_int("num_objects", self.num_objects, 2, NUM_COLORS))
        # Instructions must be at least the longest way to any object apart (walk, turns, the
        # final step into it) to be possible to carry out.
        self._set("delay_min", check_int("delay_min", self.delay_min, self.longest_way))
        self._set("delay_max", check_int("delay_max", self.delay_max, self.delay_min))
        self._set("max_steps", check_int("max_steps", self.max_steps, self.delay_min))
        self._set("view_size", check_view_size(self.view_size))

    @property
    def longest_way(self) -> int:
        """Steps of the longest way to any object: walk, turns, the final step into it."""
        return 2 * self.size + 4

    @property
    def max_instructions(self) -> int:
        """Instructions an episode can hold: at most one every delay_min steps, the first at
        the start."""
        return self.max_steps // self.delay_min + 1

    def wall_cells(self) -> list[tuple[int, int]]:
        """The wall cells where objects may stand (all but the corners), in a fixed order."""
        inner = range(1, self.size + 1)
        edge = self.size + 1
        return (
            [(x, 0) for x in inner]
            + [(x, edge) for x in inner]
            + [(0, y) for y in inner]
            + [(edge, y) for y in inner]
        )

    def observation_space(self) -> gym.spaces.Dict:
        """Image plus ``instruction``: 0 for none, ``c + 1`` for colour ``c`` (shown one step)."""
        return gym.spaces.Dict(
            {
                "image": image_space(self.view_size),
                "instruction": gym.spaces.Discrete(NUM_COLORS + 1),
            }
        )

    def check_layout(self, layout: dict[str, Any]) -> dict[str, Any]:
        """Validate a layout from :meth:`BatchedInstruction.layout`; return it normalised."""
        try:
            size = int(layout["size"])
            objects = [tuple(int(v) for v in obj) for obj in layout["objects"]]
            agent = tuple(int(v) for v in layout["agent"])
            gaps = [int(v) for v in layout["gaps"]]
            targets = [int(v) for v in layout["targets"]]
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"instruction layout needs size, objects, agent, gaps, targets: {error}"
            ) from None
        if size != self.size or len(objects) != self.num_objects:
            raise ValueError(
                f"layout of size {size} with {len(objects)} objects does not match the env's "
                f"size {self.size} with {self.num_objects} objects"
            )
        walls = set(self.wall_cells())
        if any(len(obj) != 3 or obj[:2] not in walls for obj in objects) or len(
            {obj[:2] for obj in objects}
        ) != len(objects):
            raise ValueError("instruction layout objects must stand on distinct wall cells")
        if not all(0 <= t < self.num_objects for t in targets) or len(gaps) != len(targets):
            raise ValueError("instruction layout targets must index the objects, one per gap")
        if len(agent) != 3 or not all(1 <= v <= self.size for v in agent[:2]):
            raise ValueError(f"instruction layout agent must be (x, y, dir) inside, got {agent}")
        return {"objects": objects, "agent": agent, "gaps": gaps, "targets": targets}


class BatchedInstruction(BatchedEnv):
    """The instruction task for ``num_envs`` envs at once, as torch tensors.

    See :class:`InstructionEnv` for the task. Cells are numbered
    ``x * (S + 2) + y`` over the whole room, walls included. Each env keeps
    ``blocker`` [B, (S + 2)**2], what stops a step into each cell (0 free,
    k + 1 ball k, ``WALL_CODE`` wall), so a move is one gather. Its window is
    looked up in a table of the empty room's windows (one per agent cell),
    and its balls are scattered in through a table of where each wall slot
    falls in each agent cell's window. The whole instruction schedule of an
    episode (K gaps and targets) is drawn when it starts.
    """

    config_class = InstructionConfig
    name = "instruction"
    curriculum_parameter = "size"
    stage_restarts_episodes = True
    score_counter = "instructions_carried"
    WALL_CODE = 255

    def __init__(
        self,
        num_envs: int,
        device: str | torch.device = "cpu",
        seed: int | None = None,
        **task_kwargs: Any,
    ):
        self.full_config = self.config = InstructionConfig.from_kwargs(**task_kwargs)
        self.view_size = self.config.view_size
        self.single_observation_space = self.config.observation_space()
        self.device = torch.device(device)
        self._set_room_config(self.config.size)
        super().__init__(num_envs, self.config.max_steps, device, seed)

    def set_room(self, size: int) -> None:
        """Play in a room of ``size`` (at most the task's) from now on: a training curriculum.
        A room smaller than the task's holds 2 balls (or the task's number, if fewer); the
        task's own size is the task itself. Every env starts a new episode in the new room
        (its time limit keeps counting, as after a desynchronised reset)."""
        self._set_room_config(size)
        self._start_episodes(None)
        self.episode_return.zero_()

    @property
    def curriculum_stage(self) -> int:
        return self.size

    def set_curriculum_stage(self, stage: int, full_fraction: float = 0.0) -> None:
        """The room's size is the stage (there is no share of full-task episodes)."""
        if full_fraction:
            raise ValueError(f"an instruction room has no full_fraction, got {full_fraction}")
        self.set_room(stage)

    def _set_room_config(self, size: int) -> None:
        full = self.full_config
        check_int("room size", size, 2, full.size)
        objects = full.num_objects if size == full.size else min(2, full.num_objects)
        self.config = dataclasses.replace(full, size=size, num_objects=objects)
        self.size = size
        self.side = size + 2  # cells per row, walls included
        self.room_size = torch.tensor(size, device=self.device)
        self._build_tables()

    def load_state_dict(self, data: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`, in the room it was taken in."""
        room = data["tensors"].get("room_size")
        if room is not None and int(room) != self.size:
            self.set_room(int(room))
        super().load_state_dict(data)

    def _build_tables(self) -> None:
        side, view, device = self.side, self.view_size, self.device
        half = view // 2
        x, y = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        x, y = x.flatten().to(device), y.flatten().to(device)  # [C]: every cell, C = (S + 2)**2
        wall = (x == 0) | (x == side - 1) | (y == 0) | (y == side - 1)
        self.blocker_template = torch.where(wall, self.WALL_CODE, 0).to(torch.uint8)  # [C]
        # The empty room seen from every cell, plus a scratch cell for balls out of view.
        xs, ys = window_coords(x, y, view)
        inside = (xs >= 0) & (xs < side) & (ys >= 0) & (ys < side)
        wall_cell = inside & ((xs == 0) | (xs == side - 1) | (ys == 0) | (ys == side - 1))
        obj = torch.where(wall_cell, WALL, torch.where(inside, EMPTY, UNSEEN))
        color = torch.where(wall_cell, GREY, 0)
        image = encode_cells(obj, color, torch.zeros_like(obj), torch.zeros_like(x))
        image = image.reshape(len(x), view * view * 3)  # [C, V * V * 3]
        self.window_table = torch.cat([image, torch.zeros_like(image[:, :3])], dim=1)
        # Where wall slot s shows in the window of cell c: byte offset of its object channel.
        slots = torch.tensor(self.config.wall_cells(), device=device)  # [4S, 2]
        self.slot_cells = slots[:, 0] * side + slots[:, 1]  # [4S]
        dx = slots[None, :, 0] - x[:, None] + half  # [C, 4S]
        dy = slots[None, :, 1] - y[:, None] + half
        visible = (dx >= 0) & (dx < view) & (dy >= 0) & (dy < view)
        self.slot_window = torch.where(visible, dx * view + dy, view * view).flatten() * 3
        self.step_offset = torch.tensor([dx * side + dy for dx, dy in DIR_TO_VEC], device=device)

    def _new_episodes(self, count: int) -> dict[str, Tensor]:
        config, generator, device = self.config, self.generator, self.device
        num_objects, schedule = config.num_objects, config.max_instructions
        slots = torch.rand((count, len(self.slot_cells)), generator=generator, device=device)
        slots = slots.argsort(1)[:, :num_objects]  # [n, N]: distinct wall slots
        colors = torch.rand((count, NUM_COLORS), generator=generator, device=device)
        colors = colors.argsort(1)[:, :num_objects]  # [n, N]: distinct colours
        blocker = self.blocker_template.repeat(count, 1)  # [n, C]
        ball_codes = torch.arange(1, num_objects + 1, dtype=torch.uint8, device=device)
        blocker.scatter_(1, self.slot_cells[slots], ball_codes.expand(count, -1))
        balls = torch.full_like(colors, BALL)
        targets = self.rand_int(0, num_objects - 1, (count, schedule))  # [n, K]
        gaps = self.rand_int(config.delay_min, config.delay_max, (count, schedule))  # [n, K]
        agent_x = self.rand_int(1, self.size, (count,))
        agent_y = self.rand_int(1, self.size, (count,))
        return {
            "blocker": blocker,
            "object_slots": slots,
            "object_color": colors,
            "object_bytes": torch.cat([balls, colors], 1).to(torch.uint8),  # [n, 2N]
            "cell": agent_x * self.side + agent_y,
            "direction": self.rand_int(0, 3, (count,)),
            "gaps": gaps,
            "targets": targets,
            # The first instruction is given at the start.
            "target": targets[:, 0],
            "active": torch.ones(count, dtype=torch.bool, device=device),
            "token": colors.gather(1, targets[:, :1]).squeeze(1) + 1,
            "until_next": gaps[:, 0].clone(),
            "issued": torch.ones_like(targets[:, 0]),
            "carried": torch.zeros_like(targets[:, 0]),
            "resolved": torch.zeros_like(targets[:, 0]),
        }

    def _apply(self, actions: Tensor) -> tuple[Tensor, Tensor]:
        front = self.cell + self.step_offset[self.direction]  # [B]
        blocker = self.blocker.gather(1, front[:, None]).squeeze(1).long()  # [B]
        forward = actions == FORWARD
        self.cell = torch.where(forward & (blocker == 0), front, self.cell)
        self.direction = (self.direction + (actions == RIGHT).long() - (actions == LEFT).long()) % 4
        # Reaching a ball resolves the active instruction, right or wrong.
        reach = forward & (blocker > 0) & (blocker != self.WALL_CODE) & self.active
        correct = reach & (blocker == self.target + 1)
        self.carried += correct
        self.resolved += reach
        self.active &= ~reach
        # The next instruction replaces an unresolved one (which counts as failed).
        self.until_next -= 1
        issue = self.until_next == 0
        self.resolved += issue & self.active
        index = self.issued.clamp_max(self.config.max_instructions - 1)[:, None]  # [B, 1]
        self.target = torch.where(issue, self.targets.gather(1, index).squeeze(1), self.target)
        self.active |= issue
        color = self.object_color.gather(1, self.target[:, None]).squeeze(1)
        self.token = torch.where(issue, color + 1, 0)
        self.until_next = torch.where(issue, self.gaps.gather(1, index).squeeze(1), self.until_next)
        self.issued += issue
        return correct.float(), torch.zeros_like(correct)

    def _observe(self) -> Obs:
        view, half = self.view_size, self.view_size // 2
        image = self.window_table.index_select(0, self.cell)  # [B, (V * V + 1) * 3]
        where = self.slot_window[self.cell[:, None] * len(self.slot_cells) + self.object_slots]
        image.scatter_(1, torch.cat([where, where + 1], 1), self.object_bytes)  # balls in view
        image[:, (half * view + half) * 3 + 2] = self.direction.to(torch.uint8)
        image = image[:, : view * view * 3].view(self.num_envs, view, view, 3)
        return {"image": image, "instruction": self.token.clone()}

    def _episode_info(self, done: Tensor) -> dict[str, Tensor]:
        success = done & (self.resolved > 0) & (self.carried == self.resolved)
        return {
            "success": success,
            "instructions_carried": self.carried.clone(),
            "instructions_resolved": self.resolved.clone(),
        }

    @property
    def agent_x(self) -> Tensor:
        return torch.div(self.cell, self.side, rounding_mode="floor")

    @property
    def agent_y(self) -> Tensor:
        return self.cell % self.side

    @property
    def object_x(self) -> Tensor:
        return torch.div(self.slot_cells[self.object_slots], self.side, rounding_mode="floor")

    @property
    def object_y(self) -> Tensor:
        return self.slot_cells[self.object_slots] % self.side

    def layout(self, index: int) -> dict[str, Any]:
        columns = (self.object_x[index], self.object_y[index], self.object_color[index])
        return {
            "size": self.size,
            "objects": [[int(x), int(y), int(c)] for x, y, c in zip(*columns, strict=True)],
            "agent": [
                int(self.agent_x[index]),
                int(self.agent_y[index]),
                int(self.direction[index]),
            ],
            "gaps": [int(v) for v in self.gaps[index]],
            "targets": [int(v) for v in self.targets[index]],
        }

    def oracle_actions(self) -> Tensor:
        """Walk to the cell beside the active target (x first, then y), face it, step in."""
        agent_x, agent_y = self.agent_x, self.agent_y
        goal_x = self.object_x.gather(1, self.target[:, None]).squeeze(1)
        goal_y = self.object_y.gather(1, self.target[:, None]).squeeze(1)
        stand_x, stand_y = goal_x.clamp(1, self.size), goal_y.clamp(1, self.size)
        dx, dy = stand_x - agent_x, stand_y - agent_y
        # Heading wanted: along x while x is off, then along y, then into the object.
        face_x, face_y = goal_x - stand_x, goal_y - stand_y
        want_dx = torch.where(dx != 0, dx.sign(), torch.where(dy != 0, 0, face_x))
        want_dy = torch.where(dx != 0, 0, torch.where(dy != 0, dy.sign(), face_y))
        # Directions 0..3 are east, south, west, north: (1,0), (0,1), (-1,0), (0,-1).
        want = torch.where(want_dx != 0, 1 - want_dx, 2 - want_dy)
        delta = (want - self.direction) % 4
        action = torch.where(delta == 0, FORWARD, torch.where(delta == 1, RIGHT, LEFT))
        return torch.where(self.active, action, LEFT)


class InstructionEnv(ReferenceEnv):
    """Instruction: hold the latest instruction, drop the stale ones.

    ## Description
    A square room of ``size`` x ``size`` free cells with ``num_objects`` balls
    of distinct colours set into its walls. At the start and then every
    ``delay_min``..``delay_max`` steps (drawn at random), an instruction
    names one ball's colour; it is visible for that single step. Reaching
    the named ball (stepping into it) carries the instruction out; reaching
    another ball fails it; a new instruction replaces an unresolved one,
    which then counts as failed. Reaching a ball with no instruction active
    does nothing.

    ## Observation
    ``{"image": uint8[V, V, 3], "instruction": int}``: minigrid (object,
    colour, state) triples of the ``view_size`` x ``view_size`` cells around
    the agent (top-down; the agent's cell shows its heading), and the colour
    of a new instruction plus one on the step it is given, 0 otherwise.

    ## Actions
    ``0 left, 1 right, 2 forward``: turn left, turn right, move one cell
    ahead (stepping into a ball reaches it; walls block).

    ## Rewards
    +1 for each instruction carried out.

    ## Termination
    Never terminates; truncated after ``max_steps``. ``info`` at the end:
    ``instructions_carried`` and ``instructions_resolved`` (an instruction
    still open at the time limit is not counted) and ``success`` (every
    resolved instruction carried out).

    ## Memory requirement
    The latest instruction (one of ``num_objects`` colours), from the one step
    it is shown until the ball is reached, up to ``delay_max`` steps, and the
    knowledge that it has been carried out (a stale instruction must not be
    acted on). Oracle: every instruction carried out (``delay_min`` is at
    least the longest way to a ball, ``2 * size + 4``). Memoryless bound: a
    policy that sees the instruction for one step and then forgets it carries
    out about ``1 / num_objects`` of them (e.g. by waiting in front of one
    ball); a reactive policy could still hide a little information in its own
    heading and position, so this bound is the strategy's, not a proof.

    ## Registered configurations
    ``ExpireRL/Instruction-v0`` (``size=5, num_objects=4, delay_min=20,
    delay_max=40, max_steps=400, view_size=7``); every parameter can be
    passed to ``gymnasium.make``.
    """

    def __init__(self, render_mode: str | None = None, **kwargs: Any):
        """``kwargs``: the task's parameters (`InstructionConfig`) and minigrid's render
        options."""
        params, render_kwargs = InstructionConfig.split(kwargs)
        self.config = InstructionConfig.from_kwargs(**params)
        self.render_window = (self.config.size + 2, self.config.size + 2)
        super().__init__(
            width=self.config.size + 2,
            height=self.config.size + 2,
            max_steps=self.config.max_steps,
            view_size=self.config.view_size,
            mission="go to the ball of the latest colour you were told",
            extra_spaces={"instruction": self.config.observation_space()["instruction"]},
            render_mode=render_mode,
            **render_kwargs,
        )

    def _sample_layout(self) -> dict[str, Any]:
        config, rng = self.config, self.np_random
        walls = config.wall_cells()
        slots = rng.choice(len(walls), config.num_objects, replace=False)
        colors = rng.choice(NUM_COLORS, config.num_objects, replace=False)
        count = config.max_instructions
        return {
            "size": config.size,
            "objects": [[*walls[s], int(c)] for s, c in zip(slots, colors, strict=True)],
            "agent": [*(int(v) for v in rng.integers(1, config.size + 1, 2)), int(rng.integers(4))],
            "gaps": [int(v) for v in rng.integers(config.delay_min, config.delay_max + 1, count)],
            "targets": [int(v) for v in rng.integers(0, config.num_objects, count)],
        }

    def _build(self, layout: dict[str, Any]) -> None:
        values = self.config.check_layout(layout)
        self.objects = values["objects"]
        self.gaps, self.targets = values["gaps"], values["targets"]
        self.grid = self.grid.__class__(self.width, self.height)
        self.grid.wall_rect(0, 0, self.width, self.height)
        for x, y, color in self.objects:
            self.grid.set(x, y, Ball(COLOR_NAMES[color]))
        x, y, direction = values["agent"]
        self.agent_pos, self.agent_dir = (x, y), direction
        self.carried = self.resolved = 0
        self._issue(0)

    def _issue(self, index: int) -> None:
        """Give instruction ``index`` of the schedule; the next comes ``gaps[index]`` later."""
        index = min(index, len(self.targets) - 1)
        self.issued = index + 1
        self.target, self.active = self.targets[index], True
        self.token = self.objects[self.target][2] + 1
        self.until_next = self.gaps[index]

    def _apply(self, action: int) -> tuple[float, bool]:
        x, y = self.agent_pos
        dx, dy = DIR_TO_VEC[self.agent_dir]
        front = (x + dx, y + dy)
        reward = 0.0
        if action == LEFT:
            self.agent_dir = (self.agent_dir - 1) % 4
        elif action == RIGHT:
            self.agent_dir = (self.agent_dir + 1) % 4
        elif 1 <= front[0] <= self.config.size and 1 <= front[1] <= self.config.size:
            self.agent_pos = front
        else:
            hit = [i for i, obj in enumerate(self.objects) if obj[:2] == front]
            if hit and self.active:
                reward = float(hit[0] == self.target)
                self.carried += int(reward)
                self.resolved += 1
                self.active = False
        self.token = 0
        self.until_next -= 1
        if self.until_next == 0:
            self.resolved += int(self.active)
            self._issue(self.issued)
        return reward, False

    def _extra_obs(self) -> dict[str, Any]:
        return {"instruction": self.token}

    def _episode_info(self) -> dict[str, Any]:
        return {
            "success": self.resolved > 0 and self.carried == self.resolved,
            "instructions_carried": self.carried,
            "instructions_resolved": self.resolved,
        }

    salient_name = "instruction"

    def caption(self) -> str:
        """The current instruction, whether it is still to carry out, and the tally."""
        color = COLOR_NAMES[self.objects[self.target][2]]
        state = ("shown now" if self.token else "active") if self.active else "done, waiting"
        return f"instruction: {color} ({state})   carried {self.carried}/{self.resolved}"

    def salient_color(self, obs: dict[str, Any]) -> RGB | None:
        """The colour of the instruction ``obs`` gives, on the one step it is shown."""
        token = int(obs.get("instruction", 0))
        return self.color_rgb(token - 1) if token else None
