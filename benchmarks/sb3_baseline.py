"""sb3-contrib's RecurrentPPO on one task: the off-the-shelf baseline of the results page.

(One file on purpose: the baseline's whole run, from its command line to its evaluation, is
what a reader checks for fairness, so it reads top to bottom in one place; it borrows only
the suite's CLI helpers, its evaluator and its atomic writes.)

    python benchmarks/sb3_baseline.py --env ExpireRL/Corridor-v0 --length 1000 --seed 1 \\
        --total-steps 4000000 --run-dir runs/results/corridor1000-sb3-defaults-ppo-s1

Trains ``RecurrentPPO("MlpLstmPolicy")`` on a gymnasium env made with
``gym.make``: the suite's reference env through its id, with the task's flags
(``--length 1000``), or any registered id such as
``MiniGrid-MemoryS13Random-v0`` (no task flags). Observation fields that
cannot be flattened (minigrid's text ``mission``) are dropped, the rest are
flattened (``FlattenObservation``). The hyperparameters are one of `VARIANTS`:
sb3-contrib's defaults, or the PPO settings tuned for this project's corridor
preset, carried over. Progress is printed once per rollout. The run directory
gets:

- ``curve.csv``: one row per rollout: ``global_step``, ``wall_time`` (seconds of
  training, across resumes), ``episodes`` ended in the rollout, their
  ``success_rate`` and ``episode_return``;
- ``checkpoint.zip``: the model in sb3's own format (weights, optimiser,
  hyperparameters), every ``--checkpoint-interval`` rollouts. ``--resume``
  continues from it; the envs and the LSTM states start afresh, so a resumed
  run is not the run that was not interrupted;
- ``model.zip``: the final model (``RecurrentPPO.load`` reads it);
- ``summary.json``: the greedy evaluation of the final model over
  ``--episodes`` episodes, split evenly over ``--num-envs`` reference envs,
  with the keys of ``evaluate.py``'s ``eval.json`` that the results page reads
  (``score``, ``success_rate``, ``oracle_share``, ``mem_alive_mean``,
  ``checkpoint.global_step``, ``checkpoint.wall_time``). For the suite's tasks
  the oracle's score comes from the batched env's scripted oracle on as many
  episodes of the same settings. It is written last: a run directory with a
  ``summary.json`` is finished.

It stays one file (about 450 lines): its parts (the env as sb3 sees it, training
with its curve and checkpoints, the greedy evaluation, the command line) serve
this one run and read in the order the run goes; the files above are what
``results_run.py`` reads.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv

import envs  # registers the suite's gymnasium ids
from agents.cli import ArgumentParser, flag_name, task_parameters
from agents.evaluate import OracleAgent, evaluate, score_name, task_score
from agents.run_dir import atomic_write_bytes

CURVE_COLUMNS = ("global_step", "wall_time", "episodes", "success_rate", "episode_return")
FLATTENABLE = (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete,
               gym.spaces.MultiBinary)  # fmt: skip
"""Observation fields ``FlattenObservation`` can flatten; other fields (text) are dropped."""


def linear_schedule(initial: float):
    """sb3's learning-rate schedule that falls linearly from ``initial`` to 0 over training
    (sb3 passes the share of training left, 1 -> 0)."""

    def schedule(progress_remaining: float) -> float:
        return initial * progress_remaining

    return schedule


@dataclass(frozen=True)
class Variant:
    """A stated set of RecurrentPPO hyperparameters."""

    description: str
    num_envs: int
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of ``RecurrentPPO`` (the rest stay sb3-contrib's defaults)."""


VARIANTS: dict[str, Variant] = {
    "defaults": Variant(
        "sb3-contrib's RecurrentPPO defaults (128 steps per env, 10 epochs of minibatches of "
        "128 steps, learning rate 3e-4, no entropy bonus, LSTM 256), 64 envs as ours",
        num_envs=64,
    ),
    "tuned": Variant(
        "the PPO settings tuned for this project's corridor preset, carried over to "
        "RecurrentPPO (not searched for it): 64 envs x 128 steps, 4 epochs of 4 minibatches, "
        "learning rate 5e-4 falling linearly to 0, entropy 0.01, gamma 0.99, GAE 0.95",
        num_envs=64,
        hyperparameters={
            "n_steps": 128, "batch_size": 64 * 128 // 4, "n_epochs": 4,
            "learning_rate": linear_schedule(5e-4), "ent_coef": 0.01, "gamma": 0.99,
            "gae_lambda": 0.95, "clip_range": 0.2, "vf_coef": 0.5, "max_grad_norm": 0.5,
        },
    ),
}  # fmt: skip


class UsageError(ValueError):
    """A command-line value that cannot work (the message names it and what is allowed)."""


# -- envs ------------------------------------------------------------------------------------
def suite_task(env_id: str) -> str | None:
    """The suite task registered as ``env_id`` (corridor, portal, instruction), or None."""
    return next((name for name, row in envs.TASKS.items() if row[2] == env_id), None)


def make_env(env_id: str, env_kwargs: dict[str, Any]) -> gym.Env:
    """``gym.make(env_id, **env_kwargs)`` with its flattenable observation fields flattened
    (also the corridors of ``train_throughput_sb3.py``)."""
    env = gym.make(env_id, **env_kwargs)
    space = env.observation_space
    if isinstance(space, gym.spaces.Dict):
        kept = [key for key, sub in space.spaces.items() if isinstance(sub, FLATTENABLE)]
        if not kept:
            raise UsageError(f"--env {env_id}: no observation field sb3 can flatten")
        if len(kept) < len(space.spaces):
            env = gym.wrappers.FilterObservation(env, kept)
    return gym.wrappers.FlattenObservation(env)


def episode_success(info: dict[str, Any], episode_return: float) -> bool:
    """The env's own success flag at an episode's last step (the suite's ``success``, sb3's
    ``is_success``), else a positive return (minigrid rewards only success)."""
    for key in ("success", "is_success"):
        if key in info:
            return bool(info[key])
    return episode_return > 0


# -- training --------------------------------------------------------------------------------
def read_curve(path: Path) -> list[dict[str, str]]:
    """The rows of ``curve.csv`` (none if it does not exist)."""
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_curve(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace ``curve.csv`` with ``rows`` in one atomic write."""
    lines = [",".join(CURVE_COLUMNS)]
    lines += [",".join(str(row[column]) for column in CURVE_COLUMNS) for row in rows]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


class CurveLogger(BaseCallback):
    """Logs ``curve.csv``, prints progress and saves ``checkpoint.zip``. A rollout's row and
    checkpoint are written when the next rollout starts (``finish`` writes the last one), so
    that both follow the rollout's update."""

    def __init__(self, run_dir: Path, total_steps: int, wall_offset: float,
                 checkpoint_interval: int):  # fmt: skip
        super().__init__()
        self.run_dir, self.total_steps = run_dir, total_steps
        self.wall_offset, self.checkpoint_interval = wall_offset, checkpoint_interval
        self.start = time.perf_counter()
        self.interval_start, self.logged_steps = self.start, -1
        self.successes: list[bool] = []
        self.returns: list[float] = []
        self.rollouts = 0

    def _on_step(self) -> bool:
        for info, done in zip(self.locals["infos"], self.locals["dones"], strict=True):
            episode = info.get("episode")  # sb3's Monitor: the return of a finished episode
            if done and episode is not None:
                self.returns.append(float(episode["r"]))
                self.successes.append(episode_success(info, float(episode["r"])))
        return True

    def _on_rollout_start(self) -> None:
        if self.logged_steps < 0:  # the first rollout of this process: nothing trained yet
            self.logged_steps = self.num_timesteps
            return
        self.finish()
        self.rollouts += 1
        if self.rollouts % self.checkpoint_interval == 0:
            save_model(self.model, self.run_dir / "checkpoint.zip")

    def finish(self) -> None:
        """Log the rollouts trained since the last row."""
        steps = self.num_timesteps
        if steps <= self.logged_steps:
            return
        now = time.perf_counter()
        episodes = len(self.successes)
        success = float(np.mean(self.successes)) if episodes else math.nan
        episode_return = float(np.mean(self.returns)) if episodes else math.nan
        row = {"global_step": steps, "wall_time": f"{self.wall_offset + now - self.start:.2f}",
               "episodes": episodes, "success_rate": f"{success:.4f}" if episodes else "",
               "episode_return": f"{episode_return:.4f}" if episodes else ""}  # fmt: skip
        with open(self.run_dir / "curve.csv", "a", newline="") as handle:
            handle.write(",".join(str(row[column]) for column in CURVE_COLUMNS) + "\n")
        sps = (steps - self.logged_steps) / max(now - self.interval_start, 1e-9)
        print(f"step {steps}/{self.total_steps} success {success:.3f} return "
              f"{episode_return:.3f} episodes {episodes} sps {sps:.0f}", flush=True)  # fmt: skip
        self.interval_start, self.logged_steps = now, steps
        self.successes.clear()
        self.returns.clear()


def save_model(model: Any, path: Path) -> None:
    """Save in sb3's zip format through a temporary file and a rename."""
    temporary = path.with_name(f".{path.stem}.tmp{os.getpid()}.zip")
    model.save(temporary)
    os.replace(temporary, path)


def train(args: argparse.Namespace, env_kwargs: dict[str, Any]) -> tuple[Any, float]:
    """Train (or resume) to ``--total-steps``; returns the model and its training seconds."""
    variant = VARIANTS[args.variant]
    run_dir = Path(args.run_dir)
    num_envs = args.train_envs or variant.num_envs
    vec_env = make_vec_env(lambda: make_env(args.env, env_kwargs), n_envs=num_envs, seed=args.seed)
    checkpoint = run_dir / "checkpoint.zip"
    curve_path = run_dir / "curve.csv"
    if args.resume:
        model = RecurrentPPO.load(checkpoint, env=vec_env, device="cpu")
        done = model.num_timesteps
        # The checkpoint is saved with the curve row of its step (after the rollout's update).
        kept = [row for row in read_curve(curve_path) if int(row["global_step"]) <= done]
        wall_offset = float(kept[-1]["wall_time"]) if kept else 0.0
        write_curve(curve_path, kept)
        print(f"resuming {run_dir} at step {done}", flush=True)
    else:
        model = RecurrentPPO("MlpLstmPolicy", vec_env, seed=args.seed, device="cpu",
                             **variant.hyperparameters)  # fmt: skip
        done, wall_offset = 0, 0.0
        write_curve(curve_path, [])
    callback = CurveLogger(run_dir, args.total_steps, wall_offset, args.checkpoint_interval)
    start = time.perf_counter()
    if done < args.total_steps:
        model.learn(total_timesteps=args.total_steps - done, callback=callback,
                    reset_num_timesteps=not args.resume)  # fmt: skip
        callback.finish()
    wall = wall_offset + time.perf_counter() - start
    save_model(model, run_dir / "model.zip")
    save_model(model, checkpoint)
    vec_env.close()
    return model, wall


# -- evaluation ------------------------------------------------------------------------------
def evaluate_greedy(
    model: Any, env_id: str, env_kwargs: dict[str, Any], episodes: int, num_envs: int, seed: int
) -> dict[str, Any]:
    """Greedy episodes split evenly over ``num_envs`` envs (env i plays ``(episodes + i) //
    num_envs`` counted episodes, as sb3's ``evaluate_policy`` does, so short episodes do not
    dominate): success rate, mean return and the task's counters."""
    vec_env = DummyVecEnv([lambda: make_env(env_id, env_kwargs)] * num_envs)
    vec_env.seed(seed)
    targets = np.array([(episodes + i) // num_envs for i in range(num_envs)])
    counts = np.zeros(num_envs, dtype=int)
    returns, successes, lengths = [], [], []
    counters: dict[str, list[float]] = {}
    obs = vec_env.reset()
    state, starts = None, np.ones(num_envs, dtype=bool)
    running_return, running_length = np.zeros(num_envs), np.zeros(num_envs, dtype=int)
    while (counts < targets).any():
        actions, state = model.predict(obs, state=state, episode_start=starts, deterministic=True)
        obs, rewards, dones, infos = vec_env.step(actions)
        running_return += rewards
        running_length += 1
        for i in np.flatnonzero(dones):
            if counts[i] < targets[i]:
                info = infos[i]
                returns.append(float(running_return[i]))
                lengths.append(int(running_length[i]))
                successes.append(episode_success(info, running_return[i]))
                for key, value in info.items():  # the task's counters (Portal goals, ...)
                    if (isinstance(value, (int, float)) and not isinstance(value, bool)
                            and key not in ("episode_return", "episode_length")):  # fmt: skip
                        counters.setdefault(key, []).append(float(value))
                counts[i] += 1
            running_return[i], running_length[i] = 0.0, 0
        starts = dones
    vec_env.close()
    return {
        "episodes": int(targets.sum()),
        "num_envs": num_envs,
        "success_rate": float(np.mean(successes)),
        "mean_return": float(np.mean(returns)),
        "mean_length": float(np.mean(lengths)),
        "counters": {key: float(np.mean(values)) for key, values in sorted(counters.items())},
    }


def oracle_score(task: str, env_kwargs: dict[str, Any], episodes: int, num_envs: int,
                 seed: int) -> tuple[str, float]:  # fmt: skip
    """The task's score name and the scripted oracle's score on ``episodes`` batched episodes
    of the same settings."""
    env = envs.make_batched(task, num_envs, seed=seed, **env_kwargs)
    result = evaluate(env, OracleAgent(env), episodes, seed=seed)
    return score_name(env), task_score(result, env)


# -- command line ----------------------------------------------------------------------------
TASK_PARAMETERS = sorted({name for names in task_parameters().values() for name in names})


def build_parser() -> argparse.ArgumentParser:
    """The baseline's flags, the suite's task settings among them."""
    parser = ArgumentParser(prog="python benchmarks/sb3_baseline.py",
                     description=__doc__.splitlines()[0])  # fmt: skip
    parser.add_argument("--env", required=True,
                        help="gymnasium id: ExpireRL/Corridor-v0, ExpireRL/Portal-v0, "
                             "ExpireRL/Instruction-v0 or any registered id")  # fmt: skip
    variants = "; ".join(f"{name}: {variant.description}" for name, variant in VARIANTS.items())
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="defaults",
                        help=f"hyperparameters (default: defaults). {variants}")  # fmt: skip
    parser.add_argument("--total-steps", type=int, required=True, help="env steps to train for")
    parser.add_argument("--seed", type=int, default=1, help="seed of training (default: 1)")
    parser.add_argument("--train-envs", type=int, default=None,
                        help="training envs (default: the variant's, 64)")
    parser.add_argument("--run-dir", required=True, help="where the run's files go")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --run-dir from its checkpoint.zip")
    parser.add_argument("--checkpoint-interval", type=int, default=20,
                        help="rollouts between checkpoints (default: 20)")
    parser.add_argument("--episodes", type=int, default=1000,
                        help="greedy evaluation episodes at the end (default: 1000)")
    parser.add_argument("--num-envs", type=int, default=100,
                        help="envs the evaluation episodes are split over (default: 100)")
    parser.add_argument("--eval-seed", type=int, default=0,
                        help="seed of the evaluation episodes (default: 0, as evaluate.py)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice)")
    task = parser.add_argument_group("task settings (the suite's tasks; default: the task's)")
    for name in TASK_PARAMETERS:
        task.add_argument(flag_name(name), dest=name, type=int, default=None)
    return parser


def check_args(args: argparse.Namespace) -> dict[str, Any]:
    """Validate the flags; returns the env's keyword arguments (raises UsageError)."""
    counts = ("total_steps", "checkpoint_interval", "episodes", "num_envs", "threads",
              "train_envs")  # fmt: skip
    for name in counts:
        value = getattr(args, name)
        if value is not None and value < 1:  # None: the default of an optional count
            raise UsageError(f"{flag_name(name)} must be >= 1, got {value}")
    if args.env not in gym.registry:
        raise UsageError(f"--env {args.env!r} is not a registered gymnasium id")
    given = {name: getattr(args, name) for name in TASK_PARAMETERS
             if getattr(args, name) is not None}  # fmt: skip
    task = suite_task(args.env)
    allowed = task_parameters()[task] if task else ()
    for name in given:
        if name not in allowed:
            where = f"{task}'s: {', '.join(allowed)}" if task else "none for this id"
            raise UsageError(f"{flag_name(name)} is not a parameter of {args.env} ({where})")
    run_dir = Path(args.run_dir)
    if args.resume and not (run_dir / "checkpoint.zip").is_file():
        raise UsageError(f"--resume {run_dir}: no checkpoint.zip to resume from")
    if not args.resume and (run_dir / "checkpoint.zip").exists():
        raise UsageError(f"{run_dir} already holds a run; add --resume or choose another "
                         "--run-dir")  # fmt: skip
    return given


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        env_kwargs = check_args(args)
        make_env(args.env, env_kwargs).close()  # a bad task setting fails here, before training
    except (UsageError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"run directory: {run_dir} (RecurrentPPO, {args.variant})", flush=True)
    try:
        model, wall = train(args, env_kwargs)
    except KeyboardInterrupt:
        print(f"\ninterrupted; resume with --resume --run-dir {run_dir}", file=sys.stderr)
        return 130
    print(f"evaluating {args.episodes} greedy episodes over {args.num_envs} envs", flush=True)
    summary = summarize(args, env_kwargs, model, wall)
    atomic_write_bytes(run_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    shown = (f", {summary['oracle_share']:.1%} of the oracle"
             if summary["oracle_share"] is not None else "")
    print(f"greedy success {summary['success_rate']:.3f}{shown}; wrote "
          f"{run_dir / 'summary.json'}", flush=True)  # fmt: skip
    return 0


def summarize(
    args: argparse.Namespace, env_kwargs: dict[str, Any], model: Any, wall: float
) -> dict[str, Any]:
    """summary.json: the run's settings and the greedy evaluation of its final model."""
    evaluation = evaluate_greedy(model, args.env, env_kwargs, args.episodes, args.num_envs,
                                 args.eval_seed)  # fmt: skip
    checkpoint = {"path": str(Path(args.run_dir) / "model.zip"),
                  "global_step": int(model.num_timesteps), "wall_time": wall}  # fmt: skip
    summary: dict[str, Any] = {
        "env": args.env,
        "env_kwargs": env_kwargs,
        "algo": "RecurrentPPO (sb3-contrib)",
        "variant": args.variant,
        "variant_description": VARIANTS[args.variant].description,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        **evaluation,
        "score": "success_rate",
        "oracle_share": None,
        "mem_alive_mean": None,  # an LSTM keeps no memories to count
        "checkpoint": checkpoint,
        "deterministic": True,
        "eval_seed": args.eval_seed,
    }
    task = suite_task(args.env)
    if task is not None:
        name, best = oracle_score(task, env_kwargs, args.episodes, args.num_envs, args.eval_seed)
        score = (evaluation["success_rate"] if name == "success_rate"
                 else evaluation["counters"].get(name, math.nan))  # fmt: skip
        summary.update(score=name, oracle={"score": best},
                       oracle_share=score / best if best > 0 else None)  # fmt: skip
    return summary


if __name__ == "__main__":
    sys.exit(main())
