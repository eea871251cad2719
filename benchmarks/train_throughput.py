"""Training steps per second: this project's PPO + Expire-Span against sb3-contrib's RecurrentPPO.

Both train on the corridor task of the same length, side by side in one
process, and each is timed over its whole training loop (collecting rollouts
*and* learning updates) for a wall-clock budget after a warm-up:

- **ours**: what ``python train_rl.py --env corridor --length L`` builds (the
  corridor preset: Expire-Span policy, PPO, 64 envs x 128 steps, 4 epochs),
  but on the full-length corridor throughout (no random lengths, no
  curriculum: the task the baseline gets), on the batched torch corridor,
  driven update by update through the trainer's collector and learner (the
  metric rows and checkpoints that ``Trainer.run`` writes every 10 and 50
  updates are left out). The warm-up (``--warmup-updates``, by default long
  enough for one random-walk episode, about 1.7 L steps with the preset's
  forward bias) lets the agent's memory fill up: early in training nearly
  every past step is alive, so the first updates are cheaper than the ones
  after them.
- **sb3-contrib**: ``RecurrentPPO("MlpLstmPolicy", DummyVecEnv(n envs))`` with
  its default hyperparameters (128 steps per env, 10 epochs, batch 128, LSTM
  256) on the reference env, ``gym.make("ExpireRL/Corridor-v0", length=L)``
  flattened by ``FlattenObservation``; by default with as many envs as ours.
  Timed from the start of its second rollout to the start of the last rollout
  begun within the budget (whole rollout + update cycles only).

``--from-run RUN_DIR`` starts ours from a trained agent's weights instead (the run's latest
checkpoint; e.g. the quick-start command's run at this length): the steps/s of training
once the spans are learnt and few memories are alive, rather than at the start.

Ours also reports its matrix-multiply FLOPs per env step (rollout and update, counted by
torch over one more update), and the JSON line sets against each other what the bar would
ask of the matrix work alone (100 x sb3's steps/s x those FLOPs) and this CPU's float32
matrix-multiply rate on large matrices.

Where CUDA is available, ours is also measured with ``--device cuda``, once
for each of the ``--cuda-num-envs`` env counts (``--cuda-only`` skips the CPU
runs). Prints one JSON line.

    python benchmarks/train_throughput.py [--length 1000] [--seconds 60] [--threads N]
    python benchmarks/train_throughput.py --from-run runs/corridor-expire_span-ppo-s1-...
    python benchmarks/train_throughput.py --cuda-only --cuda-num-envs 64 1024 4096
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from torch.utils.flop_counter import FlopCounterMode

import envs  # noqa: F401  (registers ExpireRL/Corridor-v0)
from agents.config import Args, resolve
from agents.evaluate import load_run
from agents.run_config import ConfigError, TrainConfig
from agents.run_dir import RunDir, RunDirError
from agents.trainer import Trainer

BAR = 100.0
"""The issue's bar: ours at least this many times sb3-contrib's steps/s on a 2-core CPU."""


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark_config(
    length: int, device: str, num_envs: int | None, threads: int | None
) -> TrainConfig:
    """The corridor preset of ``length``, on the full-length corridor throughout, as
    sb3-contrib gets it: the preset's random lengths and curriculum would time shorter
    episodes than the baseline's."""
    return resolve(Args(env="corridor", length=length, device=device, num_envs=num_envs,
                        threads=threads, min_length=length, curriculum_start=length))


def ours_steps_per_second(
    length: int,
    seconds: float,
    device: str,
    num_envs: int | None,
    warmup_updates: int | None,
    threads: int | None,
    weights: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train the corridor preset for ``seconds`` after a warm-up; steps/s of the whole loop.
    With ``weights`` (see `trained_weights`) the policy starts from a trained agent."""
    config = benchmark_config(length, device, num_envs, threads)
    learner_config = config.learner
    steps_per_update = learner_config.num_envs * learner_config.num_steps
    # The preset's total only sets the learning-rate schedule; keep it unless it is too small.
    learner_config.total_steps = max(learner_config.total_steps, 1000 * steps_per_update)
    if warmup_updates is None:
        warmup_updates = math.ceil(2 * length / learner_config.num_steps) + 1
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, RunDir.create(Path(tmp) / "run", config), progress=False)
        if weights is not None:
            trainer.policy.load_state_dict(weights)

        def one_update() -> float:
            """One rollout and its update; returns the rollout's share of the time."""
            start = time.perf_counter()
            rollout = trainer.collector.collect()
            _synchronize(trainer.device)  # one sync per update, to split the time
            collect_seconds = time.perf_counter() - start
            trainer.learner.update(rollout)
            return collect_seconds

        for _ in range(warmup_updates):
            one_update()
        _synchronize(trainer.device)
        updates, collect_seconds, start = 0, 0.0, time.perf_counter()
        while True:
            collect_seconds += one_update()
            updates += 1
            _synchronize(trainer.device)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
        output = trainer.collector.last_output
        with FlopCounterMode(display=False) as counter:  # one more update, untimed
            one_update()
    return {
        "steps_per_s": round(updates * steps_per_update / elapsed, 1),
        "device": str(trainer.device),
        "num_envs": learner_config.num_envs,
        "num_steps": learner_config.num_steps,
        "update_epochs": learner_config.update_epochs,
        "policy": config.policy,
        "algo": learner_config.algo,
        "trained_weights": weights is not None,
        "warmup_updates": warmup_updates,
        "measured_updates": updates,
        "measured_steps": updates * steps_per_update,
        "seconds": round(elapsed, 2),
        "rollout_fraction": round(collect_seconds / elapsed, 3),
        "mem_alive_mean": round(output.memory_alive.float().mean().item(), 1),
        "mem_alive_max": int(output.memory_alive.max().item()),
        "matmul_mflop_per_step": round(counter.get_total_flops() / steps_per_update / 1e6, 3),
    }


def sgemm_gflops(size: int = 2048, repeats: int = 3) -> float:
    """This CPU's matrix-multiply rate (best of ``repeats`` float32 products of two
    ``size`` x ``size`` matrices): a ceiling for any training step's matrix work."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def trained_weights(path: str, length: int) -> dict[str, Any]:
    """The policy weights of run ``path``'s latest checkpoint, which must be the benchmark's
    policy (an Expire-Span corridor run of the same length, e.g. the quick-start command's);
    raises RunDirError or ConfigError otherwise."""
    loaded = load_run(path)  # rejects a checkpoint without weights, or weights that don't fit

    def model(of: TrainConfig) -> str:  # what the weights must fit, as config.json writes it
        return json.dumps([of.env, of.env_kwargs.get("length"), of.policy, of.policy_kwargs],
                          sort_keys=True)

    wanted = benchmark_config(length, "cpu", None, None)
    if model(loaded.config) != model(wanted):
        raise RunDirError(f"--from-run {path}: [env, length, policy, policy settings] are "
                          f"{model(loaded.config)}, not the benchmark's {model(wanted)}")
    return loaded.policy.state_dict()


def sb3_steps_per_second(length: int, seconds: float, num_envs: int, device: str) -> dict[str, Any]:
    """RecurrentPPO with MlpLstmPolicy on the reference corridor; steps/s over whole cycles."""
    from gymnasium.wrappers import FlattenObservation
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import DummyVecEnv

    class RolloutClock(BaseCallback):
        """Records (time, steps) at every rollout start; stops once the budget is spent."""

        def __init__(self) -> None:
            super().__init__()
            self.starts: list[tuple[float, int]] = []

        def _on_rollout_start(self) -> None:
            self.starts.append((time.perf_counter(), self.num_timesteps))

        def _on_step(self) -> bool:
            # starts[0] is the warm-up cycle; measure from starts[1] over >= 1 whole cycle.
            if len(self.starts) < 3:
                return True
            return time.perf_counter() - self.starts[1][0] < seconds

    def make_env() -> gym.Env:
        return FlattenObservation(gym.make("ExpireRL/Corridor-v0", length=length))

    vec_env = DummyVecEnv([make_env] * num_envs)
    model = RecurrentPPO("MlpLstmPolicy", vec_env, device=device, seed=0, verbose=0)
    clock = RolloutClock()
    model.learn(total_timesteps=10**12, callback=clock)
    (start, first_steps), (end, last_steps) = clock.starts[1], clock.starts[-1]
    return {
        "steps_per_s": round((last_steps - first_steps) / (end - start), 1),
        "device": str(model.device),
        "num_envs": num_envs,
        "n_steps": model.n_steps,
        "n_epochs": model.n_epochs,
        "batch_size": model.batch_size,
        "warmup_rollouts": 1,
        "measured_rollouts": len(clock.starts) - 2,
        "measured_steps": last_steps - first_steps,
        "seconds": round(end - start, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=1000, help="corridor length L")
    parser.add_argument(
        "--seconds",
        type=float,
        default=60.0,
        help="wall-clock budget of each measurement (after warm-up)",
    )
    parser.add_argument(
        "--warmup-updates",
        type=int,
        default=None,
        help="our updates before timing (default: ceil(2 L / num_steps) + 1)",
    )
    parser.add_argument(
        "--num-envs",
        type=int,
        default=None,
        help="our envs on CPU (default: the corridor preset's)",
    )
    parser.add_argument(
        "--sb3-num-envs",
        type=int,
        default=None,
        help="sb3's DummyVecEnv envs (default: as many as ours)",
    )
    parser.add_argument(
        "--cuda-num-envs",
        type=int,
        nargs="+",
        default=[4096],
        help="our envs on CUDA, measured when CUDA is available (several: one run each)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads for both (default: torch's choice)",
    )
    parser.add_argument(
        "--from-run",
        default=None,
        metavar="RUN_DIR",
        help="start ours from this run's latest weights (a trained corridor agent of the same "
        "length, e.g. the quick-start's) to time training once the spans are learnt",
    )
    parser.add_argument("--skip-sb3", action="store_true", help="measure ours only")
    parser.add_argument(
        "--cuda-only", action="store_true", help="measure ours on CUDA only (no CPU runs)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.cuda_only and not torch.cuda.is_available():
        parser.error("--cuda-only: no CUDA device is available")
    weights = None
    if args.from_run is not None:
        try:  # once, before anything is timed
            weights = trained_weights(args.from_run, args.length)
        except (RunDirError, ConfigError) as error:
            parser.error(str(error))
    ours = sb3 = None
    if not args.cuda_only:
        ours = ours_steps_per_second(args.length, args.seconds, "cpu", args.num_envs,
                                     args.warmup_updates, args.threads, weights)
        if not args.skip_sb3:
            sb3_num_envs = args.sb3_num_envs or ours["num_envs"]
            sb3 = sb3_steps_per_second(args.length, args.seconds, sb3_num_envs, "cpu")
    ours_cuda = []
    if torch.cuda.is_available():
        for num_envs in args.cuda_num_envs:
            measured = ours_steps_per_second(args.length, args.seconds, "cuda", num_envs,
                                             args.warmup_updates, args.threads, weights)
            if sb3:
                ratio_cuda = measured["steps_per_s"] / sb3["steps_per_s"]
                measured["ratio_to_sb3_cpu"] = round(ratio_cuda, 1)
            ours_cuda.append(measured)
            print(json.dumps({"partial": "cuda", **measured}), file=sys.stderr, flush=True)
    ratio = ours["steps_per_s"] / sb3["steps_per_s"] if ours and sb3 else None
    # What the bar asks of the matrix work alone: BAR x sb3's steps/s x our FLOPs per step.
    bar_needs = (BAR * sb3["steps_per_s"] * ours["matmul_mflop_per_step"] / 1e3
                 if ours and sb3 else None)  # fmt: skip
    result = {
        "benchmark": "train_throughput",
        "task": "corridor",
        "length": args.length,
        "from_run": args.from_run,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "ours": ours,
        "sb3_contrib": sb3,
        "ratio": round(ratio, 2) if ratio is not None else None,
        "bar": BAR,
        "bar_met": ratio >= BAR if ratio is not None else None,
        "bar_needs_matmul_gflops": round(bar_needs, 1) if bar_needs is not None else None,
        "cpu_sgemm_gflops": round(sgemm_gflops(), 1) if not args.cuda_only else None,
        "ours_cuda": ours_cuda,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
