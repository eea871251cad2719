"""Evaluation progress: `evaluate` reports episodes done, the running success rate and the
time left at its check points, ending at its result; the display shows it as a bar on a
terminal, as an occasional plain line elsewhere, and not at all in a short evaluation."""

from __future__ import annotations

import io
import math

import pytest
import torch

import envs
from agents.eval_progress import EvalProgress, EvalProgressDisplay, seconds_left
from agents.evaluate import ActionStep, OracleAgent, evaluate
from envs.core import LEFT


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class StandStill:
    """Turns on the spot: in the corridor every episode runs into the time limit."""

    def initial_state(self, num_envs: int, device: torch.device) -> None:
        return None

    def act(self, obs: dict, state: None, episode_starts: torch.Tensor) -> ActionStep:
        return ActionStep(torch.full_like(episode_starts, LEFT, dtype=torch.long), None, None)


def test_progress_comes_at_the_check_points_and_ends_at_the_result():
    env = envs.make_batched("corridor", 4, length=5, seed=0)
    reports: list[EvalProgress] = []
    result = evaluate(env, OracleAgent(env), 10, seed=0, check_interval=2,
                      progress=reports.append)  # fmt: skip
    done = [report.episodes_done for report in reports]
    assert len(reports) >= 3 and done == sorted(done) and done[0] < done[-1] == 10
    assert all(report.episodes == 10 for report in reports)
    # Every 2 steps of the 4 envs, then once at the end with the result's numbers.
    assert [report.env_steps for report in reports[:-1]] == [8 * (i + 1)
                                                             for i in range(len(reports) - 1)]
    assert reports[-1].env_steps == result.env_steps
    assert reports[-1].successes == result.success_rate * 10 == 10
    assert all(report.success_rate == 1.0 for report in reports if report.episodes_done)
    assert reports[-1].seconds_left == 0.0


def test_time_left_is_bounded_by_the_time_limit_before_any_episode_ends():
    env = envs.make_batched("corridor", 2, length=5, seed=0)  # time limit 40 steps
    reports: list[EvalProgress] = []
    result = evaluate(env, StandStill(), 4, seed=0, check_interval=8, progress=reports.append)
    assert result.timeout_rate == 1.0 and result.env_steps == 2 * 80  # two episodes per env
    waiting = [report for report in reports if report.episodes_done == 0]
    assert waiting and all(math.isfinite(report.seconds_left) for report in waiting)
    # The estimate: the pace of the episodes done, never beyond the time limit's bound.
    # 1000 episodes on 64 envs, every one timing out at 4020 steps: 64320 steps in all.
    assert seconds_left(0, 1000, 4020, 0, 64320, 120.0) == pytest.approx(1800.0)
    # 64 ended at step 4020: 1000 take 62812.5 steps at that pace, 62812.5 - 6000 are left.
    assert seconds_left(64, 1000, 6000, 4020, 64320, 180.0) == pytest.approx(56812.5 * 0.03)
    # Past the step that pace predicted: the pace of all the steps so far (20 s per 10 done).
    assert seconds_left(10, 20, 40, 10, None, 20.0) == pytest.approx(20.0)
    assert math.isnan(seconds_left(0, 10, 5, 0, None, 1.0))


def test_display_describes_progress_in_words():
    describe = EvalProgressDisplay.describe
    assert describe(EvalProgress(64, 1000, 3.0, 0, 120.0, 1755.0)) == (
        "64/1000 episodes, success 0.047, about 29 min left")
    assert describe(EvalProgress(0, 1000, 0.0, 0, 2.0, math.nan)) == (
        "0/1000 episodes, success n/a, time left unknown yet")
    assert describe(EvalProgress(10, 10, 5.0, 0, 4000.0, 0.0)) == (
        "10/10 episodes, success 0.500, took 1 h 07 min")


def test_display_is_a_bar_on_a_terminal_and_occasional_lines_elsewhere():
    def run(display: EvalProgressDisplay) -> str:
        env = envs.make_batched("corridor", 4, length=5, seed=0)
        with display:
            evaluate(env, OracleAgent(env), 10, seed=0, check_interval=2, progress=display)
        return display.stream.getvalue()

    assert run(EvalProgressDisplay(stream=io.StringIO())) == ""  # too short for a line
    lines = run(EvalProgressDisplay(stream=io.StringIO(), interval=0.0)).splitlines()
    assert lines and all(line.startswith("evaluating: ") for line in lines)
    assert "/10 episodes, success" in lines[0] and not any("10/10" in line for line in lines)
    bar = run(EvalProgressDisplay("policy", stream=Terminal()))
    assert "\r" in bar and "policy: 100%" in bar and "10/10 episodes, success 1.000, took" in bar
