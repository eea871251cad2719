"""Time and peak memory per update chunk: Expire-Span against Transformer-XL at equal context.

For each maximum context C (default 1024, 2048, 4096) this builds, with one seed and the
same sizes, an Expire-Span policy with L_max = C and a Transformer-XL policy with a window
of M = C memories, and prints one JSON line comparing them side by side in this process.

Setup. Each policy first runs (without gradients) over C + T random observations of one
long episode, in chunks of T, so its cache is in steady state: Transformer-XL holds C
memories per env and layer; Expire-Span's spans are set (predictor weights 0, bias
logit(p)) to e = p·L_max with e + R - 1 = ``alive_fraction``·C, so that only that fraction
of its maximum context is alive (4 % by default). A memory stays alive on the ramp for R - 1
steps past its span, so Expire-Span keeps at least R memories (e = 1): where the fraction
asks for fewer (e.g. 4 % of C = 256 is 10, with R = 16), it keeps R, says so on stderr and
records the count it was set to in ``es_alive_target``. Then the measured work is one
update chunk: forward over T steps of B envs from that state and backward of
``logits.sum() + values.sum() + aux_loss`` (parameter gradients set to None first, as
``optimizer.zero_grad()`` does, so their allocation counts).

Time: median wall time of ``--repeats`` such chunks (after one untimed warm-up), with
``--threads`` torch threads (recorded in ``torch_threads``).

Peak memory: on CPU, the PyTorch profiler with ``profile_memory=True`` records every
allocation and free of the CPU tensor allocator with its size and time; the peak is the
largest running sum of those events during one forward + backward, i.e. the most tensor
memory held at once beyond what existed before the chunk (activations, saved tensors,
gradients, the new state). It counts tensor storage only (not Python objects or allocator
slack), the same way for both cores. The script checks this meter against a tensor of known
size before it starts. The incoming state (the cache) existed before the chunk and is
reported separately (``*_state_mb``); ``*_total_mb`` adds it. On CUDA the meter is
``torch.cuda.max_memory_allocated`` above the memory allocated before the chunk.

Usage (after ``pip install -e .``; ``--help`` lists every option)::

    python benchmarks/memory_cores.py [--contexts 1024 2048 4096] [--num-envs 8]
        [--chunk 128] [--alive-fraction 0.04] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

import gymnasium as gym
import numpy as np
import torch
import tyro
from torch.profiler import ProfilerActivity, profile

from agents.cli import USAGE_ERROR, flag_name, parse_args, resolve_device
from agents.run_config import ConfigError
from agents.train_args import ThreadCount
from envs.core import check_int
from policies import MemoryPolicy, State, make_policy
from policies.encoder import NUM_COLORS, NUM_OBJECTS, NUM_STATES


@dataclass
class MemoryCoresArgs:
    """Time and peak memory per update chunk: Expire-Span against Transformer-XL."""

    contexts: Annotated[tuple[int, ...], tyro.conf.arg(metavar="INT...")] = (1024, 2048, 4096)
    """Maximum contexts C, one JSON line each: Expire-Span's L_max and Transformer-XL's
    window M (at least 2)."""
    num_envs: int = 8
    """Env columns B of the update chunk."""
    chunk: int = 128
    """Steps T of the update chunk (and of each chunk that fills the cache first)."""
    alive_fraction: float = 0.04
    """Share of C that Expire-Span keeps alive, in (0, 1]; at least R memories stay alive
    (see the script's docstring)."""
    ramp_length: int = 16
    """Expire-Span's ramp R."""
    d_model: int = 64
    """Model width D of both cores."""
    num_heads: int = 4
    """Attention heads H of both cores (must divide --d-model)."""
    num_layers: int = 1
    """Layers of both cores."""
    repeats: int = 3
    """Timed update chunks per core; the median is reported."""
    threads: ThreadCount = None
    """CPU threads for torch."""
    seed: int = 0
    """Seed of both policies' initial weights and of the random observations."""
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    """Where the policies run (auto: cuda when available; on cuda the peak memory comes from
    torch.cuda's allocator)."""


VIEW = 7
OBS_SPACE = gym.spaces.Dict({
    "image": gym.spaces.Box(0, 255, (VIEW, VIEW, 3), dtype=np.uint8),
    "instruction": gym.spaces.Discrete(7),
})
NUM_ACTIONS = 3
MB = 2**20


def random_obs(num_steps: int, num_envs: int, device: str) -> dict[str, torch.Tensor]:
    shape = (num_steps, num_envs, VIEW, VIEW)
    image = torch.stack([torch.randint(n, shape) for n in (NUM_OBJECTS, NUM_COLORS, NUM_STATES)],
                        dim=-1).to(torch.uint8)
    return {"image": image.to(device), "instruction": torch.randint(7, shape[:2]).to(device)}


def cpu_peak_bytes(work: Callable[[], None]) -> int:
    """Largest running sum of CPU allocator events (bytes) while ``work()`` runs."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        work()
    events = [(event.start_ns(), event.nbytes()) for event in prof.profiler.kineto_results.events()
              if event.name() == "[memory]" and str(event.device_type()).endswith("CPU")]
    running = peak = 0
    for _, nbytes in sorted(events):
        running += nbytes
        peak = max(peak, running)
    return peak


def peak_bytes(work: Callable[[], None], device: str) -> int:
    """Most tensor memory (bytes) held at once by ``work()`` beyond what was held before."""
    if device == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        work()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    return cpu_peak_bytes(work)


def check_meter() -> None:
    """The CPU meter must see a 64 MiB tensor (alone, and on top of a freed 16 MiB one)."""
    def work() -> None:
        scratch = torch.ones(4 * MB)  # 16 MiB, freed before the big one
        del scratch
        big = torch.ones(16 * MB)  # 64 MiB
        big.add_(1)

    peak = cpu_peak_bytes(work)
    if not 64 * MB <= peak < 65 * MB:
        raise SystemExit(f"memory meter is off: saw {peak / MB:.1f} MiB for a 64 MiB tensor")


def steady_state(policy: MemoryPolicy, context: int, args: MemoryCoresArgs) -> State:
    """The state after C + T steps of one episode (one chunk of T at a time, no gradients)."""
    state = policy.initial_state(args.num_envs)
    steps = 0
    with torch.no_grad():
        while steps < context + args.chunk:
            starts = torch.zeros(args.chunk, args.num_envs, dtype=torch.bool, device=args.device)
            starts[0] = steps == 0
            _, state = policy(random_obs(args.chunk, args.num_envs, args.device), state, starts)
            steps += args.chunk
    return state


def measure(policy: MemoryPolicy, state: State, args: MemoryCoresArgs) -> dict[str, float]:
    obs = random_obs(args.chunk, args.num_envs, args.device)
    starts = torch.zeros(args.chunk, args.num_envs, dtype=torch.bool, device=args.device)

    def update_chunk() -> None:
        policy.zero_grad(set_to_none=True)
        output, _ = policy(obs, state, starts)
        (output.logits.sum() + output.values.sum() + output.aux_loss).backward()

    update_chunk()  # warm-up
    times = []
    for _ in range(args.repeats):
        if args.device == "cuda":
            torch.cuda.synchronize(args.device)
        begin = time.perf_counter()
        update_chunk()
        if args.device == "cuda":
            torch.cuda.synchronize(args.device)
        times.append(time.perf_counter() - begin)
    peak = peak_bytes(update_chunk, args.device)
    with torch.no_grad():
        output, _ = policy(obs, state, starts)
    return {
        "time_s": statistics.median(times),
        "peak_mb": peak / MB,
        "state_mb": state.nbytes / MB,
        "total_mb": (peak + state.nbytes) / MB,
        "memories_mean": output.memory_alive.float().mean().item(),
    }


def expire_span_setup(context: int, alive_fraction: float, ramp_length: int) -> tuple[int, int]:
    """(memories alive, span e) that keep ``alive_fraction`` of ``context`` alive: e + R - 1
    memories, at least R (e = 1), since a memory stays on the ramp R - 1 steps past its span.
    Raises ConfigError where the span would reach L_max = ``context``."""
    alive = max(round(alive_fraction * context), ramp_length)
    span = alive - ramp_length + 1  # memories of ages 1 .. e + R - 1 stay alive
    if span >= context:
        raise ConfigError(f"--alive-fraction {alive_fraction}: {alive} memories alive at context "
                          f"{context} need a span of {span}, not below L_max = {context}; use a "
                          f"smaller fraction or a longer --ramp-length")
    return alive, span


def compare(context: int, args: MemoryCoresArgs) -> dict[str, float | int | str]:
    sizes = {"d_model": args.d_model, "num_heads": args.num_heads, "num_layers": args.num_layers}
    alive, span = expire_span_setup(context, args.alive_fraction, args.ramp_length)
    asked = round(args.alive_fraction * context)
    if alive > asked:
        print(f"note: context {context}: --alive-fraction {args.alive_fraction:g} is {asked} "
              f"memories, fewer than the ramp keeps alive (R = {args.ramp_length}); "
              f"Expire-Span keeps {alive}", file=sys.stderr, flush=True)
    torch.manual_seed(args.seed)
    expire = make_policy("expire_span", OBS_SPACE, NUM_ACTIONS, max_span=context,
                         ramp_length=args.ramp_length, span_init=span / context, **sizes)
    torch.manual_seed(args.seed)
    trxl = make_policy("trxl", OBS_SPACE, NUM_ACTIONS, memory_size=context, **sizes)
    results = {}
    for name, policy in (("expire_span", expire), ("trxl", trxl)):
        policy.to(args.device).train()
        results[name] = measure(policy, steady_state(policy, context, args), args)
    es, xl = results["expire_span"], results["trxl"]
    return {
        "benchmark": "memory_cores",
        "context": context, "device": args.device, "torch_threads": torch.get_num_threads(),
        "num_envs": args.num_envs, "chunk": args.chunk, **sizes,
        "es_time_s": round(es["time_s"], 4), "trxl_time_s": round(xl["time_s"], 4),
        "speedup": round(xl["time_s"] / es["time_s"], 2),
        "es_peak_mb": round(es["peak_mb"], 1), "trxl_peak_mb": round(xl["peak_mb"], 1),
        "peak_ratio": round(xl["peak_mb"] / es["peak_mb"], 2),
        "es_state_mb": round(es["state_mb"], 2), "trxl_state_mb": round(xl["state_mb"], 2),
        "total_ratio": round(xl["total_mb"] / es["total_mb"], 2),
        "es_alive_target": alive, "es_alive_mean": es["memories_mean"], "es_alive_fraction":
            round(es["memories_mean"] / context, 4), "trxl_memories_mean": xl["memories_mean"],
    }


def check_args(args: MemoryCoresArgs) -> None:
    """Raise ConfigError (or ValueError) naming the first flag whose value cannot work."""
    for context in args.contexts:
        check_int("--contexts", context, 2)
    if not args.contexts:
        raise ConfigError("--contexts: give at least one context")
    for name in ("num_envs", "chunk", "ramp_length", "d_model", "num_heads", "num_layers",
                 "repeats"):
        check_int(flag_name(name), getattr(args, name), 1)
    if args.threads is not None:
        check_int("--threads", args.threads, 1)
    if args.d_model % args.num_heads:
        raise ConfigError(f"--num-heads {args.num_heads} must divide --d-model {args.d_model}")
    if not 0 < args.alive_fraction <= 1:
        raise ConfigError(f"--alive-fraction must be in (0, 1], got {args.alive_fraction}")
    for context in args.contexts:
        expire_span_setup(context, args.alive_fraction, args.ramp_length)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (2 for a bad flag, with one line on stderr)."""
    args = parse_args(MemoryCoresArgs, argv, "python benchmarks/memory_cores.py",
                      __doc__.splitlines()[0])
    try:
        check_args(args)
        args.device = resolve_device(args.device)
    except (ConfigError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "cpu":
        check_meter()
    for context in args.contexts:
        print(json.dumps(compare(context, args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
