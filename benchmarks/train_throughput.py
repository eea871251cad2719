"""Training steps per second: this project's PPO against sb3-contrib's RecurrentPPO.

Both sides train on the corridor of one length, side by side in one process with the same
torch CPU threads (``--threads``, recorded in ``torch_threads``), and each is timed over its
whole training loop (collecting rollouts *and* learning updates) for ``--seconds`` after a
warm-up. Each timed side also reports the share of its time in env stepping (``env_step``),
the rest of the rollout (``policy_forward``: the policy's forward, action sampling and
storing the step) and the learning update (``update``); ``other`` is what is left. Ours is
timed with a wrapper around its batched env's ``step``; sb3-contrib with a ``VecEnvWrapper``
around its ``DummyVecEnv`` and timers around ``collect_rollouts`` and ``train`` (so its GAE,
computed at the end of ``collect_rollouts``, counts as rollout; ours counts as update).

Default: each side with its own settings.

- **ours**: what ``python train_rl.py --env corridor --length L`` builds (the corridor
  preset: Expire-Span policy, PPO, 64 envs x 128 steps, 4 epochs; ``--policy`` picks
  another core), but on the full-length corridor throughout (no random lengths, no
  curriculum: the task the baseline gets), on the batched torch corridor, driven update by
  update through the trainer's collector and learner (the metric rows and checkpoints that
  ``Trainer.run`` writes are left out). The warm-up (``--warmup-updates``) lets the agent's
  memory fill up: by default long enough for one random-walk episode with Expire-Span
  (about 1.7 L steps with the preset's forward bias; early in training nearly every past
  step is alive, so the first updates are cheaper than the ones after them), one window
  with Transformer-XL, one update with the LSTM.
- **sb3-contrib**: ``RecurrentPPO("MlpLstmPolicy", DummyVecEnv(n envs))`` with its default
  hyperparameters (128 steps per env, 10 epochs, batch 128, LSTM 256) on the reference env,
  ``gym.make("ExpireRL/Corridor-v0", length=L)`` flattened by ``FlattenObservation``; by
  default with as many envs as ours. Timed from the start of its second rollout to the
  start of the first rollout that would begin past the budget (whole rollout + update
  cycles only; its logging is left out, as ours is).

``--from-run RUN_DIR`` starts ours (Expire-Span) from a trained agent's weights instead
(the run's latest checkpoint; e.g. the quick-start command's run at this length): the
steps/s of training once the spans are learnt and few memories are alive. Ours also reports
its matrix-multiply FLOPs per env step (rollout and update, counted by torch over one more
update), set against what ``TARGET_RATIO`` x sb3's steps/s would ask of the matrix work
alone and this CPU's float32 matrix-multiply rate on large matrices (``cpu_sgemm_gflops``);
``matmul_share_of_sgemm`` is the whole loop's matrix FLOP/s as a share of that rate. Where CUDA is
available, ours is also measured on it, once for each of the ``--cuda-num-envs`` env counts
(``--cuda-only`` skips the CPU runs).

``--equal-work``: the same network and the same PPO work; only the machinery differs (our
batched torch env and device-resident rollout and update against sb3's ``DummyVecEnv`` and
per-step Python). Ours is the corridor preset with ``--policy lstm`` on the full-length
corridor, at each of ``--ours-env-counts`` (64, 256, 1024); sb3-contrib's RecurrentPPO is
built from that config, at each of ``--sb3-env-counts`` (1, 8, 64): the same LSTM under
actor and critic, our observation encoder as its features extractor, single linear heads,
every weight copied from our freshly built policy, and the same rollout and update sizes and
PPO coefficients (the list, and what still differs by sb3's design, is in the docstring of
``train_throughput_sb3.py``). The JSON line carries both sides' steps/s at each env count,
``equal_work_ratio`` (ours ÷ sb3-contrib steps/s at the largest env count both measure, 64
by default) and ``ratio_to_sb3_best`` (ours at each count ÷ sb3-contrib at its fastest
count). Our side also carries ``matmul_share_of_sgemm`` at each count, and the line
``equal_work_ratio_bound``: the ratio ours would reach if it did nothing but its matrix
work at this CPU's large-matrix rate (``sgemm_bound_steps_per_s``), the ceiling of any
equal-work ratio on this machine.

``--trxl-window N`` (either mode) also times ours with the Expire-Span preset (from
``--from-run``'s weights if given) and with Transformer-XL of window N, at ``--num-envs``
envs, the two trained update by update in turn for ``--seconds`` each: ``equal_memory`` in
the JSON line, with ``expire_span_cost_vs_trxl`` (Expire-Span's time per step ÷
Transformer-XL's). Set N to the Expire-Span run's final alive count to compare them at
equal memory.

The measurements live beside this file: our side in ``train_throughput_ours.py``,
sb3-contrib's in ``train_throughput_sb3.py``; this file holds the flags, the modes that set
the two against each other, and the JSON line.

    python benchmarks/train_throughput.py [--length 1000] [--seconds 60] [--threads N]
    python benchmarks/train_throughput.py --from-run runs/corridor-expire_span-ppo-s1-...
    python benchmarks/train_throughput.py --equal-work --threads 2
    python benchmarks/train_throughput.py --from-run RUN_DIR --trxl-window 40
    python benchmarks/train_throughput.py --cuda-only --cuda-num-envs 64 1024 4096
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
import tyro

import envs  # noqa: F401  (registers ExpireRL/Corridor-v0)
from agents.cli import USAGE_ERROR, flag_name, parse_args
from agents.run_config import ConfigError, TrainConfig
from agents.run_dir import RunDirError
from agents.train_args import ThreadCount
from envs.core import check_int

# isort: split
# The benchmark's other modules, beside this file (a script's folder is on sys.path).
from train_throughput_ours import (
    benchmark_config,
    ours_interleaved,
    ours_steps_per_second,
    trained_weights,
)
from train_throughput_sb3 import sb3_default_model, sb3_equal_work_model, sb3_steps_per_second

TARGET_RATIO = 100.0
"""Ours ÷ sb3-contrib's default steps/s that the matrix-work estimate is set against."""

EQUAL_WORK_OURS = (64, 256, 1024)
"""Our env counts of --equal-work by default."""
EQUAL_WORK_SB3 = (1, 8, 64)
"""sb3-contrib's env counts of --equal-work by default."""


def _flag(metavar: str, default: str) -> Any:
    """A flag's metavar and what its unset value means, for --help."""
    return tyro.conf.arg(metavar=metavar, help_behavior_hint=f"(default: {default})")


def _counts(counts: tuple[int, ...]) -> Any:
    return _flag("INT...", " ".join(map(str, counts)))


@dataclass
class TrainThroughputArgs:
    """Training steps per second: this project's PPO against sb3-contrib's RecurrentPPO."""

    length: int = 1000
    """Corridor length L."""
    seconds: float = 60.0
    """Wall-clock budget of each measurement, after its warm-up."""
    warmup_updates: Annotated[int | None, _flag("INT", "by core")] = None
    """Our updates before timing: ceil(2 L / num_steps) + 1 with Expire-Span (one random-walk
    episode), ceil(M / num_steps) + 1 with a Transformer-XL window M, 1 with the LSTM."""
    policy: Annotated[
        Literal["expire_span", "trxl", "lstm"] | None,
        _flag("{expire_span,trxl,lstm}", "expire_span; lstm with --equal-work"),
    ] = None
    """Our memory core (--equal-work allows lstm only)."""
    num_envs: Annotated[int | None, _flag("INT", "preset")] = None
    """Our envs on CPU, and those of --trxl-window's measurements."""
    sb3_num_envs: Annotated[int | None, _flag("INT", "as many as ours")] = None
    """sb3-contrib's DummyVecEnv envs (not with --equal-work)."""
    cuda_num_envs: Annotated[tuple[int, ...], tyro.conf.arg(metavar="INT...")] = (4096,)
    """Our envs on CUDA, measured when CUDA is available (several: one run each)."""
    threads: ThreadCount = None
    """CPU threads for torch, both sides."""
    from_run: Annotated[str | None, _flag("RUN_DIR", "fresh weights")] = None
    """Start our Expire-Span policy from this run's latest weights (a trained corridor agent of
    the same length, e.g. the quick-start's) to time training once the spans are learnt."""
    skip_sb3: bool = False
    """Measure ours only (not with --equal-work)."""
    cuda_only: bool = False
    """Measure ours on CUDA only: no CPU runs (not with --equal-work)."""
    equal_work: bool = False
    """Time our LSTM policy against RecurrentPPO configured alike (how: the script's
    docstring) instead of against RecurrentPPO's defaults."""
    ours_env_counts: Annotated[tuple[int, ...] | None, _counts(EQUAL_WORK_OURS)] = None
    """With --equal-work: our env counts, one measurement each (multiples of the preset's
    minibatch count)."""
    sb3_env_counts: Annotated[tuple[int, ...] | None, _counts(EQUAL_WORK_SB3)] = None
    """With --equal-work: sb3-contrib's env counts, one measurement each."""
    trxl_window: Annotated[int | None, _flag("INT", "off")] = None
    """Also time ours with Expire-Span and with Transformer-XL of this window M, at --num-envs
    envs (e.g. the Expire-Span run's final alive count: equal memory)."""


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


# --- the measurements -------------------------------------------------------------------
def equal_memory(args: TrainThroughputArgs, weights: dict[str, Any] | None) -> dict[str, Any]:
    """Ours with Expire-Span and with Transformer-XL of window ``--trxl-window``, at
    ``--num-envs`` envs on CPU, timed update by update in turn (see `ours_interleaved`)."""
    runs = [(benchmark_config(args.length, "cpu", args.num_envs, args.threads), weights),
            (benchmark_config(args.length, "cpu", args.num_envs, args.threads, "trxl",
                              args.trxl_window), None)]  # fmt: skip
    expire_span, trxl = ours_interleaved(runs, args.seconds, args.warmup_updates)
    return {
        "trxl_window": args.trxl_window,
        "interleaved": True,
        "expire_span": expire_span,
        "trxl": trxl,
        "expire_span_cost_vs_trxl": round(trxl["steps_per_s"] / expire_span["steps_per_s"], 3),
    }


def equal_work(args: TrainThroughputArgs, configs: dict[int, TrainConfig]) -> dict[str, Any]:
    """Our LSTM policy at each of ``configs``' env counts against RecurrentPPO configured
    alike at each of ``--sb3-env-counts``."""
    sb3_counts = args.sb3_env_counts or EQUAL_WORK_SB3
    pair = max(set(configs) & set(sb3_counts))
    ours = {count: ours_steps_per_second(config, args.seconds, args.warmup_updates,
                                         count_flops=count == pair)
            for count, config in configs.items()}  # fmt: skip
    some_config = next(iter(configs.values()))
    sb3 = {count: sb3_steps_per_second(sb3_equal_work_model(some_config, count, args.seconds))
           for count in sb3_counts}  # fmt: skip
    best = max(sb3.values(), key=lambda measured: measured["steps_per_s"])
    learner = some_config.learner
    # The same network does the same matrix work per step at every env count; at this CPU's
    # large-matrix rate and nothing else, ours could go no faster than this.
    sgemm = sgemm_gflops()
    mflop = ours[pair]["matmul_mflop_per_step"]
    for measured in ours.values():
        measured["matmul_share_of_sgemm"] = round(
            measured["steps_per_s"] * mflop / 1e3 / sgemm, 3)
    ceiling = sgemm * 1e3 / mflop
    return {
        "settings": {
            "policy": some_config.policy, "policy_kwargs": some_config.policy_kwargs,
            "num_steps": learner.num_steps, "update_epochs": learner.update_epochs,
            "num_minibatches": learner.num_minibatches, "chunk_length": learner.chunk_length,
        },
        "ours": list(ours.values()),
        "sb3_contrib": list(sb3.values()),
        "sb3_best": {"num_envs": best["num_envs"], "steps_per_s": best["steps_per_s"]},
        "equal_work_num_envs": pair,
        "equal_work_ratio": round(ours[pair]["steps_per_s"] / sb3[pair]["steps_per_s"], 2),
        "ratio_to_sb3_best": {str(count): round(measured["steps_per_s"] / best["steps_per_s"], 2)
                              for count, measured in ours.items()},
        "matmul_mflop_per_step": mflop,
        "cpu_sgemm_gflops": round(sgemm, 1),
        "sgemm_bound_steps_per_s": round(ceiling, 1),
        "equal_work_ratio_bound": round(ceiling / sb3[pair]["steps_per_s"], 2),
    }


def default_mode(args: TrainThroughputArgs, weights: dict[str, Any] | None) -> dict[str, Any]:
    """Ours (the preset) against RecurrentPPO's defaults, and ours on CUDA where available."""
    policy = args.policy or "expire_span"
    ours = sb3 = None
    if not args.cuda_only:
        config = benchmark_config(args.length, "cpu", args.num_envs, args.threads, policy)
        ours = ours_steps_per_second(config, args.seconds, args.warmup_updates,
                                     weights if policy == "expire_span" else None)
        if not args.skip_sb3:
            sb3_num_envs = args.sb3_num_envs or ours["num_envs"]
            sb3 = sb3_steps_per_second(sb3_default_model(args.length, sb3_num_envs,
                                                         args.seconds))  # fmt: skip
    ours_cuda = []
    if torch.cuda.is_available():
        for num_envs in args.cuda_num_envs:
            config = benchmark_config(args.length, "cuda", num_envs, args.threads, policy)
            measured = ours_steps_per_second(config, args.seconds, args.warmup_updates,
                                             weights if policy == "expire_span" else None)
            if sb3:
                ratio_cuda = measured["steps_per_s"] / sb3["steps_per_s"]
                measured["ratio_to_sb3_cpu"] = round(ratio_cuda, 1)
            ours_cuda.append(measured)
            print(json.dumps({"partial": "cuda", **measured}), file=sys.stderr, flush=True)
    ratio = ours["steps_per_s"] / sb3["steps_per_s"] if ours and sb3 else None
    # What the target asks of the matrix work alone: TARGET_RATIO x sb3's steps/s x our
    # FLOPs per step.
    target_needs = (TARGET_RATIO * sb3["steps_per_s"] * ours["matmul_mflop_per_step"] / 1e3
                    if ours and sb3 else None)  # fmt: skip
    sgemm = sgemm_gflops() if not args.cuda_only else None
    if ours and sgemm:  # the training loop's matrix FLOP/s as a share of this CPU's rate
        ours["matmul_share_of_sgemm"] = round(
            ours["steps_per_s"] * ours["matmul_mflop_per_step"] / 1e3 / sgemm, 3)
    return {
        "ours": ours,
        "sb3_contrib": sb3,
        "ratio": round(ratio, 2) if ratio is not None else None,
        "target_ratio": TARGET_RATIO,
        "target_met": ratio >= TARGET_RATIO if ratio is not None else None,
        "target_needs_matmul_gflops": round(target_needs, 1) if target_needs is not None else None,
        "cpu_sgemm_gflops": round(sgemm, 1) if sgemm else None,
        "ours_cuda": ours_cuda,
    }


def check_args(args: TrainThroughputArgs) -> dict[int, TrainConfig]:
    """Raise ConfigError or ValueError naming the first flag that cannot work; with
    --equal-work, return our config at each env count."""
    if not args.seconds > 0:
        raise ConfigError(f"--seconds must be a positive number, got {args.seconds}")
    for name in ("num_envs", "sb3_num_envs", "threads", "trxl_window"):
        value = getattr(args, name)
        if value is not None:
            check_int(flag_name(name), value, 1)
    if args.warmup_updates is not None:
        check_int("--warmup-updates", args.warmup_updates, 0)
    for count in args.cuda_num_envs:
        check_int("--cuda-num-envs", count, 1)
    if args.cuda_only and not torch.cuda.is_available():
        raise ConfigError("--cuda-only: no CUDA device is available")
    uses_expire_span = (args.trxl_window is not None
                        or (not args.equal_work and args.policy in (None, "expire_span")))
    if args.from_run is not None and not uses_expire_span:
        raise ConfigError("--from-run loads Expire-Span weights: time ours with --policy "
                          "expire_span, or give --trxl-window")
    benchmark_config(args.length, num_envs=args.num_envs)  # the length and --num-envs
    if not args.equal_work:
        for name in ("ours_env_counts", "sb3_env_counts"):
            if getattr(args, name) is not None:
                raise ConfigError(f"{flag_name(name)} needs --equal-work")
        return {}
    for name in ("skip_sb3", "cuda_only", "sb3_num_envs"):
        if getattr(args, name):
            raise ConfigError(f"{flag_name(name)} does not apply to --equal-work")
    if args.num_envs is not None and args.trxl_window is None:
        raise ConfigError("--num-envs applies to --equal-work only with --trxl-window (the "
                          "equal-work env counts are --ours-env-counts)")
    if args.policy not in (None, "lstm"):
        raise ConfigError(f"--equal-work times the LSTM policy (as sb3-contrib's), not "
                          f"--policy {args.policy}")
    learner = benchmark_config(args.length, policy="lstm").learner
    configs = {}
    for count in args.ours_env_counts or EQUAL_WORK_OURS:
        check_int("--ours-env-counts", count, 1)
        if count % learner.num_minibatches:
            raise ConfigError(f"--ours-env-counts {count}: not a multiple of the preset's "
                              f"{learner.num_minibatches} minibatches")
        configs[count] = benchmark_config(args.length, "cpu", count, args.threads, "lstm")
    sb3_counts = args.sb3_env_counts or EQUAL_WORK_SB3
    for count in sb3_counts:
        check_int("--sb3-env-counts", count, 1)
        if count * learner.num_steps % learner.num_minibatches:
            raise ConfigError(f"--sb3-env-counts {count}: {count} x {learner.num_steps} steps "
                              f"do not split into {learner.num_minibatches} minibatches")
    if not set(configs) & set(sb3_counts):
        raise ConfigError("--ours-env-counts and --sb3-env-counts need an env count in common "
                          "(the equal-work ratio compares the two there)")
    return configs


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (2 for a bad flag, with one line on stderr)."""
    args = parse_args(TrainThroughputArgs, argv, "python benchmarks/train_throughput.py",
                      __doc__.splitlines()[0])
    weights = None
    try:
        configs = check_args(args)
        if args.from_run is not None:  # once, before anything is timed
            weights = trained_weights(args.from_run, args.length)
    except (ConfigError, RunDirError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = {
        "benchmark": "train_throughput",
        "mode": "equal_work" if args.equal_work else "default",
        "task": "corridor",
        "length": args.length,
        "from_run": args.from_run,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    if args.equal_work:
        result.update(equal_work(args, configs))
    else:
        result.update(default_mode(args, weights))
    result["equal_memory"] = None
    if args.trxl_window is not None:
        result["equal_memory"] = equal_memory(args, weights)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
