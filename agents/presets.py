"""Per-task defaults: what ``python train_rl.py --env TASK`` trains with unless a flag says
otherwise.

`preset` gives the learner and policy settings of a task, `preset_targets` the stop. Each
value carries a one-line reason; what was tried and measured to choose it is in
``docs/experiments.md`` (the section named beside it).
"""

from __future__ import annotations

from typing import Any, NamedTuple

CORRIDOR_TARGET_SUCCESS = 0.99
"""The corridor preset stops training once the full length reaches this success rate."""

CURRICULUM_FROM = 20
"""Corridors at least this long train with the preset's random lengths and curriculum."""

FEW_MEMORIES_FROM = 1000
"""Corridors at least this long (with Expire-Span and PPO) train their spans down to
`FEW_MEMORIES_SHARE` of the length before the preset's stop."""

FEW_MEMORIES_SHARE = 0.05
"""The corridor preset's --target-alive, as a share of the length."""

CONFIRM_EPISODES = 100
"""The corridor preset's --confirm-episodes where it sets --target-alive, and the default
with --target-oracle-share."""

INSTRUCTION_ORACLE_SHARE = 0.93
"""The Instruction preset's --target-oracle-share: 90 % of the oracle, plus a margin for the
noise of 100 greedy episodes (docs/experiments.md#instruction)."""

EXTERNAL_MAX_SPAN = 4096
"""L_max for a gymnasium task that declares no time limit."""

INSTRUCTION_CURRICULUM_FROM = 5
"""Instruction rooms at least this large train with the preset's room curriculum (from 3)."""


def trains_few_memories(env: str, task_kwargs: dict[str, Any], policy: str, algo: str) -> bool:
    """Whether the corridor preset trains the spans down to `FEW_MEMORIES_SHARE` of the
    length (long corridors, Expire-Span with PPO)."""
    return (env == "corridor" and policy == "expire_span" and algo == "ppo"
            and task_kwargs.get("length", 1000) >= FEW_MEMORIES_FROM)  # fmt: skip


def corridor_min_length(length: int, view_size: int) -> int:
    """The corridor preset's --min-length: random lengths from 5 (or the view size) up, for
    corridors of `CURRICULUM_FROM` cells or more; the full length below (no random lengths)."""
    return max(5, view_size) if length >= CURRICULUM_FROM else length


def preset(
    env: str, task_kwargs: dict[str, Any], policy: str, algo: str = "ppo",
    time_limit: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Tuned defaults for a task, core and learner: (learner settings, policy settings).
    ``time_limit``: the episode limit a gymnasium task declares (None: none, or one of the
    suite's tasks)."""
    learner: dict[str, Any] = {}
    policy_kwargs: dict[str, Any] = {}
    if env == "corridor":
        _corridor(learner, policy_kwargs, task_kwargs, policy, algo)
    elif env == "portal":
        learner.update(
            gamma=0.99,
            total_steps=5_000_000,
            # Nothing in view shows which portal was taken or whether the last one led on
            # (docs/experiments.md#portal).
            last_action_reward=True,
            # x0.1 brought the spans below a trip before the portals were learnt.
            span_lr_scale=0.03,
        )
        policy_kwargs.update(max_span=256, forward_bias=1.0)
    elif env == "instruction":
        size = task_kwargs.get("size", 5)
        # A constant learning rate and a stop at the target, not a schedule over a fixed
        # budget: the small room takes 4.8-10.5M steps by seed (docs/experiments.md#instruction).
        learner.update(gamma=0.95, total_steps=30_000_000, anneal_lr=False)
        if size >= INSTRUCTION_CURRICULUM_FROM:
            # From scratch the full room stays at chance; from a 3 x 3 agent it is learnt.
            learner.update(curriculum_start=3, curriculum_success=0.3)
        # The egocentric view: the cell in front of the agent is always the same input.
        policy_kwargs.update(max_span=256, egocentric=True)
    else:
        # Entropy 0.03, not the suite's 0.001: a task may hide its cue until the agent looks
        # for it, and at 0.01 or below the policy settles before it finds out that looking pays
        # (docs/experiments.md#gymnasium-tasks).
        learner.update(total_steps=5_000_000, ent_coef=0.03)
        # An Expire-Span keeps nothing longer than L_max + R: L_max covers a whole episode where
        # the task declares its length, else thousands of steps (cost follows the memories
        # alive, not L_max).
        policy_kwargs.update(max_span=time_limit or EXTERNAL_MAX_SPAN)
    if policy != "expire_span":
        policy_kwargs.pop("max_span", None)
        policy_kwargs.pop("ramp_length", None)
    return learner, policy_kwargs


def _long_corridor_steps(length: int) -> int:
    """The step budget of corridors of `FEW_MEMORIES_FROM` cells or more."""
    return max(4_000_000, 4_000 * length)


def _corridor(learner: dict[str, Any], policy_kwargs: dict[str, Any],
              task_kwargs: dict[str, Any], policy: str, algo: str) -> None:  # fmt: skip
    """The corridor's preset (docs/experiments.md#corridor)."""
    length = task_kwargs.get("length", 1000)
    learner.update(
        # 0.999 let agents idle at the junction; 0.99 makes idling cost.
        gamma=0.99,
        ent_coef=0.01,
        # x0.1 let the spans fall below the cue's distance after solving; x0.01 learnt nothing.
        span_lr_scale=0.03,
        # A time-out is a failure here: bootstrapping it let agents idle.
        bootstrap_truncated=False,
        total_steps=max(2_000_000, 2_500 * length),
    )
    if length >= CURRICULUM_FROM:
        # Random lengths make the agent find the cue by its content, not its distance; the
        # entropy schedule gets every seed past the first stages without raising it later.
        min_length = task_kwargs.get("min_length", length)
        learner.update(
            curriculum_start=max(10, min_length) if min_length < length else 10,
            ent_coef=0.03, ent_coef_final=0.01,
        )  # fmt: skip
    if trains_few_memories("corridor", task_kwargs, policy, algo):
        # Few memories alive: the spans trained down (span lr x0.1, R = 8), with a tenth of
        # the episodes at the full length so the cue's span is defended there.
        learner.update(span_lr_scale=0.1, total_steps=_long_corridor_steps(length))
        policy_kwargs.update(ramp_length=8)
        if task_kwargs.get("min_length", length) < length:  # random lengths
            learner.update(curriculum_full_fraction=0.1)
    if algo == "impala":
        # IMPALA's advantages are not normalised, so PPO's entropy bonus swamps them; it has
        # no clipped trust region, so a lower rate steadies it (docs/experiments.md#impala).
        learner.update(ent_coef=0.001, learning_rate=1e-4)
        if length >= CURRICULUM_FROM:
            learner.update(ent_coef_final=0.0003)
        if length >= FEW_MEMORIES_FROM:
            # PPO's budget there: seed 2 needed 3.85M steps (docs/experiments.md#impala).
            learner.update(total_steps=_long_corridor_steps(length))
    # Initial spans must cover the walk to the junction (about length / p(forward)).
    policy_kwargs.update(max_span=3 * length + 16, forward_bias=1.0)


class Targets(NamedTuple):
    """When a run stops before its step budget (None: that target is off)."""

    success: float | None
    alive: float | None
    confirm_episodes: int | None
    oracle_share: float | None


def preset_targets(
    env: str, task_kwargs: dict[str, Any], policy: str, algo: str, given: Targets,
    trains_past_full: bool,
) -> Targets:  # fmt: skip
    """The stop's targets: those ``given`` on the command line, the task's preset for the
    others. ``trains_past_full``: flags that ask for training past the full length (the
    corridor preset's stop then stays off)."""
    success = given.success
    if success is None and env == "corridor" and not trains_past_full:
        # Stopping once solved kept 1.000 for every seed; training on let one forget a colour.
        success = CORRIDOR_TARGET_SUCCESS
    alive, confirm = given.alive, given.confirm_episodes
    if trains_few_memories(env, task_kwargs, policy, algo) and success and given.success is None:
        # Training success is over random lengths and sampled actions: greedy episodes at the
        # full length confirm the stop (docs/experiments.md#corridor).
        alive = FEW_MEMORIES_SHARE * task_kwargs["length"] if alive is None else alive
        confirm = CONFIRM_EPISODES if confirm is None else confirm
    share = given.oracle_share
    if share is None and env == "instruction":
        share = INSTRUCTION_ORACLE_SHARE
    return Targets(success, alive, confirm, share)
