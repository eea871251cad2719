"""Evaluation: a tiny trained run evaluates to sane numbers, the oracle scores 1.0 through the
same code, episodes are counted evenly and memory is reset, bad input is one clean line.

Also holds ``train_tiny_run``, which the video and plot tests import.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import envs
import evaluate as evaluate_cli
import train_rl
from agents.evaluate import (
    ActionStep,
    OracleAgent,
    PolicyAgent,
    episode_targets,
    evaluate,
    evaluate_with_oracle,
    task_score,
    wilson_interval,
)
from agents.load_run import load_run
from agents.resolve import resolve
from agents.train_args import TrainArgs
from policies import make_policy

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--env", "corridor", "--length", "5", "--num-envs", "8", "--num-steps", "16",
        "--total-steps", "512", "--threads", "1", "--log-interval", "1"]  # fmt: skip


def train_tiny_run(path: Path, *extra: str) -> Path:
    """A finished 512-step corridor run (length 5) in ``path``: a few seconds on one thread."""
    assert train_rl.main([*TINY, *extra, "--run-dir", str(path)], progress=False) == 0
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("eval") / "run")


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run evaluate.py in-process: (exit status, stdout, stderr)."""
    try:
        status = evaluate_cli.main(argv)
    except SystemExit as exit_:  # the command line's own errors (tyro)
        status = int(exit_.code)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_tiny_run_evaluates_to_sane_numbers_and_writes_eval_json(tiny_run, capsys):
    status, out, err = run_cli([str(tiny_run), "--episodes", "20", "--threads", "1"], capsys)
    assert status == 0, err
    assert "success rate" in out and "eval.json" in out
    summary = json.loads((tiny_run / "eval.json").read_text())
    assert summary["episodes"] == 20 and summary["num_envs"] == 8
    low, high = summary["success_ci95"]
    assert 0.0 <= low <= summary["success_rate"] <= high <= 1.0
    assert 0.0 <= summary["mean_return"] <= 1.0
    assert 6 <= summary["mean_length"] <= 40  # the shortest way (5 cells + a turn) .. the limit
    assert 0 < summary["mem_alive_mean"] <= summary["mem_alive_max"] <= 40
    assert summary["checkpoint"]["global_step"] == 512
    assert summary["task"]["settings"] == {"length": 5, "num_colors": 2, "view_size": 3,
                                           "max_steps": 40, "min_length": 5}  # fmt: skip
    assert summary["oracle"]["success_rate"] == 1.0
    # The corridor is scored by its success rate, so the share is the policy's over 1.0.
    assert summary["score"] == "success_rate"
    assert summary["oracle_share"] == pytest.approx(summary["success_rate"])
    assert "share of oracle" in out


def test_task_override_changes_the_task_and_its_default_time_limit(tiny_run, capsys):
    output = tiny_run / "eval-long.json"
    argv = [str(tiny_run), "--episodes", "8", "--length", "12", "--output", str(output),
            "--stochastic", "--threads", "1"]  # fmt: skip
    status, _, err = run_cli(argv, capsys)
    assert status == 0, err
    summary = json.loads(output.read_text())
    assert summary["task"]["settings"]["length"] == 12
    assert summary["task"]["settings"]["max_steps"] == 4 * 12 + 20  # followed the new length
    assert summary["oracle"]["mean_length"] == 13


def test_a_random_length_run_is_evaluated_at_full_length(tmp_path, capsys):
    run = train_tiny_run(tmp_path / "random", "--min-length", "3", "--length", "8")
    config = json.loads((run / "config.json").read_text())
    assert config["env_kwargs"]["min_length"] == 3
    status, _, err = run_cli([str(run), "--episodes", "8", "--threads", "1"], capsys)
    assert status == 0, err
    summary = json.loads((run / "eval.json").read_text())
    assert summary["task"]["settings"]["min_length"] == 8
    assert summary["oracle"]["mean_length"] == 9  # every episode: 8 cells and the turn
    output = run / "eval-random.json"
    argv = [str(run), "--episodes", "8", "--min-length", "4", "--output", str(output),
            "--threads", "1"]  # fmt: skip
    status, _, err = run_cli(argv, capsys)
    assert status == 0, err
    assert json.loads(output.read_text())["task"]["settings"]["min_length"] == 4


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("corridor", {"length": 7}),
        ("portal", {"num_rooms": 2, "room_length": 3, "max_steps": 60}),
        ("instruction", {"size": 3, "delay_min": 10, "delay_max": 12, "max_steps": 60}),
    ],
)
def test_oracle_scores_one_through_the_evaluator(name, kwargs):
    env = envs.make_batched(name, 6, seed=3, **kwargs)
    result = evaluate(env, OracleAgent(env), episodes=15, seed=3)
    assert result.episodes == 15
    assert result.success_rate == 1.0
    assert result.success_ci95[1] == 1.0 and result.success_ci95[0] > 0.7
    if name == "corridor":
        assert result.mean_return == 1.0 and result.mean_length == 8
        assert result.timeout_rate == 0.0
    if name != "corridor":  # these tasks run until their time limit
        assert result.timeout_rate == 1.0
    if name == "portal":
        assert result.counters["goals"] == result.mean_return == 60 // (2 * 4)
        assert result.counters["wrong_after_first_goal"] == 0
    if name == "instruction":
        assert result.counters["instructions_carried_fraction"] == 1.0
    assert math.isnan(result.mem_alive_mean)  # the oracle keeps no memory


class IdleAgent:
    """Turns left for ever: carries out no instruction and reaches no goal."""

    def initial_state(self, num_envs, device):
        return None

    def act(self, obs, state, episode_starts):
        return ActionStep(torch.zeros_like(episode_starts, dtype=torch.long), None, None)


@pytest.mark.parametrize(
    ("name", "kwargs", "counter"),
    [
        ("portal", {"num_rooms": 2, "room_length": 3, "max_steps": 60}, "goals"),
        ("instruction", {"size": 3, "delay_min": 10, "delay_max": 12, "max_steps": 60},
         "instructions_carried"),
    ],
)
def test_the_share_of_the_oracle_compares_the_tasks_score_on_the_same_episodes(
    name, kwargs, counter
):
    def new_env():
        return envs.make_batched(name, 4, seed=5, **kwargs)

    result, oracle, share = evaluate_with_oracle(new_env, IdleAgent(), 8, seed=5)
    assert result.counters[counter] == 0 and oracle.counters[counter] > 0 and share == 0.0
    # The oracle played the same episodes as the agent: the oracle alone scores the same.
    env = new_env()
    alone = evaluate(env, OracleAgent(env), 8, seed=5)
    assert task_score(alone, env) == task_score(oracle, env) == oracle.counters[counter]


class FirstEpisodeOracle:
    """The oracle in each env's first episode, then always the wrong arm; records starts."""

    def __init__(self, env):
        self.env, self.episode = env, torch.zeros(env.num_envs, dtype=torch.long)
        self.starts: list[torch.Tensor] = []

    def initial_state(self, num_envs, device):
        return None

    def act(self, obs, state, episode_starts):
        self.starts.append(episode_starts.clone())
        self.episode += episode_starts.long()
        wrong = 1 - self.env.right_turn  # left <-> right
        oracle = self.env.oracle_actions()
        at_junction = oracle != 2
        actions = torch.where((self.episode > 1) & at_junction, wrong, oracle)
        return ActionStep(actions, None, None)


def test_episodes_are_split_evenly_and_later_ones_not_counted():
    targets = episode_targets(10, 4, torch.device("cpu"))
    assert targets.tolist() == [2, 2, 3, 3] and int(targets.sum()) == 10
    env = envs.make_batched("corridor", 5, seed=0, length=4)
    agent = FirstEpisodeOracle(env)
    result = evaluate(env, agent, episodes=5, seed=0)  # runs on to the first check
    assert len(agent.starts) > 10
    assert result.success_rate == 1.0  # only each env's first episode counts
    assert agent.starts[0].all() and agent.starts[5].all()  # every 5 steps a new episode
    assert not torch.cat(agent.starts[1:5]).any()


def test_memory_is_reset_at_every_episode_start():
    # Spans far longer than an episode: without resets the memory would pile up over episodes.
    config = resolve(TrainArgs(env="corridor", length=3, policy="expire_span", max_span=500))
    env = envs.make_batched("corridor", 4, seed=0, length=3, max_steps=10)
    policy = make_policy("expire_span", env.single_observation_space, 3,
                         **{**config.policy_kwargs, "span_init": 0.99})  # fmt: skip
    result = evaluate(env, PolicyAgent(policy, deterministic=False, seed=1), episodes=16, seed=0)
    assert result.episodes == 16
    assert 1 <= result.mem_alive_max <= 10  # never more than one episode's steps


def test_wilson_interval_matches_known_values():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0


def test_load_run_rebuilds_the_trained_policy(tiny_run):
    loaded = load_run(str(tiny_run), device="cpu")
    payload = torch.load(tiny_run / "checkpoints" / "latest.pt", weights_only=False)
    for name, value in loaded.policy.state_dict().items():
        assert torch.equal(value, payload["policy"][name])
    assert not loaded.policy.training


def corrupt_copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "corrupt"
    shutil.copytree(run, copy)
    for checkpoint in (copy / "checkpoints").glob("*.pt"):  # no intact one to fall back to
        checkpoint.write_bytes(b"not a checkpoint")
    return copy


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["{missing}"], "does not exist"),
        (["{not_a_run}"], "not a run directory"),
        (["{corrupt}"], "corrupt"),
        (["{run}", "--checkpoint", "nope.pt"], "not found"),
        (["{run}", "--length", "0"], "length must be an integer >= 1, got 0"),
        (["{run}", "--num-rooms", "3"], "--num-rooms 3 is not a parameter of corridor"),
        (["{run}", "--view-size", "5"], "trained with view_size 3"),
        (["{run}", "--episodes", "-1"], "--episodes must be >= 0, got -1"),
        (["{run}", "--episodes", "0"], "nothing to do"),
        (["{run}", "--video", "1", "--frame-skip", "0"], "--frame-skip must be >= 1, got 0"),
        (["{run}", "--episodes", "many"], "--episodes: invalid value 'many'; expected INT"),
        (["{run}", "--device", "tpu"], "invalid choice 'tpu' for argument '--device'"),
        (["{run}", "--bogus"], "Unrecognized options: --bogus"),
        (["{run}", "--lenght", "5"], "(did you mean --length?)"),
        ([], "missing RUN_DIR"),
    ],
)
def test_bad_input_is_one_line_error_and_exit_2(argv, expected, tiny_run, tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    paths = {
        "missing": tmp_path / "nowhere",
        "not_a_run": tmp_path / "plain",
        "run": tiny_run,
        "corrupt": corrupt_copy(tiny_run, tmp_path) if "{corrupt}" in argv else "",
    }
    argv = [arg.format(**paths) for arg in argv] + ["--threads", "1"]
    status, _, err = run_cli(argv, capsys)
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0]


def test_cli_process_exits_2_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), str(tmp_path / "missing")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: run directory") and "Traceback" not in (
        result.stderr
    )
    assert len(result.stderr.strip().splitlines()) == 1


class StandStill:
    """Turns in the corridor (a no-op there) for ever, as a greedy policy can."""

    def initial_state(self, num_envs, device):
        return None

    def act(self, obs, state, episode_starts):
        actions = torch.zeros(len(episode_starts), dtype=torch.long)
        return ActionStep(actions, None, None)


def test_episodes_cut_off_by_the_time_limit_are_counted_as_timed_out():
    env = envs.make_batched("corridor", 4, seed=1, length=5, max_steps=9)
    result = evaluate(env, StandStill(), episodes=8, seed=1)
    assert (result.timeout_rate, result.success_rate, result.mean_length) == (1.0, 0.0, 9.0)


def test_the_table_points_greedy_time_outs_to_sampling_only_where_the_oracle_finishes():
    summary = {
        "checkpoint": {"path": "latest.pt", "global_step": 1}, "deterministic": True,
        "task": {"env": "corridor", "settings": {"length": 5}}, "episodes": 8, "num_envs": 4,
        "success_rate": 0.0, "success_ci95": (0.0, 0.3), "mean_return": 0.0,
        "std_return": 0.0, "mean_length": 9.0, "timeout_rate": 1.0, "mem_alive_mean": 9.0,
        "mem_alive_max": 9.0, "counters": {},
        "oracle": {"success_rate": 1.0, "mean_return": 1.0, "timeout_rate": 0.0, "counters": {}},
    }  # fmt: skip
    notes = [value for name, value in evaluate_cli.report(summary) if name == "note"]
    assert len(notes) == 1 and "--stochastic" in notes[0]
    # Sampled already, or the oracle itself runs to the time limit (Portal): no note.
    for changes in ({"deterministic": False},
                    {"oracle": {**summary["oracle"], "timeout_rate": 1.0}}):  # fmt: skip
        assert "note" not in dict(evaluate_cli.report({**summary, **changes}))
