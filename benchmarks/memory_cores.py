"""Time and peak memory per update chunk: Expire-Span against Transformer-XL at equal context.

For each maximum context C (default 1024, 2048, 4096) this builds, with one seed and the
same sizes, an Expire-Span policy with L_max = C and a Transformer-XL policy with a window
of M = C memories, and prints one JSON line comparing them side by side in this process.

Setup. Each policy first runs (without gradients) over C + T random observations of one
long episode, in chunks of T, so its cache is in steady state: Transformer-XL holds C
memories per env and layer; Expire-Span's spans are set (predictor weights 0, bias
logit(p)) to e = p·L_max with e + R - 1 = ``alive_fraction``·C, so that only that fraction
of its maximum context is alive (about 4 % by default, the bar asks for <= 5 %). Then the
measured work is one update chunk: forward over T steps of B envs from that state and
backward of ``logits.sum() + values.sum() + aux_loss`` (parameter gradients set to None
first, as ``optimizer.zero_grad()`` does, so their allocation counts).

Time: median wall time of ``--repeats`` such chunks (after one untimed warm-up), with
``--threads`` torch threads.

Peak memory: on CPU, the PyTorch profiler with ``profile_memory=True`` records every
allocation and free of the CPU tensor allocator with its size and time; the peak is the
largest running sum of those events during one forward + backward, i.e. the most tensor
memory held at once beyond what existed before the chunk (activations, saved tensors,
gradients, the new state). It counts tensor storage only (not Python objects or allocator
slack), the same way for both cores. The script checks this meter against a tensor of known
size before it starts. The incoming state (the cache) existed before the chunk and is
reported separately (``*_state_mb``); ``*_total_mb`` adds it. On CUDA the meter is
``torch.cuda.max_memory_allocated`` above the memory allocated before the chunk.

Usage (after ``pip install -e .``)::

    python benchmarks/memory_cores.py [--contexts 1024 2048 4096] [--num-envs 8]
        [--chunk 128] [--alive-fraction 0.04] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import gymnasium as gym
import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from policies import MemoryPolicy, State, make_policy
from policies.encoder import NUM_COLORS, NUM_OBJECTS, NUM_STATES

VIEW = 7
OBS_SPACE = gym.spaces.Dict({
    "image": gym.spaces.Box(0, 255, (VIEW, VIEW, 3), dtype=np.uint8),
    "instruction": gym.spaces.Discrete(7),
})
NUM_ACTIONS = 3
MB = 2**20


def random_obs(num_steps: int, num_envs: int, device: torch.device) -> dict[str, torch.Tensor]:
    shape = (num_steps, num_envs, VIEW, VIEW)
    image = torch.stack([torch.randint(n, shape) for n in (NUM_OBJECTS, NUM_COLORS, NUM_STATES)],
                        dim=-1).to(torch.uint8)
    return {"image": image.to(device), "instruction": torch.randint(7, shape[:2]).to(device)}


def cpu_peak_bytes(work) -> int:
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


def peak_bytes(work, device: torch.device) -> int:
    if device.type == "cuda":
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


def steady_state(policy: MemoryPolicy, context: int, args: argparse.Namespace) -> State:
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


def measure(policy: MemoryPolicy, state: State, args: argparse.Namespace) -> dict[str, float]:
    obs = random_obs(args.chunk, args.num_envs, args.device)
    starts = torch.zeros(args.chunk, args.num_envs, dtype=torch.bool, device=args.device)

    def update_chunk() -> None:
        policy.zero_grad(set_to_none=True)
        output, _ = policy(obs, state, starts)
        (output.logits.sum() + output.values.sum() + output.aux_loss).backward()

    update_chunk()  # warm-up
    times = []
    for _ in range(args.repeats):
        if args.device.type == "cuda":
            torch.cuda.synchronize(args.device)
        begin = time.perf_counter()
        update_chunk()
        if args.device.type == "cuda":
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


def compare(context: int, args: argparse.Namespace) -> dict[str, float | int | str]:
    sizes = {"d_model": args.d_model, "num_heads": args.num_heads, "num_layers": args.num_layers}
    alive = max(1, round(args.alive_fraction * context))
    span = alive - args.ramp_length + 1  # memories of ages 1 .. e + R - 1 stay alive
    if not 0 < span < context:
        raise SystemExit(f"alive fraction {args.alive_fraction} gives span {span}, outside "
                         f"(0, {context}) with ramp {args.ramp_length}")
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
        "context": context, "device": str(args.device), "threads": torch.get_num_threads(),
        "num_envs": args.num_envs, "chunk": args.chunk, **sizes,
        "es_time_s": round(es["time_s"], 4), "trxl_time_s": round(xl["time_s"], 4),
        "speedup": round(xl["time_s"] / es["time_s"], 2),
        "es_peak_mb": round(es["peak_mb"], 1), "trxl_peak_mb": round(xl["peak_mb"], 1),
        "peak_ratio": round(xl["peak_mb"] / es["peak_mb"], 2),
        "es_state_mb": round(es["state_mb"], 2), "trxl_state_mb": round(xl["state_mb"], 2),
        "total_ratio": round(xl["total_mb"] / es["total_mb"], 2),
        "es_alive_mean": es["memories_mean"], "es_alive_fraction":
            round(es["memories_mean"] / context, 4), "trxl_memories_mean": xl["memories_mean"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--alive-fraction", type=float, default=0.04)
    parser.add_argument("--ramp-length", type=int, default=16)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--num-layers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", type=torch.device, default=torch.device("cpu"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.device.type == "cpu":
        check_meter()
    for context in args.contexts:
        print(json.dumps(compare(context, args)), flush=True)


if __name__ == "__main__":
    main()
