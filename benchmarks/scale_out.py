"""Data-parallel scaling: training steps/s with 1 and N processes on the same total env count.

For each world size of ``--world-sizes`` (default 1 and 2) the benchmark starts that many
ranks as torchrun would (``torch.multiprocessing``, torchrun's environment variables; world
size 1 is a plain process, no process group), each with ``--threads`` torch threads. Every
rank builds what ``train_rl.py`` builds for the corridor preset (``--length``, ``--policy``,
``--algo``) with ``--num-envs`` envs in all (``--num-envs / N`` per rank) and runs the
trainer's loop (collect a rollout, update) for ``--warmup-updates`` and then ``--updates``
timed updates; metric rows and checkpoints are left out. The world sizes take turns for
``--rounds`` rounds, so that drift on a shared machine hits them alike, and the median
round counts.

Reported per world size: ``steps_per_s`` (env steps of all ranks per second), the time of
one update, ``allreduce_share`` (the share of rank 0's update time inside
``torch.distributed.all_reduce``: the gradient of each minibatch and PPO's two advantage
statistics, including the wait for the slower rank), and a standalone all-reduce of one
float and of the gradient buffer (parameters x 4 bytes), timed after the updates
(``allreduce_1_float_s``, ``allreduce_gradient_s``). ``speedup`` is steps/s against world
size 1, ``efficiency`` the speed-up divided by the world size. docs/scaling.md turns these
figures into a cost model.

    python benchmarks/scale_out.py [--world-sizes 1 2] [--threads 1] [--length 100]

On CUDA (``--device cuda``) rank r uses GPU r and collectives go through NCCL.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.distributed as dist
import torch.multiprocessing
import tyro

from agents.cli import USAGE_ERROR, parse_args
from agents.distributed import join
from agents.run_config import ConfigError


@dataclass
class ScaleOutArgs:
    """Data-parallel scaling: training steps/s with 1 and N processes on the same total env
    count."""

    world_sizes: Annotated[tuple[int, ...], tyro.conf.arg(metavar="N...")] = (1, 2)
    """Numbers of processes to compare (the first is the reference of the ratios)."""
    length: int = 100
    """Corridor length (the preset for it sets the model and the learner)."""
    policy: Literal["expire_span", "trxl", "lstm"] = "expire_span"
    """Memory core."""
    algo: Literal["ppo", "impala"] = "ppo"
    """Learner."""
    num_envs: int | None = None
    """Envs of all processes together (default: the preset's)."""
    num_steps: int | None = None
    """Rollout length per update (default: the preset's)."""
    warmup_updates: int = 1
    """Updates before the timing starts."""
    updates: int = 3
    """Timed updates per round."""
    rounds: int = 1
    """Rounds; the world sizes take turns in each."""
    threads: int = 1
    """Torch CPU threads per process."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Where each rank trains (cuda: rank r on GPU r, NCCL)."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_args(args: ScaleOutArgs) -> list[str]:
    """The ``train_rl.py`` flags of the measured run."""
    argv = ["--env", "corridor", "--length", str(args.length), "--policy", args.policy,
            "--algo", args.algo, "--threads", str(args.threads), "--device", args.device,
            "--total-steps", str(10**9)]  # fmt: skip
    if args.num_envs is not None:
        argv += ["--num-envs", str(args.num_envs)]
    if args.num_steps is not None:
        argv += ["--num-steps", str(args.num_steps)]
    return argv


class AllReduceClock:
    """Seconds spent inside ``torch.distributed.all_reduce`` (wrapped in place)."""

    def __init__(self, device: str):
        self.seconds, self.device = 0.0, device
        self.inner = dist.all_reduce

        def timed(*call_args: Any, **kwargs: Any) -> Any:
            self.sync()
            start = time.perf_counter()
            result = self.inner(*call_args, **kwargs)
            self.sync()
            self.seconds += time.perf_counter() - start
            return result

        dist.all_reduce = timed

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()


def standalone_allreduce(numel: int, device: str, repeats: int = 20) -> float:
    """Seconds per all-reduce of ``numel`` floats (after one untimed call)."""
    buffer = torch.zeros(numel, device=device)
    dist.all_reduce(buffer)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(repeats):
        dist.all_reduce(buffer)
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def rank_main(rank: int, size: int, port: int, args: ScaleOutArgs, out: Path) -> None:
    """One rank: build the run as train_rl.py does, time its updates, write what it saw."""
    from agents.resolve import resolve
    from agents.run_dir import RunDir
    from agents.train_args import TrainArgs
    from agents.trainer import Trainer
    from train_rl import DESCRIPTION

    if size > 1:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(size),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(args.threads)
    with join() as world:
        config = resolve(parse_args(TrainArgs, train_args(args), "train_rl.py", DESCRIPTION),
                         world.size)  # fmt: skip
        # Nothing is written: the run directory only names the run.
        trainer = Trainer(config, RunDir(out / "run"), progress=False, world=world)
        clock = AllReduceClock(world.device(args.device)) if world.distributed else None
        for _ in range(args.warmup_updates):
            trainer.learner.update(trainer.collector.collect())
        if clock is not None:
            dist.barrier()
            clock.seconds = 0.0
        start = time.perf_counter()
        for _ in range(args.updates):
            trainer.learner.update(trainer.collector.collect())
        seconds = time.perf_counter() - start
        parameters = sum(p.numel() for p in trainer.policy.parameters())
        result = {
            "update_s": seconds / args.updates,
            "steps_per_s": args.updates * trainer.steps_per_update / seconds,
            "allreduce_share": clock.seconds / seconds if clock else 0.0,
            "parameters": parameters,
            "num_envs": config.learner.num_envs,
            "num_steps": config.learner.num_steps,
            "allreduces_per_update": config.learner.update_epochs * config.learner.num_minibatches,
        }
        if world.distributed:
            device = world.device(args.device)
            result["allreduce_1_float_s"] = standalone_allreduce(1, device)
            result["allreduce_gradient_s"] = standalone_allreduce(parameters, device)
    if rank == 0:
        (out / "result.json").write_text(json.dumps(result))


def measure(size: int, args: ScaleOutArgs) -> dict[str, float]:
    """One round of one world size: rank 0's figures."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        torch.multiprocessing.spawn(rank_main, args=(size, free_port(), args, out),
                                    nprocs=size, join=True)  # fmt: skip
        return json.loads((out / "result.json").read_text())


def check(args: ScaleOutArgs) -> None:
    """Raise ConfigError on a flag the benchmark cannot run with."""
    if not args.world_sizes or any(size < 1 for size in args.world_sizes):
        raise ConfigError(f"--world-sizes must be numbers >= 1, got {list(args.world_sizes)}")
    for name in ("warmup_updates", "updates", "rounds", "threads", "length"):
        value = getattr(args, name)
        if value < (0 if name == "warmup_updates" else 1):
            low = 0 if name == "warmup_updates" else 1
            raise ConfigError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    if args.device == "cuda":
        available = torch.cuda.device_count()
        if max(args.world_sizes) > available:
            raise ConfigError(f"--world-sizes {max(args.world_sizes)} needs as many GPUs, "
                              f"this machine has {available}")  # fmt: skip
    from agents.resolve import resolve
    from agents.train_args import TrainArgs
    from train_rl import DESCRIPTION

    for size in args.world_sizes:  # the run's own checks (e.g. envs per process)
        resolve(parse_args(TrainArgs, train_args(args), "train_rl.py", DESCRIPTION), size)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (2 for a bad flag, with one line on stderr)."""
    args = parse_args(ScaleOutArgs, argv, "python benchmarks/scale_out.py",
                      __doc__.splitlines()[0])  # fmt: skip
    try:
        check(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR
    sizes = list(dict.fromkeys(args.world_sizes))
    rounds: dict[int, list[dict[str, float]]] = {size: [] for size in sizes}
    for _ in range(args.rounds):
        for size in sizes:
            rounds[size].append(measure(size, args))
    results = {}
    for size, measured in rounds.items():
        median = {key: statistics.median(r[key] for r in measured) for key in measured[0]}
        results[size] = {key: round(value, 6) for key, value in median.items()}
    reference, first = results[sizes[0]], results[sizes[0]]
    shared = ("parameters", "num_envs", "num_steps", "allreduces_per_update")
    per_size = {str(size): {key: value for key, value in figures.items() if key not in shared}
                for size, figures in results.items()}  # fmt: skip
    speedup = {size: r["steps_per_s"] / reference["steps_per_s"] for size, r in results.items()}
    efficiency = {size: value * sizes[0] / size for size, value in speedup.items()}
    line = {
        "benchmark": "scale_out",
        "device": args.device,
        "backend": "gloo" if args.device == "cpu" else "nccl",
        "task": "corridor",
        "length": args.length,
        "policy": args.policy,
        "algo": args.algo,
        "num_envs_total": int(first["num_envs"]),
        "num_steps": int(first["num_steps"]),
        "parameters": int(first["parameters"]),
        "allreduce_bytes": int(first["parameters"]) * 4,
        "allreduces_per_update": int(first["allreduces_per_update"]),
        "torch_threads_per_rank": args.threads,
        "cpu_count": os.cpu_count(),
        "rounds": args.rounds,
        "world_sizes": per_size,
        "speedup": {str(size): round(value, 3) for size, value in speedup.items()},
        "efficiency": {str(size): round(value, 3) for size, value in efficiency.items()},
    }
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
