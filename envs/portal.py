"""Portal: a chain of rooms whose right portals must be remembered across a trip.

Both implementations live here: :class:`BatchedPortal` (torch, the fast path)
and :class:`PortalEnv` (minigrid, registered as ``ExpireRL/Portal-v0``).
Shape legend: B num_envs, N num_rooms, V view size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import torch
from minigrid.core.world_object import Door, Wall

from envs.core import (
    CLOSED,
    COLOR_NAMES,
    DOOR,
    EAST,
    FORWARD,
    LEFT,
    NUM_COLORS,
    RIGHT,
    SEGMENT_HEIGHT,
    UNSEEN,
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

CORRIDOR_ROW = 2  # y of the corridor inside a room block


@dataclass(frozen=True)
class PortalConfig(TaskConfig):
    """The portal task's parameters, validated (shared by both implementations and the CLI)."""

    task: ClassVar[str] = "portal"
    num_rooms: int = 4
    """Rooms in the chain, 1..6 (each has its own wall colour)."""
    room_length: int = 8
    """Cells per room."""
    view_size: int = 3
    """Side of the agent's square view (odd, 3..15)."""
    max_steps: int = 1000
    """Time limit of an episode (at least one trip through every room)."""

    def __post_init__(self) -> None:
        # Each room has its own wall colour, and minigrid has six colours.
        self._set("num_rooms", check_int("num_rooms", self.num_rooms, 1, NUM_COLORS))
        self._set("room_length", check_int("room_length", self.room_length, 1))
        self._set("view_size", check_view_size(self.view_size))
        self._set("max_steps", check_int("max_steps", self.max_steps, self.trip_steps))

    @property
    def trip_steps(self) -> int:
        """Steps of one trip through every room along the right portals."""
        return self.num_rooms * (self.room_length + 1)

    def check_layout(self, layout: dict[str, Any]) -> list[int]:
        """Validate a layout from :meth:`BatchedPortal.layout`; return its portal bits."""
        try:
            rooms, length = int(layout["num_rooms"]), int(layout["room_length"])
            bits = [int(bit) for bit in layout["correct"]]
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"portal layout needs num_rooms, room_length and correct: {error}"
            ) from None
        if (rooms, length) != (self.num_rooms, self.room_length):
            raise ValueError(
                f"layout rooms {rooms} x length {length} do not match the env's "
                f"{self.num_rooms} x {self.room_length}"
            )
        if len(bits) != rooms or any(bit not in (0, 1) for bit in bits):
            raise ValueError(f"portal layout 'correct' must be {rooms} bits (0 top, 1 bottom)")
        return bits


class BatchedPortal(BatchedEnv):
    """The portal task for ``num_envs`` envs at once, as torch tensors.

    See :class:`PortalEnv` for the task. State per env: room, position in the
    room, the correct portal of every room (N bits) and episode counters.
    """

    config_class = PortalConfig
    name = "portal"
    score_counter = "goals"

    def __init__(
        self,
        num_envs: int,
        device: str | torch.device = "cpu",
        seed: int | None = None,
        **task_kwargs: Any,
    ):
        self.config = PortalConfig.from_kwargs(**task_kwargs)
        self.view_size = self.config.view_size
        self.single_observation_space = gym.spaces.Dict({"image": image_space(self.view_size)})
        boundaries = segment_boundaries(self.config.room_length, self.view_size // 2)
        self.boundaries = torch.tensor(boundaries, device=torch.device(device))
        super().__init__(num_envs, self.config.max_steps, device, seed)
        self.table = self._build_table()

    def _new_episodes(self, count: int) -> dict[str, Tensor]:
        zeros = torch.zeros(count, dtype=torch.long, device=self.device)
        draws = torch.rand(
            (count, self.config.num_rooms), generator=self.generator, device=self.device
        )
        return {
            "room": zeros,
            "position": zeros.clone(),
            "correct": (draws < 0.5).long(),  # [n, N]: 0 top, 1 bottom
            "goals": zeros.clone(),
            "wrong_after_first_goal": zeros.clone(),
        }

    def _apply(self, actions: Tensor) -> tuple[Tensor, Tensor]:
        at_end = self.position == self.config.room_length
        self.position = self.position + ((actions == FORWARD) & ~at_end).long()
        through = at_end & (actions != FORWARD)
        correct = self.correct.gather(1, self.room[:, None]).squeeze(1)  # [B]
        right_portal = through & ((actions == RIGHT).long() == correct)
        wrong_portal = through & ~right_portal
        goal = right_portal & (self.room == self.config.num_rooms - 1)
        self.wrong_after_first_goal += (wrong_portal & (self.goals > 0)).long()
        self.goals += goal.long()
        next_room = torch.where(goal | wrong_portal, 0, self.room + 1)
        self.room = torch.where(through, next_room, self.room)
        self.position = torch.where(through, 0, self.position)
        return goal.float(), torch.zeros_like(goal)

    def _render(self, room: Tensor, position: Tensor) -> Tensor:
        """The window [K, V, V, 3] at ``position`` [K] of ``room`` [K]."""
        y = room * SEGMENT_HEIGHT + CORRIDOR_ROW
        xs, ys = window_coords(position + 1, y, self.view_size)
        block = torch.div(ys, SEGMENT_HEIGHT, rounding_mode="floor")  # room of each cell
        obj, color, state = segment_cells(
            xs,
            ys - block * SEGMENT_HEIGHT,
            self.config.room_length,
            block,
            DOOR,
            CLOSED,
            block,
            block,
        )
        outside = (block < 0) | (block >= self.config.num_rooms)
        obj = torch.where(outside, UNSEEN, obj)
        color = torch.where(outside, 0, color)
        state = torch.where(outside, 0, state)
        return encode_cells(obj, color, state, torch.full_like(position, EAST))

    def _build_table(self) -> Tensor:
        """Every distinct window: [N * buckets, V, V, 3], see :meth:`_observe`."""
        positions = bucket_representatives(self.boundaries.tolist())
        grid = torch.cartesian_prod(
            torch.arange(self.config.num_rooms), torch.tensor(positions)
        ).to(self.device)  # [N * buckets, 2]: room, position
        return self._render(*grid.unbind(1))

    def _observe(self) -> Obs:
        bucket = torch.bucketize(self.position, self.boundaries, right=True)
        row = self.room * (len(self.boundaries) + 1) + bucket
        return {"image": self.table.index_select(0, row)}

    def _episode_info(self, done: Tensor) -> dict[str, Tensor]:
        success = done & (self.goals > 0) & (self.wrong_after_first_goal == 0)
        return {
            "success": success,
            "goals": self.goals.clone(),
            "wrong_after_first_goal": self.wrong_after_first_goal.clone(),
        }

    def layout(self, index: int) -> dict[str, Any]:
        return {
            "num_rooms": self.config.num_rooms,
            "room_length": self.config.room_length,
            "correct": [int(bit) for bit in self.correct[index]],
        }

    def oracle_actions(self) -> Tensor:
        """Forward to the end of each room, then through the portal that leads on."""
        correct = self.correct.gather(1, self.room[:, None]).squeeze(1)
        turn = torch.where(correct == 0, LEFT, RIGHT)
        return torch.where(self.position == self.config.room_length, turn, FORWARD)


class PortalEnv(ReferenceEnv):
    """Portal: remember which portal of every room leads on, across whole trips.

    ## Description
    A chain of ``num_rooms`` rooms, each a corridor ``room_length`` cells long
    with its own wall colour, ending in two identical portals (doors), one
    above and one below the last cell. In every room one portal, drawn at
    random per episode and fixed for the whole episode, leads to the start of
    the next room; the other sends the agent back to the start of the first
    room. Going through the last room's right portal scores a goal and sends
    the agent back to the first room for another trip.

    ## Observation
    ``{"image": uint8[V, V, 3]}``: minigrid (object, colour, state) triples of
    the ``view_size`` x ``view_size`` cells around the agent; the wall colour
    tells which room the agent is in.

    ## Actions
    ``0 left, 1 right, 2 forward``. In a room only ``forward`` moves (one cell
    east). At the end ``left`` takes the top portal and ``right`` the bottom
    one; ``forward`` bumps into the wall.

    ## Rewards
    +1 for each goal (each completed trip through all rooms).

    ## Termination
    Never terminates; truncated after ``max_steps``. ``info["success"]`` at the
    end: at least one goal and no wrong portal after the first goal.

    ## Memory requirement
    One bit per room (which portal leads on), learnt on the first trip and
    needed again one trip later, ``num_rooms * (room_length + 1)`` steps on.
    Oracle: never a wrong portal, ``max_steps // trip`` goals. Memoryless
    bound: a policy that sees only the current observation cannot tell the
    rooms' bits apart from episode to episode, so it takes each portal right
    with probability 1/2 and completes a trip with probability ``2**-N``.

    ## Registered configurations
    ``ExpireRL/Portal-v0`` (``num_rooms=4, room_length=8, max_steps=1000,
    view_size=3``); every parameter can be passed to ``gymnasium.make``.
    """

    render_window = (15, SEGMENT_HEIGHT)

    def __init__(self, render_mode: str | None = None, **kwargs: Any):
        """``kwargs``: the task's parameters (`PortalConfig`) and minigrid's render options."""
        params, render_kwargs = PortalConfig.split(kwargs)
        self.config = PortalConfig.from_kwargs(**params)
        super().__init__(
            width=self.config.room_length + 3,
            height=self.config.num_rooms * SEGMENT_HEIGHT,
            max_steps=self.config.max_steps,
            view_size=self.config.view_size,
            mission="find the portals that lead through every room",
            render_mode=render_mode,
            **render_kwargs,
        )

    def _sample_layout(self) -> dict[str, Any]:
        bits = self.np_random.integers(0, 2, self.config.num_rooms)
        return {
            "num_rooms": self.config.num_rooms,
            "room_length": self.config.room_length,
            "correct": [int(bit) for bit in bits],
        }

    def _build(self, layout: dict[str, Any]) -> None:
        self.correct = self.config.check_layout(layout)
        self.grid = self.grid.__class__(self.width, self.height)
        for room in range(self.config.num_rooms):
            color = COLOR_NAMES[room]
            build_segment(
                self.grid,
                room * SEGMENT_HEIGHT,
                self.config.room_length,
                Wall(color),
                Door(color, is_open=False),
                Door(color, is_open=False),
            )
        self.room = 0
        self.goals = 0
        self.wrong_after_first_goal = 0
        self._enter_room(0)

    def _enter_room(self, room: int) -> None:
        self.room = room
        self.agent_pos = (1, room * SEGMENT_HEIGHT + CORRIDOR_ROW)
        self.agent_dir = EAST

    def _apply(self, action: int) -> tuple[float, bool]:
        x, y = self.agent_pos
        end = self.config.room_length + 1
        if x == end and action in (LEFT, RIGHT):
            portal = 0 if action == LEFT else 1
            if portal != self.correct[self.room]:
                self.wrong_after_first_goal += int(self.goals > 0)
                self._enter_room(0)
            elif self.room == self.config.num_rooms - 1:
                self.goals += 1
                self._enter_room(0)
                return 1.0, False
            else:
                self._enter_room(self.room + 1)
        elif action == FORWARD and x < end:
            self.agent_pos = (x + 1, y)
        return 0.0, False

    def _episode_info(self) -> dict[str, Any]:
        return {
            "success": self.goals > 0 and self.wrong_after_first_goal == 0,
            "goals": self.goals,
            "wrong_after_first_goal": self.wrong_after_first_goal,
        }

    salient_name = "new room"

    def caption(self) -> str:
        """The room the agent is in, the goals so far and the portals that lead on."""
        way_on = " ".join("top" if portal == 0 else "bottom" for portal in self.correct)
        return (f"room {self.room + 1}/{self.config.num_rooms}   goals {self.goals}   "
                f"portals that lead on: {way_on}")  # fmt: skip

    def salient_color(self, obs: dict[str, Any]) -> RGB | None:
        """The room's colour at its first cell: a room's start tells how the last portal went."""
        return self.color_rgb(self.room) if self.agent_pos[0] == 1 else None
