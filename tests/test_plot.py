"""Plots: a tiny run's PNGs are written and not blank, runs overlay, the span picture draws
and its caption sets the cue's span against the other steps', and bad input is one clean
line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_evaluate import ROOT, train_tiny_run

from agents.plot import main, plot_span_episode, salient_events, span_summary
from agents.video import EpisodeTrace


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("plot")
    expire_span = train_tiny_run(base / "expire_span")
    lstm = train_tiny_run(base / "lstm", "--policy", "lstm")  # no memory statistics
    return expire_span, lstm


def assert_png_picture(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 5000
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300 and pixels.std() > 10


def test_one_run_gets_its_plots(runs, capsys):
    run, _ = runs
    assert main([str(run)]) == 0
    for name in ("learning", "memory", "losses"):
        assert_png_picture(run / "plots" / f"{name}.png")
    assert str(run / "plots" / "learning.png") in capsys.readouterr().out


def test_runs_overlay_into_one_set_of_plots(runs, tmp_path):
    output = tmp_path / "compare"
    argv = [str(runs[0]), str(runs[1]), "--output-dir", str(output), "--labels", "ES", "LSTM"]
    assert main(argv) == 0
    assert sorted(p.name for p in output.iterdir()) == ["learning.png", "losses.png",
                                                        "memory.png"]  # fmt: skip
    for path in output.iterdir():
        assert_png_picture(path)


def corridor_trace(steps: int = 60, layers: int = 2) -> EpisodeTrace:
    """An episode whose red cue (steps 0 and 1) is kept for 90 steps, every other step 5."""
    spans = np.full((steps, layers), 5.0)
    spans[0] = 90.0
    spans[1, 0] = 4.0  # the cue's second step: the first one already holds it
    salient = np.full((steps, 3), -1, dtype=np.int16)
    salient[:2] = (255, 0, 0)
    frames = {0: np.full((20, 40, 3), 80, np.uint8), steps - 1: np.zeros((20, 40, 3), np.uint8)}
    return EpisodeTrace(spans, salient, max_span=100.0, success=True, episode_return=1.0,
                        title="corridor", salient_name="cue", frames=frames)  # fmt: skip


def test_span_picture_of_one_episode(tmp_path):
    for layers in (1, 3):
        trace = corridor_trace(layers=layers)
        assert_png_picture(plot_span_episode(trace, tmp_path / f"span{layers}.png"))
    trace.frames = {}  # without frames: just the spans
    assert_png_picture(plot_span_episode(trace, tmp_path / "no-frames.png"))


def test_span_caption_sets_the_cue_against_the_other_steps():
    trace = corridor_trace(layers=1)
    assert span_summary(trace.spans, trace.salient, "cue") == (
        "cue (step 0): span 90; other steps: median 5")
    assert span_summary(corridor_trace(layers=2).spans, trace.salient, "cue").endswith(
        "other steps: median 5 (longest over the 2 layers)")
    # Instructions shown three times (two of one colour, one after the other, are two events).
    salient = np.full((30, 3), -1, dtype=np.int16)
    salient[[3, 10, 11]] = (0, 0, 255)
    salient[12] = (255, 0, 0)
    assert [event.tolist() for event in salient_events(salient)] == [[3], [10, 11], [12]]
    spans = np.full((30, 1), 2.0)
    spans[[3, 10, 11, 12], 0] = [40.0, 7.0, 60.0, 20.0]
    assert span_summary(spans, salient, "instruction") == (
        "instruction (3 times): median span 40, longest 60 (step 11); other steps: median 2")
    assert span_summary(spans, np.full((30, 3), -1), "cue") == "span: median 2 over 30 steps"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["{missing}"], "does not exist"),
        (["{plain}"], "not a run directory"),
        (["{empty}"], "has no metrics yet"),
        (["{run}", "--labels", "a", "b"], "2 labels for 1 runs"),
        ([], "missing RUN_DIR"),
        (["{run}", "--bogus"], "--bogus"),
    ],
)
def test_bad_input_is_one_line_error_and_exit_2(argv, expected, runs, tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((runs[0] / "config.json").read_text())
    paths = {"missing": tmp_path / "nowhere", "plain": tmp_path / "plain", "empty": empty,
             "run": runs[0]}  # fmt: skip
    try:
        status = main([arg.format(**paths) for arg in argv])
    except SystemExit as exit_:
        status = exit_.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]


def test_module_runs_from_the_command_line(runs, tmp_path):
    command = [sys.executable, "-m", "agents.plot", str(runs[0]), "--output-dir", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert_png_picture(tmp_path / "learning.png")
