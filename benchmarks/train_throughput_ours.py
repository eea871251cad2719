"""Our side of ``train_throughput.py``: the benchmark's config, our training loop timed update
by update, and the clock both sides are timed with.

Ours is what ``python train_rl.py --env corridor --length L`` builds, on the full-length
corridor throughout, driven through the trainer's collector and learner (the metric rows and
checkpoints that ``Trainer.run`` writes are left out). Its env's ``step`` is timed by a
wrapper (on CPU); one device sync between rollout and update splits their time. One more,
untimed, update counts its matrix-multiply FLOPs per env step.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.flop_counter import FlopCounterMode

from agents.load_run import load_run
from agents.resolve import resolve
from agents.run_config import TrainConfig
from agents.run_dir import RunDir, RunDirError
from agents.train_args import TrainArgs
from agents.trainer import Trainer


# -- the benchmark's config ----------------------------------------------------------------
def benchmark_config(
    length: int,
    device: str = "cpu",
    num_envs: int | None = None,
    threads: int | None = None,
    policy: str = "expire_span",
    memory_size: int | None = None,
) -> TrainConfig:
    """The corridor preset of ``length`` for ``policy``, on the full-length corridor
    throughout, as sb3-contrib gets it: the preset's random lengths and curriculum would time
    shorter episodes than the baseline's. Raises ConfigError for settings that cannot work."""
    return resolve(TrainArgs(env="corridor", length=length, device=device, num_envs=num_envs,
                             threads=threads, min_length=length, curriculum_start=length,
                             policy=policy, memory_size=memory_size))  # fmt: skip


def default_warmup_updates(config: TrainConfig) -> int:
    """Updates that let the policy's memory fill up before timing (see ``--warmup-updates``)."""
    num_steps = config.learner.num_steps
    if config.policy == "expire_span":
        return math.ceil(2 * config.env_kwargs["length"] / num_steps) + 1
    if config.policy == "trxl":
        return math.ceil(config.policy_kwargs.get("memory_size", 0) / num_steps) + 1
    return 1


# -- the clock, both sides ------------------------------------------------------------------
class Clock(NamedTuple):
    """A moment of a training loop: wall time, and the env steps and the seconds of env
    stepping, rollouts and updates counted up to it. ``later.since(earlier)`` is the span."""

    time: float
    steps: int
    env_s: float
    rollout_s: float
    update_s: float

    def since(self, earlier: Clock) -> Clock:
        return Clock(*(now - then for now, then in zip(self, earlier, strict=True)))


def time_shares(span: Clock) -> dict[str, float]:
    """Shares of a span's time: env stepping, the rest of the rollout, the update, the rest."""
    shares = {"env_step": span.env_s, "policy_forward": span.rollout_s - span.env_s,
              "update": span.update_s, "other": span.time - span.rollout_s - span.update_s}
    return {key: round(value / span.time, 3) for key, value in shares.items()}


# -- our training loop, timed ---------------------------------------------------------------
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Wraps a batched env and adds up the wall time of its ``step`` calls (CPU only: on
    CUDA the step returns before its work is done)."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.seconds = 0.0

    def step(self, actions: torch.Tensor) -> Any:
        start = time.perf_counter()
        result = self.env.step(actions)
        self.seconds += time.perf_counter() - start
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)


class OursLoop:
    """The trainer's collector and learner driven update by update, timed (the env's steps
    too, on CPU)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.timer = None
        if trainer.device.type == "cpu":
            self.timer = trainer.collector.env = StepTimer(trainer.collector.env)
        self.steps_per_update = trainer.steps_per_update
        self.steps, self.rollout_s, self.update_s = 0, 0.0, 0.0

    def update(self) -> None:
        """One rollout and its update, with one device sync between them to split the time."""
        start = time.perf_counter()
        rollout = self.trainer.collector.collect()
        _synchronize(self.trainer.device)
        middle = time.perf_counter()
        self.trainer.learner.update(rollout)
        _synchronize(self.trainer.device)
        self.rollout_s += middle - start
        self.update_s += time.perf_counter() - middle
        self.steps += self.steps_per_update

    def clock(self) -> Clock:
        env_s = self.timer.seconds if self.timer else math.nan
        return Clock(time.perf_counter(), self.steps, env_s, self.rollout_s, self.update_s)

    def measure(self, warmup_updates: int, seconds: float) -> Clock:
        """Warm-up updates, then updates until ``seconds`` have passed: the timed span."""
        for _ in range(warmup_updates):
            self.update()
        start = self.clock()
        while True:
            self.update()
            end = self.clock()
            if end.time - start.time >= seconds:
                return end.since(start)


@contextlib.contextmanager
def _timed_loop(config: TrainConfig, weights: dict[str, Any] | None) -> Iterator[OursLoop]:
    """A trainer for ``config`` (from ``weights`` if given) in a throwaway run directory."""
    config = copy.deepcopy(config)
    learner_config = config.learner
    steps_per_update = learner_config.num_envs * learner_config.num_steps
    # The preset's total only sets the learning-rate schedule; keep it unless it is too small.
    learner_config.total_steps = max(learner_config.total_steps, 1000 * steps_per_update)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, RunDir.create(Path(tmp) / "run", config), progress=False)
        if weights is not None:
            trainer.policy.load_state_dict(weights)
        yield OursLoop(trainer)


def _measurement(
    loop: OursLoop, span: Clock, warmup_updates: int, trained: bool, count_flops: bool
) -> dict[str, Any]:
    """The JSON fields of one timed loop (and its FLOPs per step, counted over one more,
    untimed, update)."""
    trainer = loop.trainer
    config, learner_config = trainer.config, trainer.config.learner
    alive = trainer.collector.last_output.memory_alive.float()  # [B, L]; L = 0 for lstm
    flops = None
    if count_flops:
        with FlopCounterMode(display=False) as counter:
            loop.update()
        flops = round(counter.get_total_flops() / loop.steps_per_update / 1e6, 3)
    return {
        "steps_per_s": round(span.steps / span.time, 1),
        "device": str(trainer.device),
        "num_envs": learner_config.num_envs,
        "num_steps": learner_config.num_steps,
        "update_epochs": learner_config.update_epochs,
        "num_minibatches": learner_config.num_minibatches,
        "policy": config.policy,
        "policy_kwargs": config.policy_kwargs,
        "algo": learner_config.algo,
        "trained_weights": trained,
        "warmup_updates": warmup_updates,
        "measured_updates": span.steps // loop.steps_per_update,
        "measured_steps": span.steps,
        "seconds": round(span.time, 2),
        "rollout_fraction": round(span.rollout_s / span.time, 3),
        "time_shares": time_shares(span) if loop.timer else None,
        "mem_alive_mean": round(alive.mean().item(), 1) if alive.numel() else None,
        "mem_alive_max": int(alive.max().item()) if alive.numel() else None,
        "matmul_mflop_per_step": flops,
    }


def ours_steps_per_second(
    config: TrainConfig,
    seconds: float,
    warmup_updates: int | None = None,
    weights: dict[str, Any] | None = None,
    count_flops: bool = True,
) -> dict[str, Any]:
    """Train ``config`` for ``seconds`` after a warm-up; steps/s of the whole loop. With
    ``weights`` (see `trained_weights`) the policy starts from a trained agent."""
    if warmup_updates is None:
        warmup_updates = default_warmup_updates(config)
    with _timed_loop(config, weights) as loop:
        span = loop.measure(warmup_updates, seconds)
        return _measurement(loop, span, warmup_updates, weights is not None, count_flops)


def ours_interleaved(
    runs: Sequence[tuple[TrainConfig, dict[str, Any] | None]],
    seconds: float,
    warmup_updates: int | None = None,
) -> list[dict[str, Any]]:
    """Each (config, weights) of ``runs`` trained update by update in turn, after their
    warm-ups, until each has been busy for ``seconds``: steps/s over each loop's own time
    (its rollouts and updates). Alternating puts every loop through the same spells of a
    noisy machine, so their ratio holds where two runs one after the other differ by 10 %."""
    with contextlib.ExitStack() as stack:
        loops = [stack.enter_context(_timed_loop(config, weights)) for config, weights in runs]
        warmups = [default_warmup_updates(config) if warmup_updates is None else warmup_updates
                   for config, _ in runs]  # fmt: skip
        for loop, warmup in zip(loops, warmups, strict=True):
            for _ in range(warmup):
                loop.update()
        starts = [loop.clock() for loop in loops]
        while True:
            for loop in loops:
                loop.update()
            spans = [loop.clock().since(start) for loop, start in zip(loops, starts, strict=True)]
            # Each loop's time is its own rollouts and updates, not the wall time between.
            spans = [span._replace(time=span.rollout_s + span.update_s) for span in spans]
            if min(span.time for span in spans) >= seconds:
                break
        return [_measurement(loop, span, warmup, weights is not None, count_flops=True)
                for loop, span, warmup, (_, weights) in zip(loops, spans, warmups, runs,
                                                            strict=True)]  # fmt: skip


def trained_weights(path: str, length: int) -> dict[str, Any]:
    """The policy weights of run ``path``'s latest checkpoint, which must be the benchmark's
    policy (an Expire-Span corridor run of the same length, e.g. the quick-start command's);
    raises RunDirError or ConfigError otherwise."""
    loaded = load_run(path)  # rejects a checkpoint without weights, or weights that don't fit

    def model(of: TrainConfig) -> str:  # what the weights must fit, as config.json writes it
        return json.dumps([of.env, of.env_kwargs.get("length"), of.policy, of.policy_kwargs],
                          sort_keys=True)

    wanted = benchmark_config(length)
    if model(loaded.config) != model(wanted):
        raise RunDirError(f"--from-run {path}: [env, length, policy, policy settings] are "
                          f"{model(loaded.config)}, not the benchmark's {model(wanted)}")
    return loaded.policy.state_dict()
