"""Train a memory agent: ``python train_rl.py --env corridor --length 1000``.

Every flag is documented by ``--help``. A run writes
``runs/<env>-<policy>-<algo>-s<seed>-<time>/`` (config, metrics, TensorBoard
events, checkpoints); ``--resume RUN_DIR`` continues it from its latest
checkpoint.
"""

from __future__ import annotations

import signal
import sys

INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT)."""

if __name__ == "__main__":  # Ctrl-C while the libraries load: one line, no traceback
    signal.signal(signal.SIGINT, lambda *_: sys.exit(print("\ninterrupted", file=sys.stderr)
                                                     or INTERRUPTED))

import dataclasses
import math
from pathlib import Path
from typing import Any

from agents.cli import USAGE_ERROR, given_flags, parse_args
from agents.control import StopRule
from agents.learner import NonFiniteLossError
from agents.resolve import resolve, resolve_resume
from agents.run_config import ConfigError, TrainConfig
from agents.run_dir import RunDir, RunDirError, default_name
from agents.train_args import TrainArgs


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


def finished_note(
    run_dir: RunDir, config: TrainConfig, stored: TrainConfig, checkpoint: dict[str, Any]
) -> str:
    """What a resume of a run with nothing left to train says (empty if there is more): a run
    at the end of its steps, or one that stopped at the targets it still has (``config``, the
    resume's, against ``stored``, the run's)."""
    step, total = int(checkpoint["global_step"]), config.learner.total_steps
    steps_per_update = config.learner.num_envs * config.learner.num_steps
    if total // steps_per_update * steps_per_update <= step:
        return (f"{run_dir.path} is finished: it has trained all its {total} steps; train it "
                f"on with --resume {run_dir.path} --total-steps N (N > {step})")
    same_targets = config.run == stored.run or dataclasses.replace(
        config.run, threads=stored.run.threads) == stored.run
    if checkpoint.get("stopped_at_targets") and StopRule(config.run).active and same_targets:
        flag = "--target-success" if config.run.target_success else "--target-oracle-share"
        return (f"{run_dir.path} is finished: it stopped at its targets at step {step}; train "
                f"it on past them with --resume {run_dir.path} {flag} 0")
    return ""


def main(argv: list[str] | None = None, progress: bool = True) -> int:
    """Run the CLI; returns the process exit status."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C from here: see below
    run_dir: RunDir | None = None
    try:
        args = parse_args(TrainArgs, argv, "python train_rl.py", __doc__.splitlines()[0])
        if args.resume is not None:
            run_dir = RunDir.open(args.resume)
            stored = run_dir.config()
            # A run killed before its first checkpoint has nothing to lose: it starts over.
            fresh = not run_dir.has_checkpoints()
            # Fail early on a corrupt checkpoint.
            checkpoint = None if fresh else run_dir.load_checkpoint(device=stored.run.device)
            step = checkpoint["global_step"] if checkpoint else 0
            config = resolve_resume(args, given_flags(argv), stored, step)
            finished = finished_note(run_dir, config, stored, checkpoint) if checkpoint else ""
            if finished:
                print(finished)
                return 0
            if config != stored:
                run_dir.write_config(config)
            run_dir.remove_temporaries()
            if fresh:
                print(f"note: {run_dir.path} has no checkpoint yet; training it from the start")
                run_dir.truncate_metrics(0)
            resume = not fresh
        else:
            config = resolve(args)
            path = Path(args.run_dir) if args.run_dir else Path("runs") / default_name(config)
            run_dir = RunDir.create(path, config)
            resume, checkpoint = False, None
        from agents.trainer import Trainer

        trainer = Trainer(config, run_dir, resume=resume, progress=progress,
                          checkpoint=checkpoint)  # fmt: skip
        print(f"run directory: {run_dir.path}", flush=True)
        row = trainer.run()
        if config.run.target_success is not None or config.run.target_oracle_share is not None:
            outcome = target_outcome(config, row, trainer.reached_targets,
                                     run_dir.read_target_checks())  # fmt: skip
            print(outcome, flush=True)
    except (ConfigError, RunDirError) as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except OSError as error:  # e.g. a full disk: the checkpoint written before stays intact
        where = f"; the last good checkpoint is kept in {run_dir.checkpoints}" if run_dir else ""
        print(f"error: training stopped, cannot write {error.filename or 'the run directory'}: "
              f"{error.strerror or error}{where}", file=sys.stderr)  # fmt: skip
        return 1
    except NonFiniteLossError as error:
        assert run_dir is not None
        print(f"error: training stopped, {error}; the last good checkpoint is kept in "
              f"{run_dir.checkpoints}", file=sys.stderr)  # fmt: skip
        return 1
    except KeyboardInterrupt:
        resume = f"; resume with --resume {run_dir.path}" if run_dir else ""
        print(f"\ninterrupted{resume}", file=sys.stderr)
        return INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
