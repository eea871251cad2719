"""Episode videos: the reference (minigrid) env, a memory panel and a caption, frame by frame.

Shape legend: T steps of an episode, L layers of the memory core, V view size,
H x W frame height and width in pixels.

A recorded episode replays a batched env's episode (``benv.layout(i)``) in the
reference env, so the policy sees exactly the observations it was evaluated
on; the policy is stepped on the reference env's observations. Each frame
shows, top to bottom: a caption (step, action, reward, return, and the
task's cue or instruction), the window of the env around the agent, and a
memory panel drawn from the policy's state:

- Expire-Span: per layer, every past step still in memory as a bar at its
  age on a timeline (now at the right, the episode's start at the left; the
  scale is logarithmic in age, so recent steps stay readable in episodes of
  thousands of steps), as tall as its remaining span ``e_i - age`` (ramp
  included); bars turn orange while a memory fades on its ramp and vanish
  when it expires. The cue keeps a tall bar while corridor steps fade.
- Transformer-XL: the same timeline, showing its fixed window of the last M steps.
- LSTM: the hidden state's norm per layer at every step so far.

Steps where the task shows what must be remembered (the corridor's cue, an
instruction, a new portal room) are ticked under each timeline in that colour.

Long episodes stay practical: frames are written every ``frame_skip`` steps
(plus every step that shows something to remember, follows a reward, or ends
the episode), straight to the encoder, so memory stays bounded whatever the
episode's length. MP4s are H.264 through imageio's ffmpeg plugin; GIFs go
through ffmpeg too (a palette per frame), streamed the same way.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from minigrid.core.constants import COLORS
from PIL import Image, ImageDraw, ImageFont

import envs
from agents.evaluate import ActionStep, LoadedRun, PolicyAgent
from agents.run_config import ConfigError
from envs.core import ACTION_NAMES, COLOR_NAMES
from envs.corridor import CorridorEnv
from envs.instruction import InstructionEnv
from envs.last_step import last_step_fields
from envs.portal import PortalEnv

MIN_WIDTH = 512  # frames are at least this wide, so the memory timeline stays readable
CAPTION_HEIGHT = 44
PANEL_TITLE_HEIGHT = 18
STRIP_HEIGHT = 44
TICK_HEIGHT = 5
STRIP_GAP = 8
LABEL_WIDTH = 92  # left margin of the timeline, for the layer label
MIN_TIMELINE = 24  # the timeline spans at least this many steps
AGE_SCALE = 8.0  # the timeline is linear in age below this many steps, logarithmic above
BACKGROUND = (24, 24, 28)
TEXT = (235, 235, 235)
FADING = np.array([255, 140, 30])  # memories on the ramp, scaled by their mask value
MIN_BAR_WIDTH = 3  # pixel columns per kept memory at least, so a lone old memory shows
AUTO_MAX_FRAMES = 1000  # automatic frame skipping keeps a time-limit episode under this


@functools.lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable built-in font


def _viridis(values: np.ndarray) -> np.ndarray:
    """[K] values in [0, 1] -> [K, 3] uint8 colours."""
    from matplotlib import colormaps

    return (colormaps["viridis"](np.clip(values, 0.0, 1.0))[:, :3] * 255).astype(np.uint8)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


# -- what the task shows -----------------------------------------------------------------
def salient_color(env: Any, obs: dict[str, Any]) -> np.ndarray | None:
    """The colour of what the task asks to remember, if the observation shows it, else None."""
    if isinstance(env, CorridorEnv):
        if abs(env.agent_pos[0] - 1) <= env.config.view_size // 2:  # the cue stands at x = 1
            return COLORS[COLOR_NAMES[env.cue]]
    elif isinstance(env, InstructionEnv):
        token = int(obs.get("instruction", 0))
        if token:
            return COLORS[COLOR_NAMES[token - 1]]
    elif isinstance(env, PortalEnv) and env.agent_pos[0] == 1:
        return COLORS[COLOR_NAMES[env.room]]  # a room's start tells how the last portal went
    return None


def task_caption(env: Any) -> str:
    """The task's hidden information in words (cue, room, instruction)."""
    if isinstance(env, CorridorEnv):
        return (f"cue: {COLOR_NAMES[env.cue]}   arms: top {COLOR_NAMES[env.top]}, "
                f"bottom {COLOR_NAMES[env.bottom]}")  # fmt: skip
    if isinstance(env, PortalEnv):
        return f"room {env.room + 1}/{env.config.num_rooms}   goals {env.goals}"
    if isinstance(env, InstructionEnv):
        color = COLOR_NAMES[env.objects[env.target][2]]
        state = ("shown now" if env.token else "active") if env.active else "done, waiting"
        return f"instruction: {color} ({state})   carried {env.carried}/{env.resolved}"
    return ""


# -- the memory panel ------------------------------------------------------------------
class MemoryPanel:
    """Keeps what the panel needs across an episode and draws it ([H, W, 3] uint8).

    ``update(t, step, salient)`` is called after the policy read the observation of step t
    (``salient``: the colour of what that observation showed to remember, or None).
    Histories are preallocated for ``max_steps + 1`` steps, so memory is bounded.
    """

    def __init__(self, kind: str, config: Any, num_layers: int, max_steps: int, width: int):
        self.kind, self.num_layers, self.width = kind, num_layers, width
        self.max_span = float(getattr(config, "max_span", 0) or 0)
        self.ramp = float(getattr(config, "ramp_length", 1) or 1)
        self.window = float(getattr(config, "memory_size", 0) or 0)
        self.height = PANEL_TITLE_HEIGHT + num_layers * (STRIP_HEIGHT + TICK_HEIGHT + STRIP_GAP)
        self.height += 14  # the timeline's axis labels
        self.values = np.zeros((max_steps + 2, num_layers), dtype=np.float32)  # spans or norms
        self.salient = np.zeros((max_steps + 2, 3), dtype=np.int16) - 1  # [T, 3] colour or -1
        self.kept: list[tuple[np.ndarray, np.ndarray]] = []  # per layer: steps, remaining
        self.step = 0

    @classmethod
    def for_policy(cls, policy: Any, max_steps: int, width: int) -> MemoryPanel:
        return cls(policy.kind, policy.config, policy.config.num_layers, max_steps, width)

    def update(self, t: int, step: ActionStep, salient: np.ndarray | None) -> None:
        self.step = t
        if salient is not None:
            self.salient[t] = salient
        tensors = step.state.tensors
        if self.kind == "lstm":
            hidden = tensors["hidden"][0].float()  # [L, D]
            self.values[t] = hidden.norm(dim=-1).cpu().numpy()
            return
        if step.output is not None and step.output.spans.shape[-1] > 0:
            self.values[t] = step.output.spans[0, 0].float().cpu().numpy()  # [L]
        self.kept = []
        for layer in range(self.num_layers):
            valid = tensors[f"memory_valid_{layer}"][0].cpu().numpy()  # [M]
            age = tensors[f"memory_age_{layer}"][0].cpu().numpy()[valid]  # steps to the next
            steps = t + 1 - age  # the episode step each kept memory was made at
            if self.kind == "expire_span":
                remaining = self.values[steps, layer] - age
            else:
                remaining = self.window - age
            self.kept.append((steps, remaining))

    # -- drawing --
    def _bars(self, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(steps [K], height fractions [K], colours [K, 3]) of one layer's strip."""
        if self.kind == "lstm":
            steps = np.arange(self.step + 1)
            norms = self.values[: self.step + 1, layer]
            top = max(float(norms.max()), 1e-6)
            return steps, norms / top, _viridis(norms / top)
        steps, remaining = self.kept[layer]
        if self.kind == "expire_span":
            # Square-root scale: a span of a few percent of L_max still shows.
            left = np.clip(remaining + self.ramp, 0, None)
            fraction = np.sqrt(left / (self.max_span + self.ramp))
            colors = _viridis(remaining / self.max_span)
            mask = np.clip(1 + remaining / self.ramp, 0, 1)  # m of the next query
            fading = remaining < 0
            colors[fading] = (FADING[None] * (0.35 + 0.65 * mask[fading, None])).astype(np.uint8)
        else:
            fraction = remaining / max(self.window, 1.0)
            colors = _viridis(fraction)
        return steps, np.clip(fraction, 0.03, 1.0), colors

    def _x(self, ages: np.ndarray, plot_width: int) -> np.ndarray:
        """Pixel column of the right edge of steps ``ages`` steps ago (0 = now, at the right).

        The axis is logarithmic in age (linear over the last AGE_SCALE steps), so the recent
        steps stay readable while the episode's first step, thousands of steps ago, is still
        on the left edge."""
        oldest = max(self.step, MIN_TIMELINE - 1) + 1
        fraction = np.log1p(ages / AGE_SCALE) / math.log1p(oldest / AGE_SCALE)
        return LABEL_WIDTH + np.round(plot_width * (1 - fraction)).astype(np.int64)

    def _columns(
        self, left: np.ndarray, right: np.ndarray, fraction: np.ndarray, colors: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Bar height in pixels [W] and colour [W, 3] of every pixel column; bar k covers
        columns left[k] .. right[k] - 2 (at least MIN_BAR_WIDTH), and the tallest bar wins a
        column."""
        order = np.argsort(fraction, kind="stable")  # rank r: the r-th shortest bar
        widths = np.maximum(right[order] - 1 - left[order], MIN_BAR_WIDTH)  # [K]
        starts = np.repeat(left[order], widths)  # one entry per covered column
        offsets = np.arange(widths.sum()) - np.repeat(np.cumsum(widths) - widths, widths)
        rank = np.full(self.width, -1, dtype=np.int64)
        np.maximum.at(rank, np.clip(starts + offsets, 0, self.width - 1),
                      np.repeat(np.arange(len(order)), widths))  # fmt: skip
        covered = rank >= 0
        heights = np.zeros(self.width, dtype=np.int64)
        column_color = np.zeros((self.width, 3), dtype=np.uint8)
        heights[covered] = np.round(fraction[order][rank[covered]] * STRIP_HEIGHT)
        column_color[covered] = colors[order][rank[covered]]
        return heights, column_color

    def draw(self) -> tuple[np.ndarray, list[tuple[int, int, str]]]:
        """The panel's pixels and its text labels (x, y, text), drawn later with the caption."""
        image = np.zeros((self.height, self.width, 3), dtype=np.uint8)
        image[:] = BACKGROUND
        labels = [(6, 2, self.title())]
        plot_width = self.width - LABEL_WIDTH - 8
        salient_steps = np.nonzero(self.salient[: self.step + 1, 0] >= 0)[0]
        start_x = max(int(self._x(np.array([self.step + 1]), plot_width)[0]) - 1, 0)
        top = PANEL_TITLE_HEIGHT
        for layer in range(self.num_layers):
            steps, fraction, colors = self._bars(layer)
            ages = self.step - steps  # [K]
            right, left = self._x(ages, plot_width), self._x(ages + 1, plot_width)
            column_height, column_color = self._columns(left, right, fraction, colors)
            rows = np.arange(STRIP_HEIGHT)[:, None]  # [S, 1]
            filled = rows >= STRIP_HEIGHT - column_height[None, :]  # [S, W]
            strip = image[top : top + STRIP_HEIGHT]
            strip[:, start_x] = 90  # the episode's start
            strip[filled] = np.broadcast_to(column_color[None], (*filled.shape, 3))[filled]
            ticks = image[top + STRIP_HEIGHT + 1 : top + STRIP_HEIGHT + 1 + TICK_HEIGHT]
            salient_ages = self.step - salient_steps
            # A cue still in memory is bright (the LSTM's strip covers every step).
            shades = np.where(np.isin(salient_steps, steps), 1.0, 0.35)
            for step, low, high, scale in zip(
                salient_steps,
                self._x(salient_ages + 1, plot_width),
                self._x(salient_ages, plot_width),
                shades,
                strict=True,
            ):
                colour = (self.salient[step] * scale).astype(np.uint8)
                ticks[:, low : max(high - 1, low + MIN_BAR_WIDTH)] = colour
            labels.append((6, top + 4, f"layer {layer}"))
            if self.kind != "lstm":
                labels.append((6, top + 20, f"kept: {len(steps)}"))
            else:
                labels.append((6, top + 20, f"|h| {self.values[self.step, layer]:.2f}"))
            top += STRIP_HEIGHT + TICK_HEIGHT + STRIP_GAP
        labels.append((start_x - 14, top - 4, "start"))
        for age in (10, 100, 1000, 10000):
            x = int(self._x(np.array([age]), plot_width)[0])
            if age <= self.step and start_x + 60 < x < self.width - 70:
                image[top - 10 : top - 6, x] = 160
                labels.append((x - 12, top - 4, f"{age} ago"))
        labels.append((self.width - 34, top - 4, "now"))
        return image, labels

    def title(self) -> str:
        if self.kind == "expire_span":
            return ("memory: past steps still kept, bar = remaining span "
                    f"(L_max {self.max_span:.0f}); orange = expiring")  # fmt: skip
        if self.kind == "trxl":
            return f"memory: Transformer-XL window of the last {self.window:.0f} steps"
        return "memory: LSTM hidden-state norm at each step"


# -- frames and writers ----------------------------------------------------------------
class FrameWriter:
    """Streams RGB frames ([H, W, 3] uint8, H and W multiples of 16) to an mp4 or a gif."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float):
        self.path, self.frames = path, 0
        width, height = size
        if path.suffix == ".gif":
            import imageio_ffmpeg

            palette = ("split[a][b];[a]palettegen=stats_mode=single:reserve_transparent=0[p];"
                       "[b][p]paletteuse=new=1")  # fmt: skip
            self._gif = imageio_ffmpeg.write_frames(
                str(path), (width, height), fps=fps, codec="gif", pix_fmt_out="pal8",
                macro_block_size=1, ffmpeg_log_level="error",
                output_params=["-filter_complex", palette],
            )  # fmt: skip
            self._gif.send(None)
            self._mp4 = None
        else:
            import imageio.v2 as imageio

            self._gif = None
            self._mp4 = imageio.get_writer(
                str(path), format="FFMPEG", mode="I", fps=fps, codec="libx264",
                pixelformat="yuv420p", macro_block_size=16, ffmpeg_log_level="error",
            )  # fmt: skip

    def write(self, frame: np.ndarray) -> None:
        if self._gif is not None:
            self._gif.send(np.ascontiguousarray(frame))
        else:
            self._mp4.append_data(frame)
        self.frames += 1

    def close(self) -> None:
        if self._gif is not None:
            self._gif.close()
        else:
            self._mp4.close()


def compose_frame(
    env_frame: np.ndarray, panel: MemoryPanel, caption: tuple[str, str], size: tuple[int, int]
) -> np.ndarray:
    """Caption over the env window over the memory panel, on a ``size`` (W, H) canvas."""
    width, height = size
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    left = (width - env_frame.shape[1]) // 2
    canvas.paste(Image.fromarray(env_frame), (left, CAPTION_HEIGHT))
    panel_top = CAPTION_HEIGHT + env_frame.shape[0] + 6
    panel_pixels, labels = panel.draw()
    canvas.paste(Image.fromarray(panel_pixels), (0, panel_top))
    draw = ImageDraw.Draw(canvas)
    font = _font(13)
    draw.text((8, 5), caption[0], fill=TEXT, font=font)
    draw.text((8, 24), caption[1], fill=TEXT, font=font)
    for x, y, text in labels:
        draw.text((x, panel_top + y), text, fill=(200, 200, 200), font=_font(11))
    return np.asarray(canvas)


def frame_width(env_frame_shape: tuple[int, ...]) -> int:
    """W of the video's frames: the env window's width, at least MIN_WIDTH, a multiple of 16."""
    return _round_up(max(env_frame_shape[1], MIN_WIDTH), 16)


def frame_size(env_frame_shape: tuple[int, ...], panel: MemoryPanel) -> tuple[int, int]:
    """(W, H) of the video's frames, multiples of 16 (what H.264 encoders want)."""
    width = frame_width(env_frame_shape)
    height = _round_up(CAPTION_HEIGHT + env_frame_shape[0] + 6 + panel.height, 16)
    return width, height


def auto_frame_skip(max_steps: int) -> int:
    """Frame skipping that keeps an episode as long as the time limit under ~1000 frames."""
    return max(1, math.ceil(max_steps / AUTO_MAX_FRAMES))


# -- recording -----------------------------------------------------------------------------
@dataclass
class EpisodeTrace:
    """One recorded episode, for the span picture (``agents.plot.plot_span_episode``)."""

    images: np.ndarray
    """[T + 1, V, V, 3] uint8 observations (minigrid cells)."""
    spans: np.ndarray
    """[T + 1, L] predicted span of each step's memory per layer (zeros without spans)."""
    salient: np.ndarray
    """[T + 1, 3] colour of what the task showed to remember at each step, -1 where nothing."""
    max_span: float
    success: bool
    episode_return: float
    title: str


@dataclass
class VideoInfo:
    """What ``record_episode`` wrote."""

    path: str
    steps: int
    frames: int
    size: tuple[int, int]
    """(W, H) of the frames."""
    success: bool
    episode_return: float
    trace: EpisodeTrace


def observation_tensors(obs: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """A reference env's observation as the batched env's fields for one env ([1, ...])."""
    return {key: torch.as_tensor(np.asarray(value), device=device)[None]
            for key, value in obs.items()}  # fmt: skip


def record_episode(
    run: LoadedRun, env: Any, layout: dict[str, Any], path: Path, deterministic: bool = True,
    seed: int = 0, frame_skip: int | None = None, fps: float = 15.0,
) -> VideoInfo:  # fmt: skip
    """Play the episode ``layout`` in the reference ``env`` with the run's policy and write
    its video to ``path`` (``.mp4`` or ``.gif``). ``frame_skip`` None picks one from the time
    limit (:func:`auto_frame_skip`)."""
    policy, device = run.policy, run.device
    max_steps = int(env.max_steps)
    skip = auto_frame_skip(max_steps) if frame_skip is None else frame_skip
    agent = PolicyAgent(policy, deterministic=deterministic, seed=seed)
    obs, _ = env.reset(options={"layout": layout})
    view = np.asarray(obs["image"]).shape[0]
    images = np.zeros((max_steps + 1, view, view, 3), dtype=np.uint8)
    state = agent.initial_state(1, device)
    episode_starts = torch.ones(1, dtype=torch.bool, device=device)
    env_frame = env.get_frame()
    panel = MemoryPanel.for_policy(policy, max_steps, frame_width(env_frame.shape))
    size = frame_size(env_frame.shape, panel)
    writer = FrameWriter(path, size, fps)
    t, episode_return, last_reward, done, info = 0, 0.0, 0.0, False, {}
    action: int | None = None  # the previous action, for a run that shows it to the agent
    try:
        while True:
            images[t] = obs["image"]
            salient = salient_color(env, obs)
            fields = observation_tensors(obs, device)
            if run.config.learner.last_action_reward:
                previous = torch.tensor([0 if action is None else action], device=device)
                fields.update(last_step_fields(previous, torch.tensor([last_reward], device=device),
                                               torch.tensor([action is None], device=device)))
            step = agent.act(fields, state, episode_starts)
            state, episode_starts = step.state, torch.zeros_like(episode_starts)
            panel.update(t, step, salient)
            write = done or t % skip == 0 or salient is not None or last_reward != 0
            frame = env.get_frame() if write else None
            if done:
                outcome = "success" if info.get("success") else "no success"
                caption = (f"step {t}   episode over: {outcome}   return {episode_return:.2f}",
                           task_caption(env))  # fmt: skip
                writer.write(compose_frame(frame, panel, caption, size))
                break
            action = int(step.actions[0])
            caption_task = task_caption(env)
            obs, reward, terminated, truncated, info = env.step(action)
            episode_return += float(reward)
            if frame is not None:
                caption = (f"step {t}   action: {ACTION_NAMES[action]}   reward {reward:+.2f}"
                           f"   return {episode_return:.2f}", caption_task)  # fmt: skip
                writer.write(compose_frame(frame, panel, caption, size))
            last_reward, done = float(reward), terminated or truncated
            t += 1
    finally:
        writer.close()
    trace = EpisodeTrace(
        images=images[: t + 1], spans=panel.values[: t + 1].copy(),
        salient=panel.salient[: t + 1].copy(), max_span=panel.max_span,
        success=bool(info.get("success")), episode_return=episode_return,
        title=f"{run.config.env} ({_settings(run.env_kwargs)}), {policy.kind}, "
              f"step {run.checkpoint['global_step']}",
    )  # fmt: skip
    return VideoInfo(str(path), t, writer.frames, size, trace.success, episode_return, trace)


def _settings(env_kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in env_kwargs.items())


def record_videos(
    run: LoadedRun, count: int, seed: int, deterministic: bool = True, gif: bool = False,
    frame_skip: int | None = None, fps: float = 15.0, prefix: str = "",
) -> list[VideoInfo]:  # fmt: skip
    """Record ``count`` episodes to ``RUN_DIR/videos/<prefix>ep<k>.mp4`` (or ``.gif``), and for
    an Expire-Span policy their span pictures to ``RUN_DIR/plots/<prefix>span-ep<k>.png``.

    The episodes are those the batched env with ``seed`` starts with (one per env)."""
    if run.config.env not in envs.TASKS:
        raise ConfigError(f"videos need one of the suite's tasks ({', '.join(envs.TASKS)}), "
                         f"not {run.config.env}")  # fmt: skip
    batched = run.make_env(num_envs=count, seed=seed, device="cpu")
    batched.reset(seed=seed)
    layouts = [batched.layout(index) for index in range(count)]
    env = envs.make_reference(run.config.env, render_mode="rgb_array", **run.env_kwargs)
    videos_dir = run.run_dir.path / "videos"
    videos_dir.mkdir(parents=True, exist_ok=True)
    suffix = ".gif" if gif else ".mp4"
    results = []
    for index, layout in enumerate(layouts):
        path = videos_dir / f"{prefix}ep{index:03d}{suffix}"
        info = record_episode(run, env, layout, path, deterministic, seed + index, frame_skip,
                              fps)  # fmt: skip
        if run.policy.kind == "expire_span":
            from agents.plot import plot_span_episode

            plots_dir = run.run_dir.path / "plots"
            plots_dir.mkdir(parents=True, exist_ok=True)
            plot_span_episode(info.trace, plots_dir / f"{prefix}span-ep{index:03d}.png")
        results.append(info)
    env.close()
    return results
