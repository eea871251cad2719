"""Evaluation of saved policies on the batched env, and everything it needs from a run.

Shape legend: B num_envs, L layers (of the memory core), A actions.

The core is :func:`evaluate`: it plays ``episodes`` episodes with any
:class:`Agent` (a trained :class:`PolicyAgent`, or the task's scripted
:class:`OracleAgent`, so the evaluator itself can be checked against a known
answer) and returns an :class:`EvalResult`. Episodes are split evenly over
the envs as in Stable-Baselines3: env b plays ``(episodes + b) // B``
counted episodes, and what it plays after them is not counted, so short
episodes do not dominate. Everything stays on the env's device; the host
reads a flag once every ``check_interval`` steps to see whether all envs are
done, and the sums once at the end.

Rebuilding a run from its directory is `agents.load_run`; progress displays are
`agents.eval_progress`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import torch

import envs
from agents.eval_progress import EvalProgress, seconds_left
from policies.policy import MemoryPolicy, PolicyOutput

Tensor = torch.Tensor
Obs = dict[str, Tensor]

Z_95 = 1.959963984540054
"""Two-sided 95% quantile of the standard normal distribution."""

BASE_INFO_KEYS = ("success", "episode_return", "episode_length", "final_obs")
"""``info`` entries every batched env has; the others are the task's per-episode counters."""


# -- agents ------------------------------------------------------------------------------
class ActionStep(NamedTuple):
    """What an agent does in one step of B envs."""

    actions: Tensor
    """[B] actions."""
    state: Any
    """The agent's state after the step (a `policies.State`, or None)."""
    memory_alive: Tensor | None
    """[B, L] memories per layer kept for the next step, or None for agents without them."""
    output: PolicyOutput | None = None
    """The policy's full output of the step ([1, B, ...] fields), when there is a policy."""


class Agent(Protocol):
    """Anything the evaluator can play: a trained policy or a scripted one."""

    def initial_state(self, num_envs: int, device: torch.device) -> Any:
        """The state before the first step of ``num_envs`` envs."""

    def act(self, obs: Obs, state: Any, episode_starts: Tensor) -> ActionStep:
        """Actions for ``obs`` (fields [B, ...]); ``episode_starts`` [B] marks new episodes."""


class PolicyAgent:
    """A `MemoryPolicy` acting greedily (``deterministic``) or by sampling its distribution.

    Sampling draws from its own generator (seeded by ``seed``), so an evaluation does not
    disturb, nor depend on, torch's global random state.
    """

    def __init__(self, policy: MemoryPolicy, deterministic: bool = True, seed: int = 0):
        self.policy = policy
        self.deterministic = deterministic
        device = next(policy.parameters()).device
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def initial_state(self, num_envs: int, device: torch.device) -> Any:
        return self.policy.initial_state(num_envs, device)

    @torch.no_grad()
    def act(self, obs: Obs, state: Any, episode_starts: Tensor) -> ActionStep:
        one_step = {key: value[None] for key, value in obs.items()}  # [B, ...] -> [1, B, ...]
        output, state = self.policy(one_step, state, episode_starts[None])
        logits = output.logits[0]  # [B, A]
        if self.deterministic:
            actions = logits.argmax(dim=-1)
        else:
            probs = torch.softmax(logits.float(), dim=-1)
            actions = torch.multinomial(probs, 1, generator=self.generator).squeeze(1)
        alive = output.memory_alive  # [B, L]
        return ActionStep(actions, state, alive if alive.numel() else None, output)


class OracleAgent:
    """The task's scripted oracle (it reads the env's hidden layout), as an agent."""

    def __init__(self, env: envs.BatchedEnv):
        self.env = env

    def initial_state(self, num_envs: int, device: torch.device) -> None:
        return None

    def act(self, obs: Obs, state: Any, episode_starts: Tensor) -> ActionStep:
        return ActionStep(self.env.oracle_actions(), None, None)


# -- evaluation ----------------------------------------------------------------------------
def wilson_interval(successes: float, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default); (nan, nan) if no trial."""
    if trials <= 0:
        return (math.nan, math.nan)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    low = 0.0 if successes <= 0 else max(0.0, centre - half)  # exact ends, no rounding dust
    high = 1.0 if successes >= trials else min(1.0, centre + half)
    return (low, high)


@dataclass
class EvalResult:
    """Outcome of :func:`evaluate`; ``to_dict`` is what eval.json holds (NaN -> null)."""

    episodes: int
    success_rate: float
    success_ci95: tuple[float, float]
    mean_return: float
    std_return: float
    mean_length: float
    timeout_rate: float
    """Share of the episodes cut off by the time limit (truncated, not terminated)."""
    mem_alive_mean: float
    """Memories alive per env and layer, mean over the counted steps (NaN without memories)."""
    mem_alive_max: float
    """Largest number alive in any env and layer at any counted step."""
    counters: dict[str, float] = field(default_factory=dict)
    """The task's per-episode counters, mean per episode (e.g. portal ``goals``), plus
    ``instructions_carried_fraction`` = carried / resolved for the instruction task."""
    num_envs: int = 0
    env_steps: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        def clean(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            return value

        return clean(dataclasses.asdict(self))


def episode_targets(episodes: int, num_envs: int, device: torch.device) -> Tensor:
    """[B] counted episodes per env: ``(episodes + b) // B``, which sum to ``episodes``."""
    return (episodes + torch.arange(num_envs, device=device)) // num_envs


class EpisodeTally:
    """Sums over the counted episodes and steps of an evaluation, kept on the device."""

    def __init__(self, device: torch.device):
        # success, return, return², length, time-outs: sums over counted episodes.
        self.sums = torch.zeros(5, dtype=torch.float64, device=device)
        self.counters: dict[str, Tensor] = {}
        # alive memories: sum and count of (env, layer) entries at counted steps, and max.
        self.alive = torch.zeros(2, dtype=torch.float64, device=device)
        self.alive_max = torch.full((), -math.inf, dtype=torch.float64, device=device)

    def add_memory(self, alive: Tensor, counting: Tensor) -> None:
        """``alive`` [B, L] memories kept per env and layer; ``counting`` [B] bool."""
        alive = alive.to(torch.float64)
        weight = counting.to(torch.float64)[:, None]  # [B, 1]
        self.alive += torch.stack([(alive * weight).sum(), weight.sum() * alive.shape[1]])
        masked = torch.where(counting[:, None], alive, -math.inf)  # [B, L]
        self.alive_max = torch.maximum(self.alive_max, masked.max())

    def add_episodes(self, counted: Tensor, info: dict[str, Tensor], timed_out: Tensor) -> None:
        """Add the episodes that ended where ``counted`` [B] is true; ``timed_out`` [B] marks
        those cut off by the time limit."""
        counted = counted.to(torch.float64)
        episode_return = info["episode_return"].to(torch.float64)
        self.sums += torch.stack([
            (info["success"].to(torch.float64) * counted).sum(),
            (episode_return * counted).sum(),
            (episode_return.square() * counted).sum(),
            (info["episode_length"].to(torch.float64) * counted).sum(),
            (timed_out.to(torch.float64) * counted).sum(),
        ])  # fmt: skip
        for key, value in info.items():
            if key not in BASE_INFO_KEYS and value.shape == counted.shape:
                total = (value.to(torch.float64) * counted).sum()
                self.counters[key] = self.counters[key] + total if key in self.counters else total

    def result(self, episodes: int, num_envs: int, env_steps: int, seconds: float) -> EvalResult:
        """Read the sums (the one host synchronisation of the evaluation's statistics)."""
        successes, return_sum, return_sq, length_sum, timeouts = self.sums.tolist()
        mean_return = return_sum / episodes
        means = {key: value.item() / episodes for key, value in self.counters.items()}
        if "instructions_carried" in self.counters and "instructions_resolved" in self.counters:
            resolved = self.counters["instructions_resolved"].item()
            carried = self.counters["instructions_carried"].item()
            means["instructions_carried_fraction"] = carried / resolved if resolved else math.nan
        alive_sum, alive_count = self.alive.tolist()
        return EvalResult(
            episodes=episodes,
            success_rate=successes / episodes,
            success_ci95=wilson_interval(successes, episodes),
            mean_return=mean_return,
            std_return=math.sqrt(max(return_sq / episodes - mean_return**2, 0.0)),
            mean_length=length_sum / episodes,
            timeout_rate=timeouts / episodes,
            mem_alive_mean=alive_sum / alive_count if alive_count else math.nan,
            mem_alive_max=self.alive_max.item() if alive_count else math.nan,
            counters=means,
            num_envs=num_envs,
            env_steps=env_steps,
            seconds=seconds,
        )


@torch.no_grad()
def evaluate(
    env: Any, agent: Agent, episodes: int, seed: int | None = None, check_interval: int = 64,
    progress: Callable[[EvalProgress], None] | None = None,
) -> EvalResult:  # fmt: skip
    """Play ``episodes`` episodes of ``env`` (batched) with ``agent``; memory is reset at every
    episode start through ``episode_starts``. The host checks for the end every
    ``check_interval`` steps (and never past the step by which every episode must have ended
    when the env has a time limit); ``progress``, if given, is called with an
    :class:`EvalProgress` at each of those checks and once at the end (e.g. an
    :class:`EvalProgressDisplay`)."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    num_envs, device = env.num_envs, env.device
    targets = episode_targets(episodes, num_envs, device)  # [B]
    time_limit = getattr(env, "max_steps", None)
    step_limit = int(targets.max()) * time_limit if time_limit else None
    start = time.perf_counter()
    obs = env.reset(seed=seed)
    state = agent.initial_state(num_envs, device)
    episode_starts = torch.ones(num_envs, dtype=torch.bool, device=device)
    finished = torch.zeros(num_envs, dtype=torch.long, device=device)  # [B] episodes ended
    tally = EpisodeTally(device)
    steps = 0
    reported, paced_steps = 0, 0  # episodes done at the last check, and when that changed
    while True:
        counting = finished < targets  # [B] envs inside a counted episode
        step = agent.act(obs, state, episode_starts)
        state = step.state
        if step.memory_alive is not None and step.memory_alive.numel() > 0:
            tally.add_memory(step.memory_alive, counting)
        obs, _, terminated, truncated, info = env.step(step.actions)
        done = terminated | truncated
        tally.add_episodes(done & counting, info, truncated & ~terminated)
        finished += done.long()
        episode_starts = done
        steps += 1
        if step_limit is not None and steps >= step_limit:
            break
        if steps % check_interval == 0:
            # One host read per check, whether or not anyone watches the progress.
            done_count, successes, all_done = torch.stack([
                torch.minimum(finished, targets).sum().to(torch.float64), tally.sums[0],
                (finished >= targets).all().to(torch.float64),
            ]).tolist()  # fmt: skip
            if progress is not None:
                if int(done_count) > reported:
                    reported, paced_steps = int(done_count), steps
                seconds = time.perf_counter() - start
                left = seconds_left(reported, episodes, steps, paced_steps, step_limit, seconds)
                progress(EvalProgress(reported, episodes, successes, steps * num_envs, seconds,
                                      left))  # fmt: skip
            if all_done:
                break
    result = tally.result(episodes, num_envs, steps * num_envs, time.perf_counter() - start)
    if progress is not None:
        progress(EvalProgress(episodes, episodes, result.success_rate * episodes,
                              result.env_steps, result.seconds, 0.0))  # fmt: skip
    return result


def score_name(env: Any) -> str:
    """What a task (an env or its class) is measured by against its oracle: its
    ``score_counter`` (Portal ``goals``, Instruction ``instructions_carried``), else
    ``success_rate``."""
    return getattr(env, "score_counter", None) or "success_rate"


def task_score(result: EvalResult, env: Any) -> float:
    """``result``'s score per episode on ``env``'s task (see `score_name`)."""
    name = score_name(env)
    return result.success_rate if name == "success_rate" else result.counters.get(name, math.nan)


def evaluate_with_oracle(
    new_env: Callable[[], Any], agent: Agent, episodes: int, seed: int,
    progress: Callable[[EvalProgress], None] | None = None,
) -> tuple[EvalResult, EvalResult, float]:  # fmt: skip
    """Play ``agent`` and the task's scripted oracle on the same episodes (each in a fresh env
    from ``new_env``, reset with ``seed``): both results and the agent's share of the oracle's
    `task_score`. ``progress`` follows the agent's evaluation (the oracle's is quick)."""
    env = new_env()
    result = evaluate(env, agent, episodes, seed=seed, progress=progress)
    oracle_env = new_env()
    oracle = evaluate(oracle_env, OracleAgent(oracle_env), episodes, seed=seed)
    best = task_score(oracle, oracle_env)
    share = task_score(result, env) / best if best > 0 else math.nan
    return result, oracle, share
