"""Base class of the reference (minigrid) implementations of the tasks.

A reference env is a :class:`minigrid.minigrid_env.MiniGridEnv` whose grid is a
real minigrid ``Grid``: observations are read from that grid cell by cell
(``WorldObj.encode``), frames come from minigrid's renderer. It exists for
rendering, videos and interoperability (``gymnasium.make``, sb3); the batched
torch implementation is the fast path, and a test holds the two to the same
observations, rewards, terminations and truncations.

Its observation is a dict with the same keys, dtypes and values as one row of
the batched observation (see :mod:`envs.core` for the encoding). ``reset``
accepts ``options={"layout": benv.layout(i)}`` to start exactly the episode
that batched env ``i`` is playing.

For videos and span pictures (``agents.video``) each task describes itself:
``caption()`` puts the episode's hidden information in words, and
``salient_color(obs)`` gives the colour of what an observation shows that must
be remembered (the corridor's cue, an instruction, a new room), named
``salient_name``.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from minigrid.core.constants import COLORS, TILE_PIXELS
from minigrid.core.mission import MissionSpace
from minigrid.minigrid_env import MiniGridEnv

from envs.core import AGENT, COLOR_NAMES, EMPTY, NUM_ACTIONS, RED, image_space

RGB = tuple[int, int, int]
"""A colour as (red, green, blue), each 0..255."""


class ReferenceEnv(MiniGridEnv, abc.ABC):
    """A minigrid env with the suite's observation, actions and windowed rendering.

    Subclasses implement ``_sample_layout`` (a random episode as plain data
    from ``self.np_random``), ``_build`` (lay out grid, agent and episode
    state from a layout), ``_apply`` (one step of the dynamics) and
    ``_episode_info``. Rendering shows a window of ``render_window`` cells
    around the agent, so a 100,000-cell corridor renders as a small frame.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["human", "rgb_array"], "render_fps": 10}
    render_window: tuple[int, int] = (15, 7)
    salient_name: ClassVar[str] = "salient step"
    """What the observations of :meth:`salient_color` show, in a word or two (``"cue"``)."""

    def __init__(
        self,
        width: int,
        height: int,
        max_steps: int,
        view_size: int,
        mission: str,
        extra_spaces: dict[str, gym.Space] | None = None,
        render_mode: str | None = None,
        tile_size: int = TILE_PIXELS,
    ):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be one of {self.metadata['render_modes']} or None, "
                f"got {render_mode!r}"
            )
        super().__init__(
            mission_space=MissionSpace(mission_func=lambda: mission),
            width=width,
            height=height,
            max_steps=max_steps,
            see_through_walls=True,
            agent_view_size=view_size,
            render_mode=render_mode,
            tile_size=tile_size,
        )
        self.action_space = gym.spaces.Discrete(NUM_ACTIONS)
        self.observation_space = gym.spaces.Dict(
            {"image": image_space(view_size), **(extra_spaces or {})}
        )
        self._requested_layout: dict[str, Any] | None = None
        self.episode_return = 0.0

    # -- the subclass's part ------------------------------------------------
    @abc.abstractmethod
    def _sample_layout(self) -> dict[str, Any]:
        """A random episode, drawn from ``self.np_random``."""

    @abc.abstractmethod
    def _build(self, layout: dict[str, Any]) -> None:
        """Set ``self.grid``, ``agent_pos``, ``agent_dir`` and episode state from a layout."""

    @abc.abstractmethod
    def _apply(self, action: int) -> tuple[float, bool]:
        """Advance the dynamics by one step: (reward, terminated)."""

    @abc.abstractmethod
    def _episode_info(self) -> dict[str, Any]:
        """Per-episode statistics (``success`` and task counters), read when it ends."""

    def _extra_obs(self) -> dict[str, Any]:
        """Observation fields beside ``image``."""
        return {}

    # -- what videos show ------------------------------------------------------
    def caption(self) -> str:
        """The episode's hidden information in words ("" where there is none to tell)."""
        return ""

    def salient_color(self, obs: dict[str, Any]) -> RGB | None:
        """The colour of what ``obs``, the latest observation, shows that must be remembered
        (e.g. the cue in view), or None when it shows nothing to remember."""
        return None

    @staticmethod
    def color_rgb(color: int) -> RGB:
        """The RGB of the suite's colour index ``color`` (minigrid's palette)."""
        return tuple(int(v) for v in COLORS[COLOR_NAMES[color]])  # type: ignore[return-value]

    # -- gymnasium API ---------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Start an episode: a random one, or ``options["layout"]`` from a batched env."""
        self._requested_layout = (options or {}).get("layout")
        self.episode_return = 0.0
        obs, _ = super().reset(seed=seed)
        return obs, {}

    def _gen_grid(self, width: int, height: int) -> None:
        layout = self._requested_layout
        self._requested_layout = None
        self._build(self._sample_layout() if layout is None else layout)

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an integer in [0, {NUM_ACTIONS}), got {action!r}")
        self.step_count += 1
        reward, terminated = self._apply(int(action))
        truncated = not terminated and self.step_count >= self.max_steps
        self.episode_return += reward
        info: dict[str, Any] = {}
        if terminated or truncated:
            info = {
                **self._episode_info(),
                "episode_return": self.episode_return,
                "episode_length": self.step_count,
            }
        if self.render_mode == "human":
            self.render()
        return self.gen_obs(), reward, terminated, truncated, info

    def gen_obs(self) -> dict[str, Any]:
        """The agent-centred window read from the grid, plus the task's extra fields."""
        view = self.agent_view_size
        half = view // 2
        agent_x, agent_y = self.agent_pos
        image = np.zeros((view, view, 3), dtype=np.uint8)  # outside the grid: unseen
        for i in range(view):
            for j in range(view):
                x, y = agent_x - half + i, agent_y - half + j
                if 0 <= x < self.width and 0 <= y < self.height:
                    cell = self.grid.get(x, y)
                    image[i, j] = (EMPTY, 0, 0) if cell is None else cell.encode()
        image[half, half] = (AGENT, RED, self.agent_dir)
        return {"image": image, **self._extra_obs()}

    def render(self) -> np.ndarray | None:
        """The frame (``rgb_array``), or draw it in a window with the task's caption under it
        (``human``)."""
        if self.render_mode != "human":
            return super().render()
        import pygame
        import pygame.freetype

        frame = np.transpose(self.get_frame(self.highlight, self.tile_size), (1, 0, 2))
        text = self.caption() or self.mission
        font_size = 18
        if self.window is None:
            pygame.freetype.init()
            pygame.display.init()
            pygame.display.set_caption(type(self).__name__)
            self.clock = pygame.time.Clock()
            # pygame's own bundled font: minigrid's SysFont lookup of it warns on every
            # machine that lacks it among the system fonts.
            self._font = pygame.freetype.Font(None, font_size)
        width, height = frame.shape[0], frame.shape[1] + 2 * font_size
        if self.window is None or self.window.get_size() != (width, height):
            self.window = pygame.display.set_mode((width, height))
        self.window.fill((255, 255, 255))
        self.window.blit(pygame.surfarray.make_surface(frame), (0, 0))
        self._font.render_to(self.window, (8, frame.shape[1] + font_size // 2), text,
                             fgcolor=(0, 0, 0))  # fmt: skip
        pygame.event.pump()
        self.clock.tick(self.metadata["render_fps"])
        pygame.display.flip()
        return None

    def get_frame(
        self, highlight: bool = True, tile_size: int = TILE_PIXELS, agent_pov: bool = False
    ) -> np.ndarray:
        """An RGB frame of the ``render_window`` cells around the agent.

        The agent's observation window is highlighted when ``highlight``;
        ``agent_pov`` renders just that window.
        """
        agent_x, agent_y = self.agent_pos
        if agent_pov:
            width = height = self.agent_view_size
            left, top = agent_x - width // 2, agent_y - height // 2
        else:
            width = min(self.render_window[0], self.width)
            height = min(self.render_window[1], self.height)
            left = int(np.clip(agent_x - width // 2, 0, self.width - width))
            top = int(np.clip(agent_y - height // 2, 0, self.height - height))
        window = self.grid.slice(left, top, width, height)
        mask = None
        if highlight and not agent_pov:
            half = self.agent_view_size // 2
            xs, ys = np.meshgrid(np.arange(width) + left, np.arange(height) + top, indexing="ij")
            mask = (np.abs(xs - agent_x) <= half) & (np.abs(ys - agent_y) <= half)
        return window.render(
            tile_size,
            agent_pos=(agent_x - left, agent_y - top),
            agent_dir=self.agent_dir,
            highlight_mask=mask,
        )


def build_segment(
    grid: Any, top: int, length: int, wall: Any, top_object: Any, bottom_object: Any
) -> None:
    """Lay one segment block (see :func:`envs.core.segment_cells`) into ``grid`` at row ``top``.

    Rows ``top`` and ``top + 4`` and the arm rows are walls, row ``top + 2`` is
    the corridor, and the two end objects stand above and below its last cell.
    One wall object is shared by every wall cell, so long blocks stay cheap.
    """
    width = length + 3
    for row in (0, 1, 3, 4):
        grid.horz_wall(0, top + row, width, obj_type=lambda: wall)
    grid.set(0, top + 2, wall)
    grid.set(width - 1, top + 2, wall)
    grid.set(length + 1, top + 1, top_object)
    grid.set(length + 1, top + 3, bottom_object)
