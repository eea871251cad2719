"""From flags to a run's config: presets, then flags, validated; and what a resume may change.

`resolve` turns `TrainArgs` into the complete `TrainConfig` of a new run: the
task's parameters (its config dataclass), the task's preset (`agents.presets`)
under the flags the user gave, every value checked. `resolve_resume` checks the
flags given with ``--resume`` against the stored config. Every mistake is a
`ConfigError` naming the flag, its value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import envs
from agents.cli import flag_name, resolve_device, task_parameters
from agents.presets import CONFIRM_EPISODES, Targets, corridor_min_length, preset, preset_targets
from agents.run_config import ConfigError, LearnerConfig, RunConfig, TrainConfig
from agents.train_args import POLICY_FLAGS, TrainArgs
from envs.gym_adapter import time_limit
from policies.config import CONFIG_CLASSES, POLICY_KINDS


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def resolve_env(args: TrainArgs) -> tuple[str, dict[str, Any]]:
    """The task and its complete, validated parameters."""
    parameters = task_parameters()
    all_task_flags = {name for names in parameters.values() for name in names}
    given = {name: getattr(args, name) for name in sorted(all_task_flags)}
    given = {name: value for name, value in given.items() if value is not None}
    if args.env in envs.TASKS:
        allowed = parameters[args.env]
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
    from envs.gym_adapter import GymBatchedEnv, check_gym_env

    try:
        check_gym_env(args.env)
    except ValueError as error:
        raise ConfigError(
            f"{error}, or one of the suite's tasks ({', '.join(envs.TASKS)})"
        ) from None
    _check(not given, f"{flag_name(next(iter(given), 'x'))} applies only to the suite's own tasks")
    try:  # fail now, before a run directory exists, on spaces the learner cannot use
        GymBatchedEnv(args.env, 1).close()
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return args.env, {}


def resolve_policy(args: TrainArgs, env_name: str, preset_policy: dict[str, Any]) -> dict[str, Any]:
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


def resolve_learner(args: TrainArgs, preset_learner: dict[str, Any]) -> LearnerConfig:
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


def check_run_overrides(args: TrainArgs) -> None:
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


def resolve(args: TrainArgs, world_size: int = 1) -> TrainConfig:
    """The complete config of a new run from the command line (raises ConfigError), trained
    by ``world_size`` processes (torchrun's ranks), among which ``--num-envs`` is shared."""
    env_name, env_kwargs = resolve_env(args)
    limit = None if env_name in envs.TASKS else time_limit(env_name)
    preset_learner, preset_policy = preset(env_name, env_kwargs, args.policy, args.algo, limit)
    policy_kwargs = resolve_policy(args, env_name, preset_policy)
    learner = resolve_learner(args, preset_learner)
    multiple = world_size * learner.num_minibatches  # each rank splits its share of the envs
    _check(
        world_size == 1 or learner.num_envs % multiple == 0,
        f"--num-envs {learner.num_envs} counts the envs of all {world_size} processes: it must "
        f"be a multiple of {world_size} x --num-minibatches {learner.num_minibatches} = "
        f"{multiple}",
    )
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
    # Flags that ask for training past the full length (the preset's own full-length
    # episodes do not).
    trains_past_full = (args.span_lr_scale_final is not None
                        or args.curriculum_full_fraction is not None)  # fmt: skip
    given = Targets(args.target_success, args.target_alive, args.confirm_episodes,
                    args.target_oracle_share)  # fmt: skip
    target, alive, confirm, share = preset_targets(
        env_name, env_kwargs, args.policy, learner.algo, given, trains_past_full
    )
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
        world_size=world_size,
        num_envs_per_rank=learner.num_envs // world_size,
    )
    return TrainConfig(env_name, env_kwargs, args.policy, policy_kwargs, learner, run)


RESUME_OVERRIDES = (
    "threads", "target_success", "target_alive", "confirm_episodes", "target_oracle_share",
    "total_steps",
)  # fmt: skip
"""Flags a resumed run may change: none alters what the run computed up to now
(``--total-steps`` only upwards: training on past the end moves the learning-rate schedule)."""


def _launch(world_size: int) -> str:
    """The command that starts ``world_size`` processes on one node."""
    if world_size == 1:
        return "python train_rl.py"
    return f"torchrun --nproc-per-node {world_size} train_rl.py"


def stored_values(config: TrainConfig) -> dict[str, Any]:
    """What a run's config.json holds for each flag that a resume could repeat: the task,
    the task's parameters, the core, the learner's and the run's settings."""
    return {
        "env": config.env,
        "policy": config.policy,
        "algo": config.learner.algo,
        **config.env_kwargs,
        **config.policy_kwargs,
        **dataclasses.asdict(config.learner),
        **dataclasses.asdict(config.run),
    }


def resolve_resume(
    args: TrainArgs, given: set[str], run_config: TrainConfig, global_step: int,
    world_size: int = 1,
) -> TrainConfig:  # fmt: skip
    """The config a resumed run goes on with. Flags ``given`` on the command line (names of
    `TrainArgs` fields) must repeat the run's values, apart from `RESUME_OVERRIDES`, which
    the returned config takes on; ``global_step`` is where the run's checkpoint stands. The
    run must go on with as many processes (``world_size``) as it was trained with: its
    checkpoint holds each one's envs and memories."""
    trained_by = run_config.run.world_size
    _check(
        world_size == trained_by,
        f"--resume {args.resume}: the run was trained by {trained_by} processes and this "
        f"launch has {world_size}; resume it with {trained_by} ({_launch(trained_by)} "
        f"--resume {args.resume})",
    )
    stored = stored_values(run_config)
    mismatches, fixed = [], []
    for name in sorted(given - {"resume", *RESUME_OVERRIDES}):
        value = getattr(args, name)
        if name in stored and value != stored[name]:
            mismatches.append(f"{flag_name(name)} {value} (the run has {stored[name]})")
        elif name not in stored:
            fixed.append(flag_name(name))
    if mismatches:
        raise ConfigError(f"mismatched run directory {args.resume}: " + "; ".join(mismatches))
    if fixed:
        names = [flag_name(name) for name in RESUME_OVERRIDES]
        allowed = f"{', '.join(names[:-1])} and {names[-1]}"
        raise ConfigError(
            f"{', '.join(fixed)} cannot be given with --resume {args.resume}: its config.json "
            f"fixes them (only {allowed} may change on resume)"
        )
    check_run_overrides(args)
    # Given overrides replace the run's values; 0 turns a target off (threads are >= 1).
    run_overrides = [name for name in RESUME_OVERRIDES if name != "total_steps"]
    changes = {name: getattr(args, name) or None for name in run_overrides
               if getattr(args, name) is not None}  # fmt: skip
    run = dataclasses.replace(run_config.run, **changes)
    confirm = run.confirm_episodes if args.confirm_episodes is None else args.confirm_episodes
    confirm = oracle_share_confirm(run.target_oracle_share, confirm, run_config.env)
    run = dataclasses.replace(run, confirm_episodes=confirm or None)
    learner = run_config.learner
    if args.total_steps is not None and args.total_steps != learner.total_steps:
        _check(
            args.total_steps > global_step,
            f"--total-steps {args.total_steps} with --resume must be above the {global_step} "
            "steps the run has trained",
        )
        learner = dataclasses.replace(learner, total_steps=args.total_steps)
    return dataclasses.replace(run_config, learner=learner, run=run)
