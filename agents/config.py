"""Training configuration: the command-line flags, the task presets, the resolved config.

``Args`` is what a user types (read by tyro: every field is a ``--flag``, its
docstring the help). A flag left at ``None`` takes the task's preset, so
``python train_rl.py --env corridor --length 1000`` gets settings tuned for
that length and any flag overrides them. ``resolve`` turns ``Args`` into a
``TrainConfig`` (plain, complete, validated), which is what ``config.json``
holds and what a resumed run or the evaluator rebuilds everything from.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import tyro

import envs
from agents.run_config import ConfigError, LearnerConfig, RunConfig, TrainConfig
from policies.config import CONFIG_CLASSES, POLICY_KINDS

ALGOS = ("ppo", "impala")
TASK_FLAGS = {
    "corridor": ("length", "num_colors", "view_size", "max_steps", "min_length"),
    "portal": ("num_rooms", "room_length", "view_size", "max_steps"),
    "instruction": ("size", "num_objects", "delay_min", "delay_max", "view_size", "max_steps"),
}
POLICY_FLAGS = (
    "d_model", "num_layers", "num_heads", "max_span", "ramp_length", "span_init",
    "span_loss_coef", "memory_size", "gating", "egocentric",
)  # fmt: skip


# Flags whose unset value means "the task's preset" (or "off"), shown as such in --help.
_PRESET = "(default: preset)"
PresetInt = Annotated[int | None, tyro.conf.arg(metavar="INT", help_behavior_hint=_PRESET)]
PresetFloat = Annotated[float | None, tyro.conf.arg(metavar="FLOAT", help_behavior_hint=_PRESET)]
PresetBool = Annotated[
    bool | None, tyro.conf.arg(metavar="{True,False}", help_behavior_hint=_PRESET)
]
ThreadCount = Annotated[
    int | None, tyro.conf.arg(metavar="INT", help_behavior_hint="(default: torch's choice)")
]


@dataclass
class Args:
    """Train a memory agent: `python train_rl.py --env corridor --length 1000`."""

    # --- the task ---
    env: str = "corridor"
    """Task: corridor, portal, instruction, or a registered gymnasium id with a discrete action
    space and minigrid-style or flat-vector observations (e.g. MiniGrid-MemoryS13Random-v0)."""
    length: PresetInt = None
    """Corridor: cells between the cue and the junction (preset 1000)."""
    num_colors: PresetInt = None
    """Corridor: number of cue colours, 2..6."""
    min_length: PresetInt = None
    """Corridor: train on a random-length corridor, each episode's length drawn log-uniformly
    from [min_length, length] (evaluation is at the full length). Preset: 5 for corridors of
    20 cells or more, else the full length; --min-length LENGTH turns it off."""
    num_rooms: PresetInt = None
    """Portal: rooms in the chain, 1..6."""
    room_length: PresetInt = None
    """Portal: cells per room."""
    size: PresetInt = None
    """Instruction: room side in free cells."""
    num_objects: PresetInt = None
    """Instruction: balls in the room, 2..6."""
    delay_min: PresetInt = None
    """Instruction: fewest steps between instructions."""
    delay_max: PresetInt = None
    """Instruction: most steps between instructions."""
    view_size: PresetInt = None
    """Side of the agent's square view (odd)."""
    max_steps: PresetInt = None
    """Time limit of an episode (task default if unset)."""

    # --- the agent ---
    policy: Literal["expire_span", "trxl", "lstm"] = "expire_span"
    """Memory core."""
    algo: Literal["ppo", "impala"] = "ppo"
    """Learner: PPO, or the IMPALA-style actor-critic with V-trace targets."""
    d_model: PresetInt = None
    """Model width D."""
    num_layers: PresetInt = None
    """Layers of the memory core."""
    num_heads: PresetInt = None
    """Attention heads (transformer cores)."""
    max_span: PresetInt = None
    """Expire-Span L_max (corridor preset: 3 x length + 16)."""
    ramp_length: PresetInt = None
    """Expire-Span ramp R."""
    span_init: PresetFloat = None
    """Expire-Span initial span as a fraction p of L_max."""
    span_loss_coef: PresetFloat = None
    """Expire-Span span loss coefficient alpha."""
    memory_size: PresetInt = None
    """Transformer-XL window M."""
    gating: PresetBool = None
    """GTrXL-style gating in the transformer blocks."""
    egocentric: PresetBool = None
    """Turn the view to the agent's heading before embedding it, so that the cell in front of
    the agent is always the same cell (off in every preset)."""
    forward_bias: PresetFloat = None
    """Initial logit bias of the 'forward' action (helps a fresh agent reach far rewards)."""
    last_action_reward: PresetBool = None
    """Show the agent its previous action and reward as two more observation fields,
    last_action (0 at an episode's start, a + 1 after action a) and last_reward. Portal
    preset: on (which portal was taken, and whether the last room's led on, are not visible
    otherwise); off elsewhere."""

    # --- the learner ---
    num_envs: PresetInt = None
    """Parallel environments B."""
    num_steps: PresetInt = None
    """Rollout length T per update."""
    total_steps: PresetInt = None
    """Env steps to train for (all envs together)."""
    learning_rate: PresetFloat = None
    """Adam learning rate (annealed linearly to 0 unless --anneal-lr False)."""
    anneal_lr: PresetBool = None
    """Anneal the learning rate linearly to 0 over --total-steps (presets: on, but off for
    Instruction, which stops at its target instead)."""
    span_lr_scale: PresetFloat = None
    """Learning-rate multiplier of the span predictors."""
    gamma: PresetFloat = None
    """Discount factor."""
    gae_lambda: PresetFloat = None
    """GAE lambda (PPO)."""
    update_epochs: PresetInt = None
    """Passes over each rollout."""
    num_minibatches: PresetInt = None
    """Minibatches per epoch (whole env columns each)."""
    chunk_length: PresetInt = None
    """Sequence chunk length inside a minibatch; each chunk starts from the memory state stored
    at its start during the rollout (must divide num_steps)."""
    clip_coef: PresetFloat = None
    """PPO ratio clipping."""
    ent_coef: PresetFloat = None
    """Entropy bonus coefficient (with a curriculum: at its first stage)."""
    ent_coef_final: PresetFloat = None
    """With a curriculum: the entropy coefficient once the full task is reached; between
    stages it moves geometrically with the stage (corridor preset: 0.03 at the first stage,
    0.01 at the full length). Unset: --ent-coef throughout."""
    vf_coef: PresetFloat = None
    """Value loss coefficient."""
    max_grad_norm: PresetFloat = None
    """Gradient clipping (global norm)."""
    adv_std_floor: PresetFloat = None
    """PPO: advantages are divided by max(std, this) (avoids a blow-up once solved)."""
    rho_clip: PresetFloat = None
    """IMPALA: V-trace rho-bar."""
    c_clip: PresetFloat = None
    """IMPALA: V-trace c-bar."""
    curriculum_start: PresetInt = None
    """A curriculum's first stage. Corridor: episodes start this long (at most: with
    --min-length they are drawn up to it); whenever a logging interval's success rate
    reaches --curriculum-success the longest length doubles, up to --length (evaluation is
    always at the full length). Preset: 10 for corridors of 20 cells or more, else none;
    --curriculum-start LENGTH turns it off. Instruction: a room of this size with 2 balls
    first; its size doubles the same way up to --size, where the task itself (--num-objects
    balls) begins. Preset: 3 for rooms of 5 or more; --curriculum-start SIZE turns it off."""
    curriculum_success: PresetFloat = None
    """Success rate over a logging interval that moves the curriculum on (instruction: the
    share of episodes whose every resolved instruction was carried out)."""
    curriculum_full_fraction: PresetFloat = None
    """Corridor curriculum with random lengths: once the full length is reached, this share
    of the episodes has exactly the full length (the rest stay random)."""
    span_lr_scale_final: PresetFloat = None
    """With a length curriculum: the span learning-rate multiplier once the full length is
    reached (before: --span-lr-scale)."""
    bootstrap_truncated: PresetBool = None
    """Bootstrap a time-limited episode from its value (True), or count the time-out as the
    episode's end with nothing more to come (False: the corridor preset, where a time-out is
    a failure and bootstrapping let agents idle at the junction)."""

    # --- the run ---
    seed: int = 1
    """Random seed (one seed gives the same run on CPU)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where envs, policy and learner run (auto: cuda when available)."""
    run_dir: str | None = None
    """Run directory (default runs/<env>-<policy>-<algo>-s<seed>-<time>)."""
    resume: str | None = None
    """Resume the run in this directory from its latest checkpoint (other flags must agree)."""
    log_interval: PresetInt = None
    """Updates between metric rows."""
    checkpoint_interval: PresetInt = None
    """Updates between checkpoints."""
    keep_checkpoints: int = 3
    """Numbered checkpoints kept beside latest.pt."""
    target_success: PresetFloat = None
    """Stop once an interval's success rate reaches this on the full task (after the
    curriculum's last doubling); 0 trains for all of --total-steps. Corridor preset: 0.99,
    unless --span-lr-scale-final or --curriculum-full-fraction asks for training past it."""
    target_alive: float | None = None
    """With --target-success: stop only once the interval's mean alive memories per layer is
    also at most this many (default and 0: no memory condition)."""
    confirm_episodes: PresetInt = None
    """With --target-success: once an interval meets the targets, play this many greedy
    episodes of the full task and stop only if they meet them too (0: the interval alone
    decides); checked at most once every 5 intervals. Also the episodes that score
    --target-oracle-share."""
    target_oracle_share: PresetFloat = None
    """Stop once --confirm-episodes greedy episodes of the full task (default 100) score at
    least this share of the task's scripted oracle on the same episodes (Portal: goals;
    Instruction: instructions carried out; corridor: success), checked every 5 intervals
    on the full task; 0: off. Instruction preset: 0.93."""
    threads: ThreadCount = None
    """CPU threads for torch (1 is often fastest on a small shared machine)."""


def preset(
    env: str, task_kwargs: dict[str, Any], policy: str, algo: str = "ppo"
) -> tuple[dict, dict]:
    """Tuned defaults for a task and learner: (learner settings, policy settings)."""
    learner: dict[str, Any] = {}
    policy_kwargs: dict[str, Any] = {}
    if env == "corridor":
        length = task_kwargs.get("length", 1000)
        # Measured at length 50 (2-core CPU, one seed each):
        # - gamma 0.999 (LESSONS) let agents idle at the junction (forward bumps into the
        #   wall for free); 0.99 makes idling cost and solved it;
        # - span lr x0.1 solved at 0.62M steps, then spans kept shrinking and success fell
        #   to 0.75; x0.01 kept spans near L_max and learnt nothing in 2M (expiry helps
        #   find the cue); x0.03 first reached 0.99 at 1.97M, 0.998 at 2M, spans steady;
        # - entropy 0.001 collapsed the policy, 0.01 did not;
        # - bootstrapping time-outs let agents idle: a time-out counts as a failure.
        # Initial spans must cover the walk to the junction (about length / p(forward)).
        learner.update(
            gamma=0.99, ent_coef=0.01, span_lr_scale=0.03, bootstrap_truncated=False,
            total_steps=max(2_000_000, 2_500 * length),
        )  # fmt: skip
        # With the curriculum (corridor 1000), entropy 0.01 let 2 seeds of 3 settle at 0.75
        # on the first stages (the cue read for one colour only); 0.03 got both past it, but
        # kept up on the long stages it raised the entropy of walking (whose advantages
        # vanish a few hundred steps from the junction) until one seed timed out. Moving
        # from 0.03 to 0.003 over the stages, one seed forgot a cue colour at stage 160
        # (0.75, entropy 0.0075 there); 0.03 to 0.01 took seeds 1-3 to the full length in
        # 0.9-1.4M steps, and seeds 1 and 2 scored 1.000 at length 1000 after 2.5M (seed 3
        # forgot a cue colour at 1.85M, after 0.7M steps at 1.0, and ended at 0.76).
        # Random lengths and a length curriculum (measured on corridor 1000): lengths drawn
        # from [5, longest], longest 10 at first, doubled whenever an interval's success
        # reaches 0.9. With fixed lengths instead the agent can find the cue by its distance
        # (position bias) rather than its content and stalled at 0.75 when the length doubled.
        if length >= CURRICULUM_FROM:
            min_length = task_kwargs.get("min_length", length)
            learner.update(
                curriculum_start=max(10, min_length) if min_length < length else 10,
                ent_coef=0.03, ent_coef_final=0.01,
            )  # fmt: skip
        # Few memories alive (measured on corridor 1000): span lr x0.03 with R = 16 scored
        # 1.000 in 6 runs of 6 but kept 50 % of the length alive. Span lr x0.1 with R = 8
        # over 3M steps, stopping at 0.99 training success with at most 30 alive, left about
        # 3 % alive at 1.000 in 4 runs of 6; in the other two the cue spans fell below the
        # length during the curriculum (0.503), or the run stopped at 0.995 training success
        # over random lengths but scored 0.748 at the full length. Hence a tenth of the
        # episodes at the full length once it is reached, and a stop that waits for 100
        # greedy episodes of the full length to confirm both targets (see `resolve`).
        # Measured, seeds 1-3, torch's default threads: 1.000 greedy with 4.7 %, 1.7 % and
        # 4.7 % alive (176 s, 620 s, 183 s). With --threads 1: 1.000 with 3.8 % and 1.7 %
        # for seeds 1 and 2; seed 3 waits at the first cell when greedy (0.59 at 3.93M
        # steps), so it trains for all 4M steps (sampled: 1.000 with 1.9 % alive).
        if trains_few_memories(env, task_kwargs, policy, algo):
            learner.update(span_lr_scale=0.1, total_steps=max(4_000_000, 4_000 * length))
            policy_kwargs.update(ramp_length=8)
            if task_kwargs.get("min_length", length) < length:  # random lengths
                learner.update(curriculum_full_fraction=0.1)
        if algo == "impala":
            # IMPALA's policy gradient uses the raw V-trace advantages (PPO normalises them),
            # so PPO's entropy bonus swamps it. Measured, seed 1: corridor 5 at entropy 0.01
            # stayed at maximum entropy (0.46 success after 0.5M steps), at 0.001 it reached
            # 0.99 in 0.3M; corridor 100 with the curriculum at 0.003 -> 0.001 collapsed to
            # a policy that never reaches the junction, at 0.001 -> 0.0003 it scored 1.000
            # over 1000 episodes after 2M steps. Normalising IMPALA's advantages instead
            # left the entropy at its maximum.
            # Learning rate: at PPO's 5e-4 (IMPALA has no clipped trust region) seed 3 rose
            # to 0.82 on the first stage and fell back to 0.5, still there at 2M steps; at
            # 2.5e-4 and at 1e-4 seeds 1-3 all solved corridor 100 (1.000 over 1000
            # episodes each), 1e-4 with fewer steps (0.74M, 0.66M, 1.39M).
            learner.update(ent_coef=0.001, learning_rate=1e-4)
            if length >= CURRICULUM_FROM:
                learner.update(ent_coef_final=0.0003)
        policy_kwargs.update(max_span=3 * length + 16, forward_bias=1.0)
    elif env == "portal":
        # Measured, seed 1 (4 rooms, 5M steps): a memory agent that sees only the rooms stayed
        # at the memoryless level (0.5 goals greedy, 3-5 in training, oracle 27): nothing
        # in view shows which portal was taken, or whether the last room's was right (both
        # send the agent back; only the goal's reward differs). With the last action alone
        # (2 rooms) it learnt every room but the last (29 of 55 goals: 55 or 0 by layout);
        # with action and reward, 52 of 55. Span lr x0.1 brought the spans below a trip
        # (23 memories alive at 2M steps, 4 rooms) before the portals were learnt; x0.03
        # with L_max 256 keeps about 80 alive and learnt them.
        learner.update(gamma=0.99, total_steps=5_000_000, last_action_reward=True,
                       span_lr_scale=0.03)  # fmt: skip
        policy_kwargs.update(max_span=256, forward_bias=1.0)
    elif env == "instruction":
        # Measured on instruction size 3 with 2 balls, seed 1, 1.5M steps: every variant
        # stayed at chance (a ball at random), camping beside a ball and stepping into it as
        # soon as an instruction comes (63-84 % of instructions resolved on the step they
        # were given): the top-down view; --egocentric; --egocentric with entropy 0.02; and
        # --egocentric with the instruction shown at every step. Supervised (the instruction
        # in view), the encoder needed about 5M labelled views to tell which way the named
        # ball lies (0.94 accuracy); an attention readout over the cells learnt no faster.
        # With 20M steps to anneal over, --egocentric left chance at 2.4M steps and carried
        # out 95 % of the oracle's instructions at 4.9M. The full task (5 x 5, 4 balls) with
        # --egocentric stayed at chance for 17M steps (2 seeds); started from that 3 x 3
        # agent's weights, it carried out 94 % of the oracle's at 5.3M steps: hence a room
        # curriculum, moved on at 0.3 success (about 91 % of the oracle's instructions in the
        # 3 x 3 room), and the egocentric view. Measured, seeds 1-3 (15M steps): 90.4 % and
        # 65.2 % of the oracle for seeds 1 and 2 (on the task from 4.7M steps); 50.2 % for
        # seed 3, which left the small room only at 10.5M steps.
        # With the learning rate annealed over 15M steps the runs had 30-70 % of it left on
        # the task; the run above started from the 3 x 3 agent had a fresh schedule. Hence
        # a constant learning rate and a stop at INSTRUCTION_ORACLE_SHARE of the oracle's
        # instructions (greedy, see `resolve`) within a budget for the slow seeds. Measured,
        # seeds 1-3: on the task from 7.2M, 4.8M and 8.8M steps, stopped at 17.9M, 19.2M and
        # 17.4M; evaluated (200 episodes) at 93.4 %, 92.6 % and 91.2 % of the oracle.
        size = task_kwargs.get("size", 5)
        learner.update(gamma=0.95, total_steps=30_000_000, anneal_lr=False)
        if size >= INSTRUCTION_CURRICULUM_FROM:
            learner.update(curriculum_start=3, curriculum_success=0.3)
        policy_kwargs.update(max_span=256, egocentric=True)
    else:
        learner.update(total_steps=5_000_000)
        policy_kwargs.update(max_span=512)
    if policy != "expire_span":
        policy_kwargs.pop("max_span", None)
        policy_kwargs.pop("ramp_length", None)
    return learner, policy_kwargs


CORRIDOR_TARGET_SUCCESS = 0.99
"""The corridor preset stops training once the full length reaches this success rate."""

CURRICULUM_FROM = 20
"""Corridors at least this long train with the preset's random lengths and curriculum."""

FEW_MEMORIES_FROM = 1000
"""Corridors at least this long (with Expire-Span and PPO) train their spans down to
`FEW_MEMORIES_SHARE` of the length before the preset's stop."""

FEW_MEMORIES_SHARE = 0.05
"""The corridor preset's --target-alive, as a share of the length (the issue's bar)."""

CONFIRM_EPISODES = 100
"""The corridor preset's --confirm-episodes where it sets --target-alive, and the default
with --target-oracle-share."""

INSTRUCTION_ORACLE_SHARE = 0.93
"""The Instruction preset's --target-oracle-share."""

INSTRUCTION_CURRICULUM_FROM = 5
"""Instruction rooms at least this large train with the preset's room curriculum (from 3)."""


def trains_few_memories(env: str, task_kwargs: dict[str, Any], policy: str, algo: str) -> bool:
    """Whether the corridor preset trains the spans down to `FEW_MEMORIES_SHARE` of the
    length (long corridors, Expire-Span with PPO)."""
    return (env == "corridor" and policy == "expire_span" and algo == "ppo"
            and task_kwargs.get("length", 1000) >= FEW_MEMORIES_FROM)  # fmt: skip


def corridor_min_length(length: int, view_size: int) -> int:
    """The corridor preset's --min-length: random lengths from 5 (or the view size) up, for
    corridors of CURRICULUM_FROM cells or more; the full length below (no random lengths)."""
    return max(5, view_size) if length >= CURRICULUM_FROM else length


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def flag_name(name: str) -> str:
    """The command-line flag of an ``Args`` field: ``target_success`` -> ``--target-success``."""
    return "--" + name.replace("_", "-")


def resolve_env(args: Args) -> tuple[str, dict[str, Any]]:
    """The task and its complete, validated parameters."""
    all_task_flags = {name for flags in TASK_FLAGS.values() for name in flags}
    given = {name: getattr(args, name) for name in sorted(all_task_flags)}
    given = {name: value for name, value in given.items() if value is not None}
    if args.env in envs.TASKS:
        allowed = TASK_FLAGS[args.env]
        for name in given:
            _check(
                name in allowed,
                f"{flag_name(name)} is not a parameter of {args.env} "
                f"(its parameters: {', '.join(flag_name(n) for n in allowed)})",
            )
        if args.env == "corridor" and "min_length" not in given:
            given["min_length"] = corridor_min_length(given.get("length", 1000),
                                                      given.get("view_size", 3))  # fmt: skip
        try:
            task_config = envs.TASKS[args.env][0].config_class(**given)
        except ValueError as error:
            raise ConfigError(f"{args.env}: {error}") from None
        return args.env, {name: getattr(task_config, name) for name in allowed}
    import gymnasium as gym

    _check(
        args.env in gym.registry,
        f"unknown env {args.env!r}; choose corridor, portal, instruction or a registered "
        "gymnasium id (e.g. MiniGrid-MemoryS13Random-v0)",
    )
    _check(not given, f"{flag_name(next(iter(given), 'x'))} applies only to the suite's own tasks")
    from envs.gym_adapter import GymBatchedEnv

    try:  # fail now, before a run directory exists, on spaces the learner cannot use
        GymBatchedEnv(args.env, 1).close()
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return args.env, {}


def resolve_policy(args: Args, env_name: str, preset_policy: dict[str, Any]) -> dict[str, Any]:
    """The policy's settings: preset, then flags; flags foreign to the core are errors."""
    fields = _fields(args.policy)
    kwargs = {k: v for k, v in preset_policy.items() if k in fields}
    for name in POLICY_FLAGS:
        value = getattr(args, name)
        if value is None:
            continue
        _check(
            name in fields,
            f"{flag_name(name)} does not apply to --policy {args.policy} "
            f"(it applies to: {', '.join(k for k in POLICY_KINDS if name in _fields(k))})",
        )
        kwargs[name] = value
    forward_bias = preset_policy.get("forward_bias", 0.0)
    if args.forward_bias is not None:
        forward_bias = args.forward_bias
    if forward_bias:
        _check(
            env_name in envs.TASKS or env_name.startswith("MiniGrid"),
            f"--forward-bias needs a task whose action 2 is 'forward', not {env_name}",
        )
        kwargs["actor_bias_init"] = (0.0, 0.0, float(forward_bias))
    try:
        CONFIG_CLASSES[args.policy](**kwargs)
    except ValueError as error:
        raise ConfigError(f"--policy {args.policy}: {error}") from None
    return kwargs


def _fields(kind: str) -> set[str]:
    return {f.name for f in dataclasses.fields(CONFIG_CLASSES[kind])}


def resolve_learner(args: Args, preset_learner: dict[str, Any]) -> LearnerConfig:
    """Learner settings: defaults, then the task's preset, then flags; validated."""
    learner = LearnerConfig(algo=args.algo, **preset_learner)
    for f in dataclasses.fields(LearnerConfig):
        value = getattr(args, f.name, None)
        if f.name != "algo" and value is not None:
            setattr(learner, f.name, value)
    if args.chunk_length is None:
        learner.chunk_length = min(learner.chunk_length, learner.num_steps)
    positive_ints = ("num_envs", "num_steps", "update_epochs", "num_minibatches", "chunk_length")
    for name in positive_ints:
        value = getattr(learner, name)
        ok = isinstance(value, int) and value >= 1
        _check(ok, f"{flag_name(name)} must be >= 1, got {value}")
    _check(
        learner.num_steps % learner.chunk_length == 0,
        f"--chunk-length {learner.chunk_length} must divide --num-steps {learner.num_steps}",
    )
    _check(
        learner.num_envs % learner.num_minibatches == 0,
        f"--num-minibatches {learner.num_minibatches} must divide --num-envs {learner.num_envs}",
    )
    batch = learner.num_envs * learner.num_steps
    _check(
        learner.total_steps >= batch,
        f"--total-steps must be >= num_envs x num_steps = {batch}, got {learner.total_steps}",
    )
    ranges = {
        "learning_rate": (0.0, 1.0, True),
        "span_lr_scale": (0.0, 100.0, False),
        "gamma": (0.0, 1.0, True),
        "gae_lambda": (0.0, 1.0, False),
        "clip_coef": (0.0, 10.0, True),
        "ent_coef": (0.0, 10.0, False),
        "ent_coef_final": (0.0, 10.0, True),
        "vf_coef": (0.0, 100.0, False),
        "max_grad_norm": (0.0, math.inf, True),
        "adv_std_floor": (0.0, 100.0, False),
        "curriculum_success": (0.0, 1.0, True),
        "curriculum_full_fraction": (0.0, 1.0, False),
        "span_lr_scale_final": (0.0, 100.0, False),
        "rho_clip": (0.0, math.inf, True),
        "c_clip": (0.0, math.inf, True),
    }
    _check(
        learner.ent_coef_final is None or (learner.ent_coef > 0 and learner.ent_coef_final > 0),
        f"--ent-coef-final needs --ent-coef and --ent-coef-final > 0 (the coefficient moves "
        f"geometrically), got {learner.ent_coef} and {learner.ent_coef_final}",
    )
    for name, (low, high, open_low) in ranges.items():
        value = getattr(learner, name)
        if value is None:
            continue
        ok = math.isfinite(value) and (value > low if open_low else value >= low) and value <= high
        bound = f"({low}, {high}]" if open_low else f"[{low}, {high}]"
        _check(ok, f"{flag_name(name)} must be in {bound}, got {value}")
    return learner


def _check_curriculum(start: int, env_name: str, env_kwargs: dict[str, Any]) -> None:
    _check(
        env_name in ("corridor", "instruction"),
        f"--curriculum-start applies only to the corridor and instruction, not {env_name}",
    )
    if env_name == "instruction":
        size = env_kwargs["size"]
        _check(2 <= start <= size,
               f"--curriculum-start must be in [2, {size}] (a room size up to --size), "
               f"got {start}")  # fmt: skip
        return
    length = env_kwargs["length"]
    lowest = envs.TASKS["corridor"][0].config_class(**env_kwargs).shortest_longest
    _check(
        lowest <= start <= length,
        f"--curriculum-start must be in [{lowest}, {length}] (from the shortest corridor the "
        f"view allows, or --min-length, to --length), got {start}",
    )


def resolve_device(device: str) -> str:
    """``auto`` becomes cuda when available; asking for cuda without one is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    _check(
        device != "cuda" or torch.cuda.is_available(),
        "--device cuda: no CUDA device is available (use --device cpu or auto)",
    )
    return device


def check_run_overrides(args: Args) -> None:
    """Check the flags a resume may change as well as a new run: ``--threads``,
    ``--target-success`` (off as 0, or a success rate in (0, 1]) and ``--target-alive`` (off
    as 0, or a number of memories)."""
    _check(args.threads is None or args.threads >= 1, f"--threads must be >= 1, got {args.threads}")
    _check(args.target_success is None or 0.0 <= args.target_success <= 1.0,
           f"--target-success must be in [0, 1] (0: off), got {args.target_success}")  # fmt: skip
    _check(
        args.target_alive is None or 0.0 <= args.target_alive < math.inf,
        f"--target-alive must be a number of memories >= 0 (0: off), got {args.target_alive}",
    )
    _check(args.confirm_episodes is None or args.confirm_episodes >= 0,
           f"--confirm-episodes must be >= 0 (0: off), got {args.confirm_episodes}")  # fmt: skip
    share = args.target_oracle_share
    _check(share is None or 0.0 <= share <= 1.0,
           f"--target-oracle-share must be in [0, 1] (0: off), got {share}")  # fmt: skip


def oracle_share_confirm(share: float | None, confirm: int | None, env: str) -> int | None:
    """The greedy episodes that score a --target-oracle-share ``share`` (``confirm`` as given,
    by default `CONFIRM_EPISODES`); checks that the task has an oracle to score against."""
    if not share:
        return confirm
    _check(env in envs.TASKS,
           f"--target-oracle-share needs one of the suite's tasks ({', '.join(envs.TASKS)}), "
           f"which have a scripted oracle, not {env}")  # fmt: skip
    _check(confirm != 0, "--target-oracle-share needs greedy episodes to score: "
                         "--confirm-episodes must be >= 1 with it, got 0")  # fmt: skip
    return CONFIRM_EPISODES if confirm is None else confirm


def resolve(args: Args) -> TrainConfig:
    """The complete config of a new run from the command line (raises ConfigError)."""
    env_name, env_kwargs = resolve_env(args)
    preset_learner, preset_policy = preset(env_name, env_kwargs, args.policy, args.algo)
    policy_kwargs = resolve_policy(args, env_name, preset_policy)
    learner = resolve_learner(args, preset_learner)
    if learner.curriculum_start is not None:
        _check_curriculum(learner.curriculum_start, env_name, env_kwargs)
    _check(
        learner.curriculum_start is not None or learner.span_lr_scale_final is None,
        "--span-lr-scale-final needs a length curriculum (--curriculum-start)",
    )
    _check(
        not learner.curriculum_full_fraction
        or (learner.curriculum_start is not None
            and env_kwargs.get("min_length", 0) < env_kwargs.get("length", 0)),
        "--curriculum-full-fraction needs a length curriculum with random lengths "
        "(--curriculum-start, and --min-length below --length)",
    )  # fmt: skip
    for name in ("log_interval", "checkpoint_interval"):
        value = getattr(args, name)
        _check(value is None or value >= 1, f"{flag_name(name)} must be >= 1, got {value}")
    _check(
        args.keep_checkpoints >= 1, f"--keep-checkpoints must be >= 1, got {args.keep_checkpoints}"
    )
    check_run_overrides(args)
    target = args.target_success
    # Flags that ask for training past the full length (the preset's own full-length
    # episodes do not).
    trains_past_full = (args.span_lr_scale_final is not None
                        or args.curriculum_full_fraction is not None)  # fmt: skip
    if target is None and env_name == "corridor" and not trains_past_full:
        # Measured on corridor 1000, seeds 1-3: stopping at the first interval at 0.99 on
        # the full length (0.9-1.4M steps, 5-6 min with 3 runs on 2 cores) scored 1.000 over
        # 1000 episodes for all three; training on to 2.5M let seed 3 forget a cue colour
        # (0.76) while the spans came down only slowly (50 % of memories alive either way).
        target = CORRIDOR_TARGET_SUCCESS
    alive, confirm = args.target_alive, args.confirm_episodes
    few_memories = trains_few_memories(env_name, env_kwargs, args.policy, learner.algo)
    if few_memories and target and args.target_success is None:
        # The preset's stop waits for few memories alive, confirmed by greedy episodes.
        alive = FEW_MEMORIES_SHARE * env_kwargs["length"] if alive is None else alive
        confirm = CONFIRM_EPISODES if confirm is None else confirm
    share = args.target_oracle_share
    if share is None and env_name == "instruction":
        # Measured: the preset's runs leave the small room after 4.8-10.5M steps (seeds
        # 1-3), so a fixed budget is too short for some and wasted on others; a stop at 93 %
        # (above the bar of 90 %: 100 episodes are noisy, and the checks that
        # stopped seeds 1-3 at 93.4-94.4 % became 91.2-93.4 % over 200 others) serves them.
        share = INSTRUCTION_ORACLE_SHARE
    confirm = oracle_share_confirm(share, confirm, env_name)
    _check(
        not alive or bool(target) or bool(share),
        f"--target-alive {alive} needs a target to stop at (--target-success or "
        "--target-oracle-share)",
    )
    _check(
        not confirm or bool(target) or bool(share),
        f"--confirm-episodes {confirm} needs a target to confirm (--target-success or "
        "--target-oracle-share)",
    )
    _check(
        not alive or args.policy != "lstm",
        f"--target-alive needs a policy with memories (expire_span or trxl), not {args.policy}",
    )
    run = RunConfig(
        seed=args.seed,
        device=resolve_device(args.device),
        log_interval=args.log_interval or RunConfig.log_interval,
        checkpoint_interval=args.checkpoint_interval or RunConfig.checkpoint_interval,
        keep_checkpoints=args.keep_checkpoints,
        target_success=target or None,
        target_alive=alive or None,
        confirm_episodes=confirm or None,
        threads=args.threads,
        target_oracle_share=share or None,
    )
    return TrainConfig(env_name, env_kwargs, args.policy, policy_kwargs, learner, run)
