"""Videos: recorded episodes decode back with the expected frames and size, in mp4 and gif,
with frame skipping; the memory panel reads the policy's memory right."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v2 as imageio
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from test_evaluate import run_cli, train_tiny_run

import envs
from agents.build import build_policy, make_env
from agents.evaluate import LoadedRun, PolicyAgent, load_run
from agents.resolve import resolve
from agents.run_dir import RunDir
from agents.train_args import TrainArgs
from agents.video import (
    LABEL_WIDTH,
    PANEL_TITLE_HEIGHT,
    STRIP_GAP,
    STRIP_HEIGHT,
    TICK_HEIGHT,
    MemoryPanel,
    record_episode,
    record_videos,
)
from envs.core import FORWARD


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
    assert video.trace.images.shape[0] == 31 and (video.trace.salient[:, 0] >= 0).any()


def test_frame_skipping_keeps_key_frames_and_drops_the_rest(tmp_path):
    run = fresh_run(tmp_path / "trxl", "trxl", length=30, memory_size=8)
    env = envs.make_reference("corridor", render_mode="rgb_array", length=30)
    layout = {"length": 30, "cue": 0, "top": 0, "bottom": 1}
    video = record_episode(run, env, layout, tmp_path / "skip.mp4", deterministic=False, seed=2,
                           frame_skip=4)  # fmt: skip
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
    panel = MemoryPanel.for_policy(policy, max_steps=env.max_steps, width=512)
    spans = []
    for t in range(20):
        step = agent.act(obs, state, starts)
        state, starts = step.state, torch.zeros_like(starts)
        panel.update(t, step, np.array([200, 0, 0]) if t == 0 else None)  # a cue at t = 0
        spans.append(step.output.spans[0, 0].numpy())  # [L]
        if t == 2:
            early = panel.draw()[0], [0 in panel.kept[layer][0] for layer in range(2)], t
        obs = env.step(torch.tensor([FORWARD]))[0]
    spans = np.stack(spans)  # [T, L]
    for layer in range(2):
        kept_steps, remaining = panel.kept[layer]
        age = 20 - np.arange(20)  # steps from each memory to the next query
        alive = spans[:, layer] - age > -2  # mask m > 0 for the next query
        assert sorted(kept_steps.tolist()) == np.nonzero(alive)[0].tolist()
        assert np.allclose(np.sort(remaining), np.sort((spans[:, layer] - age)[alive]))
    image, labels = panel.draw()
    assert image.shape == (panel.height, 512, 3) and image.std() > 5
    assert any("kept" in text for _, _, text in labels)
    # The cue's tick under each layer's strip: bright while step 0 is kept, dim once dropped.
    late = image, [0 in panel.kept[layer][0] for layer in range(2)], 19
    assert early[1] == [True, True] and late[1] == [False, False]
    for picture, kept, t in (early, late):
        panel.step = t
        left = panel._x(np.array([t + 1]), 512 - LABEL_WIDTH - 8)[0]
        row = PANEL_TITLE_HEIGHT + STRIP_HEIGHT + 1
        for layer in range(2):
            assert picture[row, left, 0] == (200 if kept[layer] else 70)
            row += STRIP_HEIGHT + TICK_HEIGHT + STRIP_GAP
