"""Env steps per second: the batched torch tasks against their minigrid reference envs.

Prints one JSON line per task and device: batched steps/s (``--num-envs`` envs on CPU,
``--cuda-num-envs`` on CUDA when available), the reference env's steps/s measured in the
same process (the unwrapped env, stepped with random actions and reset when
an episode ends), their ratio, and the torch threads used (``torch_threads``:
on a shared machine the batched figure depends on them, the reference env's
hardly).

    python benchmarks/env_throughput.py [--seconds 3] [--tasks corridor portal] [--threads N]
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import tyro

import envs
from agents.cli import USAGE_ERROR, parse_args
from agents.train_args import ThreadCount
from envs.core import check_int

TASK_KWARGS = {"corridor": {"length": 1000}, "portal": {}, "instruction": {}}

TaskName = Literal[tuple(envs.TASKS)]  # type: ignore[valid-type]


@dataclass
class EnvThroughputArgs:
    """Env steps per second: the batched torch tasks against their minigrid reference envs."""

    seconds: float = 3.0
    """Wall-clock time of each measurement, in seconds."""
    tasks: Annotated[tuple[TaskName, ...], tyro.conf.arg(metavar="TASK...")] = tuple(envs.TASKS)
    """Tasks to measure, one JSON line each (per device)."""
    num_envs: int = 4096
    """Batched envs on CPU."""
    cuda_num_envs: int = 65536
    """Batched envs on CUDA (measured when CUDA is available)."""
    threads: ThreadCount = None
    """CPU threads for torch."""


def batched_steps_per_second(name: str, num_envs: int, device: str, seconds: float) -> float:
    benv = envs.make_batched(name, num_envs, device=device, seed=0, **TASK_KWARGS[name])
    benv.reset()
    actions = torch.randint(0, envs.NUM_ACTIONS, (256, num_envs), device=device)
    for t in range(20):  # warm-up
        benv.step(actions[t])
    steps = 0
    start = time.perf_counter()
    while True:
        for t in range(len(actions)):
            benv.step(actions[t])
        steps += len(actions)
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return steps * num_envs / elapsed


def reference_steps_per_second(name: str, seconds: float) -> float:
    env = envs.make_reference(name, **TASK_KWARGS[name])
    env.reset(seed=0)
    rng = torch.Generator().manual_seed(0)
    actions = torch.randint(0, envs.NUM_ACTIONS, (4096,), generator=rng).tolist()
    steps = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for action in actions:
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()
        steps += len(actions)
    return steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (2 for a bad flag, with one line on stderr)."""
    args = parse_args(EnvThroughputArgs, argv, "python benchmarks/env_throughput.py",
                      __doc__.splitlines()[0])
    try:
        check_int("--num-envs", args.num_envs, 1)
        check_int("--cuda-num-envs", args.cuda_num_envs, 1)
        if args.threads is not None:
            check_int("--threads", args.threads, 1)
        if not args.seconds > 0:
            raise ValueError(f"--seconds must be a positive number, got {args.seconds}")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    devices = [("cpu", args.num_envs)]
    if torch.cuda.is_available():
        devices.append(("cuda", args.cuda_num_envs))
    for name in dict.fromkeys(args.tasks):
        reference = reference_steps_per_second(name, args.seconds)
        for device, num_envs in devices:
            batched = batched_steps_per_second(name, num_envs, device, args.seconds)
            print(
                json.dumps(
                    {
                        "benchmark": "env_throughput",
                        "task": name,
                        "task_kwargs": TASK_KWARGS[name],
                        "device": device,
                        "num_envs": num_envs,
                        "torch_threads": torch.get_num_threads(),
                        "batched_steps_per_s": round(batched),
                        "reference_steps_per_s": round(reference),
                        "ratio": round(batched / reference, 1),
                    }
                ),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
