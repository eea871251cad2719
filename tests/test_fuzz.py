"""Env fuzz test: random valid parameters and random actions on every task's batched env.

For each task, parameters are drawn at random (the task's config dataclass refuses the
invalid draws) and the batched env is stepped with random actions for at least
`TARGET_STEPS` env steps, with invariants checked for every env at every step: observations
inside their space, rewards 0 or 1, terminated and truncated never both, no episode longer
than its time limit, the per-episode statistics in ``info`` equal to counts kept here. On
the same layouts the oracle still scores what its task promises, and a few envs of each draw
are replayed step by step in the minigrid reference env (at least `TARGET_REPLAYED` steps).

Slow: ``pytest -m slow -s tests/test_fuzz.py`` prints the step counts each task covered.
Shape legend: B num_envs.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs
from envs.core import StepResult
from envs.instruction import InstructionConfig
from envs.portal import PortalConfig

Tensor = torch.Tensor

TARGET_STEPS = 1_000_000
"""Env steps (num_envs x steps) checked per task, at least."""
TARGET_REPLAYED = 100_000
"""Steps replayed in the reference env per task, at least."""
MIN_DRAWS = 16
"""Parameter draws per task, at least."""
TIME_LIMITS_PER_DRAW = 3
"""Steps per draw, in time limits: every env ends at least a few episodes."""
MAX_ENVS = 2048
REWARDS = torch.tensor([0.0, 1.0])  # every task pays 1 per success (arm, goal, instruction)
VIEW_SIZES = (3, 5, 7, 9)


# -- parameter draws: wide ranges, the edges often, some values invalid on purpose (the
# config refuses them) ------------------------------------------------------------------------
def draw_corridor(rng: random.Random) -> dict[str, Any]:
    # Short corridors half the time, so that random walks end many episodes.
    length = rng.randint(1, rng.choice((12, 300)))
    params = {"length": length, "num_colors": rng.randint(2, 6),
              "view_size": rng.choice(VIEW_SIZES)}  # fmt: skip
    if rng.random() < 0.5:
        params["max_steps"] = rng.choice((length, length + 1, rng.randint(1, 5 * length + 20)))
    if rng.random() < 0.5:
        params["min_length"] = rng.randint(1, length)
    return params


def draw_portal(rng: random.Random) -> dict[str, Any]:
    params = {"num_rooms": rng.randint(1, 6), "room_length": rng.randint(1, rng.choice((6, 40))),
              "view_size": rng.choice(VIEW_SIZES)}  # fmt: skip
    trip = PortalConfig(**params).trip_steps  # the default time limit fits every room drawn
    params["max_steps"] = rng.choice((trip - 1, trip, rng.randint(1, 8 * trip)))
    return params


def draw_instruction(rng: random.Random) -> dict[str, Any]:
    params = {"size": rng.randint(2, 8), "num_objects": rng.randint(2, 6),
              "view_size": rng.choice(VIEW_SIZES)}  # fmt: skip
    way = InstructionConfig(**params).longest_way  # the default delays fit every size drawn
    delay_min = way + rng.choice((-1, 0, rng.randint(1, 12)))
    delay_max = delay_min + rng.choice((-1, 0, rng.randint(1, 20)))
    max_steps = rng.choice((delay_min - 1, delay_min, rng.randint(1, 300)))
    params.update(delay_min=delay_min, delay_max=delay_max, max_steps=max_steps)
    return params


DRAWS = {"corridor": draw_corridor, "portal": draw_portal, "instruction": draw_instruction}


def draw_valid(task: str, rng: random.Random) -> tuple[dict[str, Any], int]:
    """Parameters the task's config accepts, and how many draws it refused before them."""
    config_class = envs.TASKS[task][0].config_class
    for refused in range(1000):
        params = DRAWS[task](rng)
        try:
            config_class(**params)
        except ValueError:
            continue
        return params, refused
    raise AssertionError(f"no valid {task} parameters in 1000 draws")


# -- recording violations -------------------------------------------------------------------
class Violations:
    """Counts of broken invariants, each with where it first broke (draw, step, env)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.first: dict[str, str] = {}
        self.draw = ""

    def check(self, name: str, bad: Tensor, step: int) -> None:
        """Count the envs where ``bad`` [B] holds."""
        if bool(bad.any()):
            self.add(name, int(bad.sum()), step, int(bad.nonzero()[0, 0]))

    def add(self, name: str, count: int, step: int, env: int | str) -> None:
        self.counts[name] += count
        self.first.setdefault(name, f"{self.draw}, step {step}, env {env}")

    def report(self) -> str:
        return "\n".join(f"{count} x {name}; first: {self.first[name]}"
                         for name, count in self.counts.items())  # fmt: skip


# -- invariants ------------------------------------------------------------------------------
def space_bounds(space: gym.Space) -> tuple[Tensor, Tensor, torch.dtype, tuple[int, ...]]:
    """(low, high, dtype, shape) of one env's Box or Discrete field, to compare a batch with."""
    dtype = torch.from_numpy(np.zeros(0, dtype=space.dtype)).dtype
    if isinstance(space, gym.spaces.Box):
        return torch.from_numpy(space.low), torch.from_numpy(space.high), dtype, space.shape
    if isinstance(space, gym.spaces.Discrete):
        low = torch.tensor(int(space.start))
        return low, low + int(space.n) - 1, dtype, ()
    raise TypeError(f"no bounds for {space}")


def check_obs(obs: dict[str, Tensor], spaces: dict[str, tuple], num_envs: int,
              violations: Violations, step: int, what: str) -> None:  # fmt: skip
    """Every field of ``obs`` has its space's dtype and shape and lies within its bounds."""
    if set(obs) != set(spaces):
        violations.add(f"{what} keys {sorted(obs)} are not the space's", num_envs, step, "all")
    for key, (low, high, dtype, shape) in spaces.items():
        value = obs.get(key)
        if value is None or value.dtype != dtype or value.shape != (num_envs, *shape):
            violations.add(f"{what}[{key!r}] dtype or shape is not the space's", num_envs, step,
                           "all")  # fmt: skip
            continue
        outside = ((value < low) | (value > high)).reshape(num_envs, -1).any(1)  # [B]
        violations.check(f"{what}[{key!r}] outside its space", outside, step)


class EpisodeCounts:
    """Length and return of every env's running episode, counted here step by step."""

    def __init__(self, num_envs: int) -> None:
        self.length = torch.zeros(num_envs, dtype=torch.long)
        self.ret = torch.zeros(num_envs)
        self.ended = 0
        self.rewards = 0.0

    def step(self, reward: Tensor) -> None:
        self.length += 1
        self.ret += reward
        self.rewards += float(reward.sum())

    def restart(self, done: Tensor) -> None:
        self.length.masked_fill_(done, 0)
        self.ret.masked_fill_(done, 0.0)
        self.ended += int(done.sum())


def task_checks(task: str, reward: Tensor, terminated: Tensor, done: Tensor,
                info: dict[str, Tensor]) -> dict[str, Tensor]:  # fmt: skip
    """What each task's docstring promises beyond the common rules, as violation masks [B]."""
    success = info["success"]
    if task == "corridor":
        # Entering an arm ends the episode; only the cue's arm pays, and that is a success.
        return {"corridor success without entering an arm": success & ~terminated,
                "corridor reward is not the success": reward != success.float()}  # fmt: skip
    checks = {f"{task} terminated (it only truncates)": terminated,
              f"{task} success where no episode ended": success & ~done}  # fmt: skip
    if task == "portal":
        goals, wrong = info["goals"], info["wrong_after_first_goal"]
        checks["portal goals differ from the episode's return"] = goals != info["episode_return"]
        checks["portal success is not: a goal and no wrong portal after it"] = done & (
            success != ((goals > 0) & (wrong == 0))
        )
    else:
        carried, resolved = info["instructions_carried"], info["instructions_resolved"]
        checks["instructions carried differ from the return"] = carried != info["episode_return"]
        checks["more instructions carried than resolved"] = carried > resolved
        checks["instruction success is not: some resolved, all carried out"] = done & (
            success != ((resolved > 0) & (carried == resolved))
        )
    return checks


def check_step(task: str, benv: envs.BatchedEnv, spaces: dict[str, tuple], result: StepResult,
               episodes: EpisodeCounts, violations: Violations, step: int) -> Tensor:  # fmt: skip
    """Check every invariant of one batched step for every env; return ``done`` [B]."""
    obs, reward, terminated, truncated, info = result
    num_envs = benv.num_envs
    check_obs(obs, spaces, num_envs, violations, step, "obs")
    if "final_obs" in info:
        check_obs(info["final_obs"], spaces, num_envs, violations, step, "final obs")
    typed = (reward.is_floating_point() and terminated.dtype == truncated.dtype == torch.bool
             and reward.shape == terminated.shape == truncated.shape == (num_envs,))  # fmt: skip
    if not typed:
        violations.add("reward, terminated or truncated of the wrong shape or dtype", num_envs,
                       step, "all")  # fmt: skip
        return terminated | truncated
    done = terminated | truncated
    episodes.step(reward)
    length_differs = info["episode_length"] != episodes.length
    return_differs = info["episode_return"] != episodes.ret
    checks = {
        "reward not 0 or 1": ~torch.isin(reward, REWARDS),
        "terminated and truncated both": terminated & truncated,
        "episode longer than max_steps": episodes.length > benv.max_steps,
        "episode at max_steps went on": (episodes.length == benv.max_steps) & ~done,
        "truncated before max_steps": truncated & (episodes.length < benv.max_steps),
        "info episode_length is not the steps counted": done & length_differs,
        "info episode_return is not the rewards summed": done & return_differs,
        **task_checks(task, reward, terminated, done, info),
    }
    for key, value in info.items():
        if key != "final_obs" and value.dtype != torch.bool:
            checks[f"info[{key!r}] negative"] = value < 0
    for name, bad in checks.items():
        violations.check(name, bad, step)
    episodes.restart(done)
    return done


# -- the reference env, replaying a few batched envs -----------------------------------------
def pick(obs: dict[str, Tensor], index: Tensor) -> dict[str, np.ndarray]:
    return {key: value[index].numpy() for key, value in obs.items()}


def same_obs(batched: dict[str, np.ndarray], j: int, reference: dict[str, Any]) -> bool:
    return set(batched) == set(reference) and all(
        np.array_equal(batched[key][j], np.asarray(value)) for key, value in reference.items()
    )


class Replay:
    """Reference envs playing batched envs ``indices``' episodes (``benv.layout``) in step,
    compared at every step as in tests/test_envs_equivalence.py; mismatches are violations."""

    def __init__(self, task: str, params: dict[str, Any], benv: envs.BatchedEnv,
                 obs: dict[str, Tensor], indices: list[int], violations: Violations):  # fmt: skip
        self.indices, self.index = indices, torch.tensor(indices, dtype=torch.long)
        self.layouts = [benv.layout(i) for i in indices]  # the first episodes, for the oracle
        self.references = [envs.make_reference(task, **params) for _ in indices]
        self.steps = 0
        picked = pick(obs, self.index)
        for j, (i, reference) in enumerate(zip(indices, self.references, strict=True)):
            reference_obs, _ = reference.reset(options={"layout": self.layouts[j]})
            if not same_obs(picked, j, reference_obs):
                violations.add("replay: obs differs at reset", 1, 0, i)

    def step(self, benv: envs.BatchedEnv, actions: Tensor, result: StepResult,
             violations: Violations, step: int) -> None:  # fmt: skip
        obs, reward, terminated, truncated, info = result
        picked, final = pick(obs, self.index), pick(info["final_obs"], self.index)
        rows = zip(actions[self.index].tolist(), reward[self.index].tolist(),
                   terminated[self.index].tolist(), truncated[self.index].tolist(),
                   strict=True)  # fmt: skip
        for j, (i, reference, (action, *outcome)) in enumerate(
                zip(self.indices, self.references, rows, strict=True)):  # fmt: skip
            reference_obs, *reference_outcome, reference_info = reference.step(action)
            if outcome != reference_outcome:
                violations.add("replay: reward, terminated or truncated differ", 1, step, i)
            if outcome[1] or outcome[2]:
                if not same_obs(final, j, reference_obs):
                    violations.add("replay: final obs differs", 1, step, i)
                for key, value in reference_info.items():
                    if info[key][i].item() != value:
                        violations.add(f"replay: info[{key!r}] differs", 1, step, i)
                reference_obs, _ = reference.reset(options={"layout": benv.layout(i)})
            if not same_obs(picked, j, reference_obs):
                violations.add("replay: obs differs", 1, step, i)
        self.steps += len(self.indices)


# -- the oracle on the same layouts ----------------------------------------------------------
def oracle_failures(task: str, benv: envs.BatchedEnv, done: Tensor,
                    info: dict[str, Tensor]) -> Tensor:  # fmt: skip
    """Ended episodes [B] where the oracle scored less than its task promises."""
    if task == "corridor":
        return done & ~info["success"]
    if task == "portal":
        # Never a wrong portal, so every trip is a goal: max_steps // trip of them.
        goals = benv.max_steps // benv.config.trip_steps
        return done & ((info["goals"] != goals) | (info["wrong_after_first_goal"] != 0))
    # Every instruction carried out: the first, and one per delay_max at least (every gap is
    # at least the longest way to a ball).
    carried, resolved = info["instructions_carried"], info["instructions_resolved"]
    least = max(1, benv.max_steps // benv.config.delay_max)
    return done & ((carried != resolved) | (resolved < least))


def check_oracle(task: str, params: dict[str, Any], seed: int, num_envs: int, sync_free: bool,
                 replay: Replay, violations: Violations) -> int:  # fmt: skip
    """Play the oracle for one time limit on a fresh env with the same seed; return its env
    steps."""
    benv = envs.make_batched(task, num_envs, seed=seed, **params)
    benv.sync_free = sync_free
    benv.reset()
    for j, i in enumerate(replay.indices):
        if benv.layout(i) != replay.layouts[j]:
            violations.add("oracle: not the fuzzed env's layout", 1, 0, i)
    spaces = {key: space_bounds(space) for key, space in benv.single_observation_space.items()}
    episodes = EpisodeCounts(num_envs)
    ended = torch.zeros(num_envs, dtype=torch.bool)
    for step in range(1, benv.max_steps + 1):
        result = benv.step(benv.oracle_actions())
        done = check_step(task, benv, spaces, result, episodes, violations, step)
        violations.check("oracle: scored less than its task promises",
                         oracle_failures(task, benv, done, result[4]), step)  # fmt: skip
        ended |= done
    violations.check("oracle: no episode ended within the time limit", ~ended, benv.max_steps)
    return num_envs * benv.max_steps


# -- one draw and the test -------------------------------------------------------------------
def fuzz_draw(task: str, params: dict[str, Any], rng: random.Random, violations: Violations,
              totals: Counter) -> None:  # fmt: skip
    """Step one draw's batched env with random actions, checking it, its replay and its
    oracle; add what was covered to ``totals``."""
    seed = rng.randrange(2**31)
    sync_free = totals["draws"] % 2 == 1  # every other draw: the accelerator's restart path
    max_steps = envs.TASKS[task][0].config_class(**params).max_steps
    num_steps = TIME_LIMITS_PER_DRAW * max_steps
    num_envs = min(max(math.ceil(TARGET_STEPS / MIN_DRAWS / num_steps), 32), MAX_ENVS)
    replayed = min(math.ceil(TARGET_REPLAYED / MIN_DRAWS / num_steps), num_envs)
    # Some draws mix in the oracle's actions, so that goals and rewards come often too.
    oracle_share = rng.choice((0.0, rng.random()))
    violations.draw = (f"{task} {params}, seed {seed}, num_envs {num_envs}, "
                       f"sync_free {sync_free}, oracle_share {oracle_share:.2f}")  # fmt: skip

    benv = envs.make_batched(task, num_envs, seed=seed, **params)
    benv.keep_final_obs = True
    benv.sync_free = sync_free
    spaces = {key: space_bounds(space) for key, space in benv.single_observation_space.items()}
    obs = benv.reset()
    check_obs(obs, spaces, num_envs, violations, 0, "obs")
    replay = Replay(task, params, benv, obs, sorted(rng.sample(range(num_envs), replayed)),
                    violations)  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    episodes = EpisodeCounts(num_envs)
    for step in range(1, num_steps + 1):
        actions = torch.randint(0, envs.NUM_ACTIONS, (num_envs,), generator=generator)
        use_oracle = torch.rand(num_envs, generator=generator) < oracle_share
        actions = torch.where(use_oracle, benv.oracle_actions(), actions)
        result = benv.step(actions)
        check_step(task, benv, spaces, result, episodes, violations, step)
        replay.step(benv, actions, result, violations, step)

    totals["draws"] += 1
    totals["env steps"] += num_envs * num_steps
    totals["replayed steps"] += replay.steps
    totals["episodes ended"] += episodes.ended
    totals["rewards"] += int(episodes.rewards)
    totals["oracle env steps"] += check_oracle(task, params, seed, num_envs, sync_free, replay,
                                               violations)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("task", list(DRAWS))
def test_random_parameters_and_actions_break_no_invariant(task):
    """At least TARGET_STEPS checked env steps and TARGET_REPLAYED replayed ones, over at least
    MIN_DRAWS parameter draws: not one invariant broken."""
    rng = random.Random(f"fuzz {task}")
    violations = Violations()
    totals: Counter[str] = Counter()
    start = time.perf_counter()
    while (totals["env steps"] < TARGET_STEPS or totals["replayed steps"] < TARGET_REPLAYED
           or totals["draws"] < MIN_DRAWS):  # fmt: skip
        params, refused = draw_valid(task, rng)
        totals["invalid draws refused"] += refused
        fuzz_draw(task, params, rng, violations, totals)
    seconds = time.perf_counter() - start
    print(
        f"\nfuzz {task}: "
        + ", ".join(f"{value:,} {key}" for key, value in totals.items())
        + f", {sum(violations.counts.values())} invariant violations, {seconds:.0f} s"
    )
    assert not violations.counts, violations.report()
    assert totals["episodes ended"] > 0 and totals["rewards"] > 0  # the checks saw both


# -- the checks themselves: a broken env is caught -------------------------------------------
def image_beyond_the_cell_codes(benv: envs.BatchedEnv, result: StepResult) -> StepResult:
    result[0]["image"][0, 0, 0, 0] = 255
    return result


def time_limit_not_reported(benv: envs.BatchedEnv, result: StepResult) -> StepResult:
    obs, reward, terminated, truncated, info = result
    return obs, reward, terminated, torch.zeros_like(truncated), info


def heading_turned(benv: envs.BatchedEnv, result: StepResult) -> StepResult:
    # Still inside the space: only the reference env can tell.
    image, centre = result[0]["image"], benv.view_size // 2
    image[:, centre, centre, 2] = (image[:, centre, centre, 2] + 1) % 4
    return result


@pytest.mark.slow
@pytest.mark.parametrize(("breakage", "caught_as"), [
    (image_beyond_the_cell_codes, "obs['image'] outside its space"),
    (time_limit_not_reported, "episode at max_steps went on"),
    (heading_turned, "replay: obs differs"),
])  # fmt: skip
def test_the_checks_catch_a_broken_env(breakage, caught_as, monkeypatch):
    """The fuzz checks are not vacuous: a batched step that breaks an invariant is counted."""
    step = envs.BatchedEnv.step
    monkeypatch.setattr(envs.BatchedEnv, "step",
                        lambda self, actions: breakage(self, step(self, actions)))  # fmt: skip
    monkeypatch.setitem(globals(), "TARGET_STEPS", 20_000)
    monkeypatch.setitem(globals(), "TARGET_REPLAYED", 2_000)
    violations = Violations()
    params = {"length": 5, "max_steps": 8}  # random walks often reach the time limit
    fuzz_draw("corridor", params, random.Random(0), violations, Counter())
    assert violations.counts[caught_as] > 0, violations.report()
