"""Episode videos: the env, a memory panel and a caption, frame by frame.

Shape legend: T steps of an episode, L layers of the memory core, H x W frame height and
width in pixels.

Which episode is recorded: for the suite's tasks, a batched env's episode
(``benv.layout(i)``) replayed in the task's reference env, so the policy sees
exactly the observations it was evaluated on. A gymnasium id (e.g.
``MiniGrid-MemoryS13Random-v0``, or ``module:EnvId``) has no layout to replay:
its episode is played in ``gym.make(id, render_mode="rgb_array")`` seeded as
the batched env seeds its env i (`envs.gym_adapter.env_seeds`), through the adapter's
observation wrapper (`envs.gym_adapter.ObservationFields`), so the policy reads
the fields it was trained on. Any env that renders RGB frames can be recorded;
:func:`check_recordable` says at once when one cannot.

Each frame shows, top to bottom: a caption (step, action, reward, return, and
the task's hidden information, ``ReferenceEnv.caption``), the env around the
agent, and the memory panel of :mod:`agents.memory_panel` (per layer, the past
steps still kept and the steps each has left; the salient steps, such as the
corridor's cue, in their colour).

Long episodes stay practical: frames are written every ``frame_skip`` steps
(plus every salient step, every step after a reward, and the episode's end),
straight to the encoder, so memory stays bounded whatever the episode's
length. MP4s are H.264 through imageio's ffmpeg plugin; GIFs go through
ffmpeg too (a palette per frame), streamed the same way.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from PIL import Image, ImageDraw

import envs
from agents.evaluate import PolicyAgent
from agents.load_run import LoadedRun
from agents.memory_panel import BACKGROUND, LABEL_FONT_SIZE, MemoryPanel, font
from agents.run_config import ConfigError, TrainConfig
from envs.core import ACTION_NAMES
from envs.gym_adapter import SUCCESS_KEYS, ObservationFields, check_gym_env, env_seeds
from envs.last_step import last_step_fields
from envs.reference import RGB, ReferenceEnv

MIN_WIDTH = 512  # frames are at least this wide, so the memory timeline stays readable
CAPTION_HEIGHT = 44
TEXT = (235, 235, 235)
AUTO_MAX_FRAMES = 1000  # automatic frame skipping keeps a time-limit episode under this
UNLIMITED_STEPS = 10_000  # an env without a time limit is recorded for at most this many steps
TRACE_FRAMES = 4  # rendered frames of salient events kept for the span picture


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


# -- the env to record in ------------------------------------------------------------------
class GymRecording(gym.Wrapper):
    """A gymnasium id's env rendering RGB frames, with the observation fields and actions of
    `envs.gym_adapter.GymBatchedEnv` and the task-description methods of a reference env
    (a suite task's, when the id is one; none otherwise)."""

    def __init__(self, env_id: str, env_kwargs: dict[str, Any]):
        spec = check_gym_env(env_id)
        with warnings.catch_warnings():  # gymnasium warns before the creator raises
            warnings.simplefilter("ignore")
            env = gym.make(spec, render_mode="rgb_array", **env_kwargs)
        super().__init__(ObservationFields(env, env_id))
        self.action_start = int(getattr(env.action_space, "start", 0))
        base = env.unwrapped
        self.task = base if isinstance(base, ReferenceEnv) else None
        self.salient_name = self.task.salient_name if self.task else ReferenceEnv.salient_name
        limit = spec.max_episode_steps or getattr(base, "max_steps", None)
        self.max_steps = int(limit) if limit else UNLIMITED_STEPS

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        return self.env.step(action + self.action_start)

    def get_frame(self) -> np.ndarray:
        """[H, W, 3] uint8: a reference env's window around the agent, else ``render()``."""
        return self.task.get_frame() if self.task else self.env.render()

    def caption(self) -> str:
        return self.task.caption() if self.task else ""

    def salient_color(self, obs: dict[str, Any]) -> RGB | None:
        return self.task.salient_color(obs) if self.task else None


def make_recording_env(env: str, env_kwargs: dict[str, Any]) -> Any:
    """The env a run's episodes are recorded in: the reference env of a suite task, else
    :class:`GymRecording` (raises ValueError for an id that cannot be made)."""
    if env in envs.TASKS:
        return envs.make_reference(env, render_mode="rgb_array", **env_kwargs)
    return GymRecording(env, env_kwargs)


def check_recordable(config: TrainConfig) -> None:
    """Raise ConfigError (one line naming the env and why) if the run's episodes cannot be
    recorded: its env must render RGB frames through ``gym.make(id, render_mode="rgb_array")``.
    Cheap enough to call before an evaluation (it makes the env and renders one frame)."""
    if config.env in envs.TASKS:
        return
    recording = None
    try:
        recording = make_recording_env(config.env, dict(config.env_kwargs))
        recording.reset(seed=0)
        frame = recording.get_frame()
    except Exception as error:  # whatever a user's env raises, it cannot be recorded
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        reason = reason.split(" was raised from the environment creator")[0][:200]
        raise ConfigError(f"--video: {config.env} cannot be recorded: made with "
                          f"render_mode='rgb_array', it fails ({reason})") from None  # fmt: skip
    finally:
        if recording is not None:
            recording.close()
    if not (isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3
            and frame.shape[2] == 3):  # fmt: skip
        got = (f"a {frame.dtype} array of shape {frame.shape}" if isinstance(frame, np.ndarray)
               else repr(frame)[:80])  # fmt: skip
        raise ConfigError(f"--video: {config.env} cannot be recorded: made with "
                          f"render_mode='rgb_array', it renders {got}, not RGB frames "
                          "(uint8 [H, W, 3])")  # fmt: skip


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
    draw.text((8, 5), caption[0], fill=TEXT, font=font(13))
    draw.text((8, 24), caption[1], fill=TEXT, font=font(13))
    for x, y, text in labels:  # on a patch of background, legible over the bars
        box = draw.textbbox((x, panel_top + y), text, font=font(LABEL_FONT_SIZE))
        draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=BACKGROUND)
        draw.text((x, panel_top + y), text, fill=(200, 200, 200), font=font(LABEL_FONT_SIZE))
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

    spans: np.ndarray
    """[T + 1, L] predicted span of each step's memory per layer (zeros without spans)."""
    salient: np.ndarray
    """[T + 1, 3] colour of what the task showed to remember at each step, -1 where nothing."""
    max_span: float
    success: bool
    episode_return: float
    title: str
    salient_name: str = ReferenceEnv.salient_name
    """What the salient steps show (``"cue"``, ``"instruction"``, ``"new room"``)."""
    frames: dict[int, np.ndarray] = field(default_factory=dict)
    """Step -> the env's frame [H, W, 3] at the first step, at the first step of the first
    few salient events (runs of salient steps of one colour) and at the last step."""


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
    """One env's observation as the batched env's fields for one env ([1, ...])."""
    return {key: torch.as_tensor(np.asarray(value), device=device)[None]
            for key, value in obs.items()}  # fmt: skip


def _starts_event(salient: RGB | None, previous: RGB | None) -> bool:
    """Whether a salient step begins a new event (not the same thing still in view)."""
    return salient is not None and (previous is None or tuple(salient) != tuple(previous))


def record_episode(
    run: LoadedRun, env: Any, start: dict[str, Any], path: Path, deterministic: bool = True,
    seed: int = 0, frame_skip: int | None = None, fps: float = 15.0,
) -> VideoInfo:  # fmt: skip
    """Play one episode in ``env`` (from :func:`make_recording_env`), started by
    ``env.reset(**start)`` (``{"options": {"layout": ...}}`` or ``{"seed": ...}``), with the
    run's policy (sampling seeded by ``seed``) and write its video to ``path`` (``.mp4`` or
    ``.gif``). ``frame_skip`` None picks one from the time limit (:func:`auto_frame_skip`)."""
    policy, device = run.policy, run.device
    max_steps = int(env.max_steps)
    skip = auto_frame_skip(max_steps) if frame_skip is None else frame_skip
    agent = PolicyAgent(policy, deterministic=deterministic, seed=seed)
    obs, _ = env.reset(**start)
    state = agent.initial_state(1, device)
    episode_starts = torch.ones(1, dtype=torch.bool, device=device)
    env_frame = env.get_frame()
    panel = MemoryPanel.for_policy(policy, max_steps, frame_width(env_frame.shape),
                                   env.salient_name)  # fmt: skip
    size = frame_size(env_frame.shape, panel)
    writer = FrameWriter(path, size, fps)
    frames: dict[int, np.ndarray] = {}
    t, episode_return, last_reward, done, info = 0, 0.0, 0.0, False, {}
    action: int | None = None  # the previous action, for a run that shows it to the agent
    previous_salient: RGB | None = None
    try:
        while True:
            salient = env.salient_color(obs)
            fields = observation_tensors(obs, device)
            if run.config.learner.last_action_reward:
                previous = torch.tensor([0 if action is None else action], device=device)
                fields.update(last_step_fields(previous, torch.tensor([last_reward], device=device),
                                               torch.tensor([action is None], device=device)))
            step = agent.act(fields, state, episode_starts)
            state, episode_starts = step.state, torch.zeros_like(episode_starts)
            panel.update(t, step, salient)
            stopped = not done and t >= max_steps  # an env that does not end by itself
            write = done or stopped or t % skip == 0 or salient is not None or last_reward != 0
            frame = env.get_frame() if write else None
            if t == 0 or (_starts_event(salient, previous_salient) and len(frames) < TRACE_FRAMES):
                frames[t] = frame
            previous_salient = salient
            if done or stopped:
                frames[t] = frame
                outcome = "success" if _success(info, episode_return) else "no success"
                end = f"episode over: {outcome}" if done else "recording stopped"
                caption = (f"step {t}   {end}   return {episode_return:.2f}",
                           env.caption() or run.config.env)  # fmt: skip
                writer.write(compose_frame(frame, panel, caption, size))
                break
            action = int(step.actions[0])
            caption_task = env.caption() or run.config.env
            obs, reward, terminated, truncated, info = env.step(action)
            episode_return += float(reward)
            if frame is not None:
                caption = (f"step {t}   action: {_action_name(action)}   reward {reward:+.2f}"
                           f"   return {episode_return:.2f}", caption_task)  # fmt: skip
                writer.write(compose_frame(frame, panel, caption, size))
            last_reward, done = float(reward), bool(terminated or truncated)
            t += 1
    finally:
        writer.close()
    trace = EpisodeTrace(
        spans=panel.values[: t + 1].copy(), salient=panel.salient[: t + 1].copy(),
        max_span=panel.max_span, success=_success(info, episode_return),
        episode_return=episode_return, salient_name=env.salient_name, frames=frames,
        title=f"{run.config.env}{_settings(run.env_kwargs)}, {policy.kind}, "
              f"step {run.checkpoint['global_step']}",
    )  # fmt: skip
    return VideoInfo(str(path), t, writer.frames, size, trace.success, episode_return, trace)


def _success(info: dict[str, Any], episode_return: float) -> bool:
    """An episode's success as the batched envs report it: the env's own flag at the last
    step, else a positive return (`envs.gym_adapter.GymBatchedEnv`)."""
    for key in SUCCESS_KEYS:
        if key in info:
            return bool(info[key])
    return episode_return > 0


def _action_name(action: int) -> str:
    return ACTION_NAMES[action] if action < len(ACTION_NAMES) else str(action)


def _settings(env_kwargs: dict[str, Any]) -> str:
    """`` (length 1000, ...)`` for a title, or nothing without settings."""
    settings = ", ".join(f"{key} {value}" for key, value in env_kwargs.items())
    return f" ({settings})" if settings else ""


def record_videos(
    run: LoadedRun, count: int, seed: int, deterministic: bool = True, gif: bool = False,
    frame_skip: int | None = None, fps: float = 15.0, prefix: str = "",
) -> list[VideoInfo]:  # fmt: skip
    """Record ``count`` episodes to ``RUN_DIR/videos/<prefix>ep<k>.mp4`` (or ``.gif``), and for
    an Expire-Span policy their span pictures to ``RUN_DIR/plots/<prefix>span-ep<k>.png``.

    The episodes are those the batched env with ``seed`` starts with (one per env): replayed
    from their layouts for the suite's tasks, seeded as the batched env seeds them for
    gymnasium ids (`envs.gym_adapter.env_seeds`). Raises
    ConfigError if the env cannot be recorded (:func:`check_recordable`)."""
    check_recordable(run.config)
    if run.config.env in envs.TASKS:
        batched = run.make_env(num_envs=count, seed=seed, device="cpu")
        batched.reset(seed=seed)
        starts = [{"options": {"layout": batched.layout(index)}} for index in range(count)]
    else:
        starts = [{"seed": env_seed} for env_seed in env_seeds(seed, count)]
    env = make_recording_env(run.config.env, run.env_kwargs)
    videos_dir = run.run_dir.path / "videos"
    videos_dir.mkdir(parents=True, exist_ok=True)
    suffix = ".gif" if gif else ".mp4"
    results = []
    try:
        for index, start in enumerate(starts):
            path = videos_dir / f"{prefix}ep{index:03d}{suffix}"
            info = record_episode(run, env, start, path, deterministic, seed + index,
                                  frame_skip, fps)  # fmt: skip
            if run.policy.kind == "expire_span":
                from agents.plot import plot_span_episode

                plots_dir = run.run_dir.path / "plots"
                plots_dir.mkdir(parents=True, exist_ok=True)
                plot_span_episode(info.trace, plots_dir / f"{prefix}span-ep{index:03d}.png")
            results.append(info)
    finally:
        env.close()
    return results
