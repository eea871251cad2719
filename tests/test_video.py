"""Videos: recorded episodes decode back with the expected frames and size, in mp4 and gif,
with frame skipping, for the suite's tasks and for gymnasium ids that render; the tasks
describe what they show; the memory panel reads the policy's memory right and lets a kept cue
stand out."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import imageio.v2 as imageio
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from test_evaluate import run_cli, train_tiny_run

import envs
from agents.build import build_policy, make_env
from agents.evaluate import ActionStep, PolicyAgent
from agents.load_run import LoadedRun, load_run
from agents.memory_panel import (
    PANEL_TITLE_HEIGHT,
    STRIP_GAP,
    STRIP_HEIGHT,
    TICK_HEIGHT,
    MemoryPanel,
)
from agents.resolve import resolve
from agents.run_config import ConfigError
from agents.run_dir import RunDir
from agents.train_args import TrainArgs
from agents.video import GymRecording, check_recordable, record_episode, record_videos
from envs.core import FORWARD, LEFT
from envs.gym_adapter import GymBatchedEnv, env_seeds

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("video") / "run")


def fresh_run(path: Path, policy: str, env: str = "corridor", **flags) -> LoadedRun:
    """An untrained run of ``policy`` on ``env`` (no training needed to record a video);
    ``flags`` are train_rl flags (task and policy settings)."""
    small = {"d_model": 16, "num_layers": 2, **({} if policy == "lstm" else {"num_heads": 2})}
    flags = {"length": 5, **flags} if env == "corridor" else flags
    config = resolve(TrainArgs(env=env, policy=policy, **small, **flags))
    run_dir = RunDir.create(path, config)
    batched = make_env(config, num_envs=1, device="cpu", seed=0)
    model = build_policy(config, batched, "cpu").eval()
    checkpoint = {"path": "none", "global_step": 0, "update": 0, "wall_time": 0.0}
    return LoadedRun(
        run_dir, config, dict(config.env_kwargs), {}, model, checkpoint, torch.device("cpu")
    )


def decode_mp4(path: str) -> tuple[int, tuple[int, int]]:
    """(frames decoded, (W, H)) of an H.264 mp4."""
    reader = imageio.get_reader(path)
    frames = sum(1 for _ in reader)
    meta = reader.get_meta_data()
    reader.close()
    assert meta["codec"] == "h264"
    return frames, tuple(meta["size"])


def test_mp4_decodes_with_expected_frame_count_and_size(tiny_run):
    loaded = load_run(str(tiny_run))
    (video,) = record_videos(loaded, 1, seed=0, frame_skip=1)
    assert Path(video.path) == tiny_run / "videos" / "ep000.mp4"
    frames, size = decode_mp4(video.path)
    assert video.frames == video.steps + 1 == frames  # one frame per step, and the end
    assert size == video.size and size[0] % 16 == 0 and size[1] % 16 == 0
    assert size[0] >= 512
    picture = tiny_run / "plots" / "span-ep000.png"  # Expire-Span: its span picture too
    assert picture.stat().st_size > 5000


def test_cli_records_videos_and_lists_them_in_eval_json(tiny_run, capsys):
    argv = [str(tiny_run), "--episodes", "8", "--video", "2", "--length", "6", "--threads", "1"]
    status, out, err = run_cli(argv, capsys)
    assert status == 0, err
    summary = json.loads((tiny_run / "eval.json").read_text())
    paths = [Path(video["path"]) for video in summary["videos"]]
    assert [p.name for p in paths] == ["length6-ep000.mp4", "length6-ep001.mp4"]
    for video, path in zip(summary["videos"], paths, strict=True):
        assert decode_mp4(str(path))[0] == video["frames"]
        assert str(path) in out


def test_gif_decodes_with_expected_frame_count(tmp_path):
    run = fresh_run(tmp_path / "lstm", "lstm")
    (video,) = record_videos(run, 1, seed=1, gif=True, frame_skip=1)
    assert video.path.endswith(".gif")
    frames = iio.imread(video.path)  # [N, H, W, 3]
    assert frames.shape[0] == video.steps + 1 == video.frames
    assert (frames.shape[2], frames.shape[1]) == video.size
    assert frames.std() > 10  # a picture, not a blank


@pytest.mark.parametrize(
    ("env", "flags"),
    [
        ("portal", {"num_rooms": 2, "room_length": 3, "max_steps": 30}),
        ("instruction", {"size": 3, "delay_min": 10, "delay_max": 12, "max_steps": 30}),
    ],
)
def test_every_task_records_a_video(env, flags, tmp_path):
    run = fresh_run(tmp_path / env, "expire_span", env, **flags)
    (video,) = record_videos(run, 1, seed=0, frame_skip=1)
    assert video.steps == 30 and decode_mp4(video.path) == (video.frames, video.size)
    assert video.trace.spans.shape[0] == 31 and (video.trace.salient[:, 0] >= 0).any()
    # The span picture's frames: the start, the first salient steps and the end.
    assert {0, 30} <= set(video.trace.frames) and len(video.trace.frames) <= 6
    assert (tmp_path / env / "plots" / "span-ep000.png").is_file()


def test_frame_skipping_keeps_key_frames_and_drops_the_rest(tmp_path):
    run = fresh_run(tmp_path / "trxl", "trxl", length=30, memory_size=8)
    env = envs.make_reference("corridor", render_mode="rgb_array", length=30)
    layout = {"length": 30, "cue": 0, "top": 0, "bottom": 1}
    video = record_episode(run, env, {"options": {"layout": layout}}, tmp_path / "skip.mp4",
                           deterministic=False, seed=2, frame_skip=4)  # fmt: skip
    steps = video.steps
    salient = video.trace.salient[:, 0] >= 0
    wanted = {t for t in range(steps + 1) if t % 4 == 0 or salient[t]} | {steps}
    assert video.frames == len(wanted) < steps + 1
    assert decode_mp4(video.path)[0] == video.frames
    assert salient[0] and not salient[steps]  # the cue is seen at the start only


def test_expire_span_panel_shows_exactly_the_memories_still_alive(tmp_path):
    run = fresh_run(tmp_path / "es", "expire_span", length=30, max_span=8, span_init=0.5,
                    ramp_length=2)  # fmt: skip
    policy = run.policy
    env = make_env(run.config, num_envs=1, device="cpu", seed=0)
    obs = env.reset(seed=0)
    agent = PolicyAgent(policy)
    state = agent.initial_state(1, torch.device("cpu"))
    starts = torch.ones(1, dtype=torch.bool)
    panel = MemoryPanel.for_policy(policy, max_steps=env.max_steps, width=512,
                                   salient_name="cue")  # fmt: skip
    spans = []
    for t in range(20):
        step = agent.act(obs, state, starts)
        state, starts = step.state, torch.zeros_like(starts)
        panel.update(t, step, np.array([200, 0, 0]) if t == 0 else None)  # a cue at t = 0
        spans.append(step.output.spans[0, 0].numpy())  # [L]
        if t == 2:
            early = panel.draw()[0], [0 in panel.kept[layer][0] for layer in range(2)], t
            # The kept cue is labelled with the steps it has left (span - age + ramp).
            left = [spans[0][layer] - 3 + 2 for layer in range(2)]
            texts = [text for _, _, text in panel.draw()[1]]
            assert [f"cue (step 0): {value:.0f} steps left" for value in left] == [
                text for text in texts if text.startswith("cue")]
        obs = env.step(torch.tensor([FORWARD]))[0]
    spans = np.stack(spans)  # [T, L]
    for layer in range(2):
        kept_steps, remaining, _ = panel.kept[layer]
        age = 20 - np.arange(20)  # steps from each memory to the next query
        alive = spans[:, layer] - age > -2  # mask m > 0 for the next query
        assert sorted(kept_steps.tolist()) == np.nonzero(alive)[0].tolist()
        assert np.allclose(np.sort(remaining), np.sort((spans[:, layer] - age)[alive]))
    image, labels = panel.draw()
    assert image.shape == (panel.height, 512, 3) and image.std() > 5
    # Memories kept per layer as the policy counts them, which the state's slots agree with.
    alive = step.memory_alive[0].long().tolist()
    assert [text for _, _, text in labels if text.startswith("kept")] == [
        f"kept: {count}" for count in alive]
    assert alive == [len(panel.kept[layer][0]) for layer in range(2)]
    # The cue's tick under each layer's strip: bright while step 0 is kept, dim once dropped.
    late = image, [0 in panel.kept[layer][0] for layer in range(2)], 19
    assert early[1] == [True, True] and late[1] == [False, False]
    for picture, kept, t in (early, late):
        panel.step = t
        left = panel._x(np.array([t + 1]))[0]
        row = PANEL_TITLE_HEIGHT + STRIP_HEIGHT + 1
        for layer in range(2):
            assert picture[row, left, 0] == (200 if kept[layer] else 70)
            row += STRIP_HEIGHT + TICK_HEIGHT + STRIP_GAP


def test_each_task_captions_its_hidden_information_and_marks_what_to_remember():
    green, red = (0, 255, 0), (255, 0, 0)
    corridor = envs.make_reference("corridor", length=10)
    obs, _ = corridor.reset(options={"layout": {"length": 10, "cue": 1, "top": 1, "bottom": 0}})
    assert corridor.caption() == "cue: green   arms: top green, bottom red"
    shown = []
    for _ in range(4):
        shown.append(corridor.salient_color(obs))
        obs = corridor.step(FORWARD)[0]
    assert shown == [green, green, None, None]  # the cue at x = 1 is in view from x = 1, 2

    portal = envs.make_reference("portal", num_rooms=2, room_length=3)
    obs, _ = portal.reset(options={"layout": {"num_rooms": 2, "room_length": 3,
                                              "correct": [0, 1]}})  # fmt: skip
    assert portal.caption() == "room 1/2   goals 0   portals that lead on: top bottom"
    assert portal.salient_color(obs) == red  # the first room's start
    for _ in range(3):
        obs = portal.step(FORWARD)[0]
        assert portal.salient_color(obs) is None
    obs = portal.step(LEFT)[0]  # the top portal leads on: the second room (green) starts
    assert portal.salient_color(obs) == green and portal.caption().startswith("room 2/2")

    instruction = envs.make_reference("instruction")
    obs, _ = instruction.reset(seed=3)
    color = instruction.objects[instruction.target][2]
    assert obs["instruction"] == color + 1  # shown on the first step
    assert instruction.salient_color(obs) == instruction.color_rgb(color)
    assert instruction.caption().endswith("(shown now)   carried 0/0")
    obs = instruction.step(LEFT)[0]
    assert instruction.salient_color(obs) is None and "(active)" in instruction.caption()


def fake_step(t: int, spans: np.ndarray, ramp: float) -> ActionStep:
    """The step an Expire-Span policy with one layer takes at ``t``, keeping every memory of
    steps 0..t whose span ``spans`` [T] has not run out (ramp included)."""
    made = np.arange(t + 1)
    age = t + 1 - made  # steps from each memory to the next step
    alive = spans[made] - age + ramp > 0
    tensors = {"memory_valid_0": torch.ones(1, int(alive.sum()), dtype=torch.bool),
               "memory_age_0": torch.as_tensor(age[alive])[None]}  # fmt: skip
    output = SimpleNamespace(spans=torch.tensor([[[spans[t]]]]))  # [1, 1, L]
    return ActionStep(torch.zeros(1), SimpleNamespace(tensors=tensors),
                      torch.tensor([[float(alive.sum())]]), output)  # fmt: skip


def test_a_kept_cue_towers_over_the_memories_about_to_go():
    """A thousand steps into the corridor, the cue with 600 steps left of an L_max of 3016 is
    drawn at least three quarters of the strip high, in its colour, while the corridor steps
    with a few steps left stay under half."""
    config = SimpleNamespace(max_span=3016, ramp_length=8)
    panel = MemoryPanel("expire_span", config, 1, max_steps=1200, width=512, salient_name="cue")
    spans = np.full(1001, 15.0)
    spans[0] = 1600.0
    red = np.array([255, 0, 0])
    for t in range(1001):
        panel.update(t, fake_step(t, spans, 8.0), tuple(red) if t == 0 else None)
    image, labels = panel.draw()
    strip = image[PANEL_TITLE_HEIGHT : PANEL_TITLE_HEIGHT + STRIP_HEIGHT]  # [S, W, 3]
    height = (strip != image[0, -1]).any(axis=2).sum(axis=0)  # [W] non-background rows
    cue = (strip == red).all(axis=2).any(axis=0)  # [W] columns of the cue's bar
    assert cue.any() and (strip == red).all(axis=2).sum(axis=0).max() >= 0.75 * STRIP_HEIGHT
    recent = panel._x(np.array([0]))[0] - 40  # the last few steps, at the right
    assert 0 < height[recent:].max() - 1 <= 0.5 * STRIP_HEIGHT  # (+1: a scale line)
    assert ("cue (step 0): 607 steps left" in [text for _, _, text in labels])


def test_a_gym_id_replays_the_batched_envs_episode_with_the_same_fields(tmp_path):
    env_id = "MiniGrid-MemoryS7-v0"
    batched = GymBatchedEnv(env_id, 2)
    obs = batched.reset(seed=5)
    recording = GymRecording(env_id, {})
    first, _ = recording.reset(seed=env_seeds(5, 2)[1])  # as the batched env seeds env 1
    assert first.keys() == obs.keys()
    for key, value in first.items():
        assert torch.equal(torch.as_tensor(value), obs[key][1])  # values and dtypes
    assert recording.max_steps == batched.max_steps and recording.caption() == ""
    run = fresh_run(tmp_path / "minigrid", "expire_span", env_id)
    (video,) = record_videos(run, 1, seed=0, frame_skip=50)
    assert 1 <= video.steps <= batched.max_steps
    assert decode_mp4(video.path) == (video.frames, video.size) and video.size[0] >= 512
    assert (tmp_path / "minigrid" / "plots" / "span-ep000.png").is_file()


class NoPicture(gym.Env):
    """Takes ``render_mode="rgb_array"`` but renders nothing."""

    metadata = {"render_modes": ["rgb_array"]}  # noqa: RUF012 (gymnasium's convention)
    observation_space = gym.spaces.Discrete(2)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, render_mode: str | None = None):
        self.render_mode = render_mode

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[int, dict]:
        super().reset(seed=seed)
        return 0, {}

    def step(self, action: int) -> tuple[int, float, bool, bool, dict]:
        return 0, 0.0, True, False, {}

    def render(self) -> None:
        return None


if "ExpireRLTest/NoPicture-v0" not in gym.registry:
    gym.register("ExpireRLTest/NoPicture-v0", entry_point=NoPicture, disable_env_checker=True)


@pytest.mark.parametrize(
    ("env_id", "reason"),
    [("tiny_gym_tasks:CueDict-v0", "unexpected keyword argument 'render_mode'"),
     ("ExpireRLTest/NoPicture-v0", "it renders None, not RGB frames")],
)  # fmt: skip
def test_an_env_that_cannot_render_is_refused_at_once_in_one_line(env_id, reason, tmp_path,
                                                                 monkeypatch):  # fmt: skip
    monkeypatch.syspath_prepend(str(FIXTURES))  # tiny_gym_tasks: tasks that do not render
    run = fresh_run(tmp_path / "cue", "lstm", env_id)
    with pytest.raises(ConfigError) as error:
        check_recordable(run.config)
    message = str(error.value)
    assert "\n" not in message and reason in message
    assert message.startswith(f"--video: {env_id} cannot be recorded")
    with pytest.raises(ConfigError):
        record_videos(run, 1, seed=0)
    assert not (tmp_path / "cue" / "videos").exists()  # refused before anything was written
    for env in ("corridor", "MiniGrid-MemoryS7-v0"):  # these render
        check_recordable(fresh_run(tmp_path / env, "lstm", env).config)
