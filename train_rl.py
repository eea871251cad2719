"""Train a memory agent: ``python train_rl.py --env corridor --length 1000``.

Every flag is documented by ``--help``. A run writes
``runs/<env>-<policy>-<algo>-s<seed>-<time>/`` (config, metrics, TensorBoard
events, checkpoints); ``--resume RUN_DIR`` continues it from its latest
checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

import tyro

from agents.config import Args, check_run_overrides, flag_name, oracle_share_confirm, resolve
from agents.learner import NonFiniteLossError
from agents.run_config import ConfigError, TrainConfig
from agents.run_dir import RunDir, RunDirError, default_name

RESUME_OVERRIDES = (
    "threads", "target_success", "target_alive", "confirm_episodes", "target_oracle_share"
)
"""Flags a resumed run may change: none alters what the run computed up to now."""


def check_resume_flags(args: Args, run_config: TrainConfig) -> TrainConfig:
    """Flags given with --resume must agree with the run (a mismatch is an error), apart from
    `RESUME_OVERRIDES`, which the returned config takes on."""
    defaults = Args()
    run_values = {
        "env": run_config.env,
        "policy": run_config.policy,
        "algo": run_config.learner.algo,
        "seed": run_config.run.seed,
        **run_config.env_kwargs,
    }
    mismatches = []
    for name, expected in run_values.items():
        value = getattr(args, name, None)
        if value is not None and value != getattr(defaults, name, None) and value != expected:
            mismatches.append(f"{flag_name(name)} {value} (the run has {expected})")
    if mismatches:
        raise ConfigError(f"mismatched run directory {args.resume}: " + "; ".join(mismatches))
    fixed = [
        flag_name(field.name) for field in dataclasses.fields(Args)
        if field.name not in (*run_values, *RESUME_OVERRIDES, "resume")
        and getattr(args, field.name) != getattr(defaults, field.name)
    ]  # fmt: skip
    if fixed:
        names = [flag_name(name) for name in RESUME_OVERRIDES]
        allowed = f"{', '.join(names[:-1])} and {names[-1]}"
        raise ConfigError(
            f"{', '.join(fixed)} cannot be given with --resume {args.resume}: its config.json "
            f"fixes them (only {allowed} may change on resume)"
        )
    check_run_overrides(args)
    # Given overrides replace the run's values; 0 turns a target off (threads are >= 1).
    changes = {name: getattr(args, name) or None for name in RESUME_OVERRIDES
               if getattr(args, name) is not None}  # fmt: skip
    run = dataclasses.replace(run_config.run, **changes)
    confirm = run.confirm_episodes if args.confirm_episodes is None else args.confirm_episodes
    confirm = oracle_share_confirm(run.target_oracle_share, confirm, run_config.env)
    run = dataclasses.replace(run, confirm_episodes=confirm or None)
    return dataclasses.replace(run_config, run=run)


def target_outcome(
    config: TrainConfig, row: dict[str, float], reached: bool, checks: list[dict[str, Any]]
) -> str:
    """One line on whether a run with a target (--target-success, --target-oracle-share)
    stopped at it."""
    run = config.run
    parts = []
    if run.target_success is not None:
        parts.append(f"success >= {run.target_success:g}")
    if run.target_oracle_share is not None:
        parts.append(f"{run.target_oracle_share:.0%} of the oracle's score")
    targets = " and ".join(parts)
    if run.target_alive is not None:
        targets += f" with at most {run.target_alive:g} memories alive"
    if reached:
        return f"stopped at step {int(row['global_step'])}: {targets} on the full task"
    last = f"last interval: success {row.get('success_rate', math.nan):.3f}"
    if run.target_alive is not None:
        last += f", {row.get('mem_alive_mean', math.nan):.1f} alive"
    if checks:
        check = checks[-1]
        last += (f"; last greedy check, at step {check['global_step']}: success "
                 f"{check['success_rate']:.3f}")  # fmt: skip
        if "oracle_share" in check:
            last += f", {check['oracle_share']:.1%} of the oracle's score"
    return (f"note: used all {config.learner.total_steps} steps without reaching {targets} "
            f"on the full task ({last}); evaluate the run before relying on it")


def main(argv: list[str] | None = None, progress: bool = True) -> int:
    """Run the CLI; returns the process exit status."""
    args = tyro.cli(Args, args=argv, description=__doc__.splitlines()[0])
    try:
        if args.resume is not None:
            run_dir = RunDir.open(args.resume)
            stored = run_dir.config()
            config = check_resume_flags(args, stored)
            run_dir.load_checkpoint()  # fail early on a missing or corrupt checkpoint
            if config != stored:
                run_dir.write_config(config)
            resume = True
        else:
            config = resolve(args)
            path = Path(args.run_dir) if args.run_dir else Path("runs") / default_name(config)
            run_dir = RunDir.create(path, config)
            resume = False
        from agents.trainer import Trainer

        trainer = Trainer(config, run_dir, resume=resume, progress=progress)
        print(f"run directory: {run_dir.path}", flush=True)
        row = trainer.run()
        if config.run.target_success is not None or config.run.target_oracle_share is not None:
            outcome = target_outcome(config, row, trainer.reached_targets,
                                     run_dir.read_target_checks())  # fmt: skip
            print(outcome, flush=True)
    except (ConfigError, RunDirError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"error: training stopped, {error}; the last good checkpoint is kept in "
              f"{run_dir.checkpoints}", file=sys.stderr)  # fmt: skip
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted; resume with --resume {run_dir.path}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
