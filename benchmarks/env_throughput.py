"""Env steps per second: the batched torch tasks against their minigrid reference envs.

Prints one JSON line per task and device: batched steps/s (4096 envs on CPU,
65,536 on CUDA when available), the reference env's steps/s measured in the
same process (the unwrapped env, stepped with random actions and reset when
an episode ends), and their ratio.

    python benchmarks/env_throughput.py [--seconds 3] [--tasks corridor portal instruction]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import envs

TASK_KWARGS = {"corridor": {"length": 1000}, "portal": {}, "instruction": {}}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--tasks", nargs="+", default=list(envs.TASKS), choices=list(envs.TASKS))
    args = parser.parse_args()
    devices = [("cpu", 4096)] + ([("cuda", 65536)] if torch.cuda.is_available() else [])
    for name in args.tasks:
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


if __name__ == "__main__":
    main()
