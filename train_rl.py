"""Train a memory agent: ``python train_rl.py --env corridor --length 1000``.

Every flag is documented by ``--help``. A run writes
``runs/<env>-<policy>-<algo>-s<seed>-<time>/`` (config, metrics, TensorBoard
events, checkpoints); ``--resume RUN_DIR`` continues it from its latest
checkpoint.

``torchrun --nproc-per-node N train_rl.py ...`` trains one run with N
processes (docs/scaling.md): ``--num-envs`` counts the envs of all of them
together; rank 0 reads the command line and the run directory and hands the
outcome to the others.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.cli import USAGE_ERROR, given_flags, parse_args
from agents.control import Interrupted, StopRule
from agents.distributed import World, join
from agents.learner import NonFiniteLossError
from agents.resolve import resolve, resolve_resume
from agents.run_config import ConfigError, TrainConfig
from agents.run_dir import RunDir, RunDirError, default_name
from agents.train_args import TrainArgs

DESCRIPTION = (
    f"{__doc__.splitlines()[0]} Under torchrun (torchrun --nproc-per-node N train_rl.py ...) "
    "one run trains with N processes and --num-envs counts the envs of all of them together "
    "(a multiple of N x --num-minibatches); docs/scaling.md."
)


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


@dataclass
class Setup:
    """What every rank needs to start training; rank 0 reads it from the command line and
    the run directory."""

    config: TrainConfig
    run_dir: Path
    resume: bool
    checkpoint: dict[str, Any] | None


def prepare(
    argv: list[str] | None, world: World, opened: Callable[[RunDir], None]
) -> Setup | int:  # fmt: skip
    """Read the command line, then create the run directory or open the one to resume (rank
    0's part of starting; ``opened`` hears of it at once, for the messages of an error or an
    interrupt); an exit status where there is nothing to train."""
    args = parse_args(TrainArgs, argv, "python train_rl.py", DESCRIPTION)
    if args.resume is None:
        config = resolve(args, world.size)
        path = Path(args.run_dir) if args.run_dir else Path("runs") / default_name(config)
        run_dir = RunDir.create(path, config)
        opened(run_dir)
        return Setup(config, run_dir.path, False, None)
    run_dir = RunDir.open(args.resume)
    opened(run_dir)
    stored = run_dir.config()
    # A run killed before its first checkpoint has nothing to lose: it starts over.
    fresh = not run_dir.has_checkpoints()
    # Fail early on a corrupt checkpoint. Under torchrun it travels to the other ranks, which
    # put it on their own devices.
    device = "cpu" if world.distributed else stored.run.device
    checkpoint = None if fresh else run_dir.load_checkpoint(device=device)
    step = checkpoint["global_step"] if checkpoint else 0
    config = resolve_resume(args, given_flags(argv), stored, step, world.size)
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
    return Setup(config, run_dir.path, not fresh, checkpoint)


def shared_prepare(
    argv: list[str] | None, world: World, opened: Callable[[RunDir], None]
) -> Setup | int:  # fmt: skip
    """`prepare` on rank 0, its outcome on every rank: a Setup, or the exit status of a
    rank 0 that stopped (and said why; there it raises as in a single process)."""
    if not world.is_main:
        return world.broadcast_object(None)
    outcome: Setup | int = 1  # what the others do when rank 0 fails unforeseen
    try:
        outcome = prepare(argv, world, opened)
    except SystemExit as exit_:  # --help, or a command line tyro cannot read
        outcome = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
        raise
    except (ConfigError, RunDirError):
        outcome = USAGE_ERROR
        raise
    except KeyboardInterrupt:
        outcome = INTERRUPTED
        raise
    finally:
        world.broadcast_object(outcome)
    return outcome


def main(argv: list[str] | None = None, progress: bool = True) -> int:
    """Run the CLI; returns the process exit status (under torchrun, this rank's)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C from here: see below
    try:
        with join() as world:
            return train(argv, progress, world)
    except KeyboardInterrupt:  # while joining the other ranks
        print("\ninterrupted", file=sys.stderr)
        return INTERRUPTED


def train(argv: list[str] | None, progress: bool, world: World) -> int:
    """Set up and train as rank ``world.rank``; only rank 0 prints."""
    run_dir: RunDir | None = None

    def say(text: str) -> None:
        if world.is_main:
            print(text, file=sys.stderr)

    def opened(found: RunDir) -> None:
        nonlocal run_dir
        run_dir = found

    try:
        setup = shared_prepare(argv, world, opened)
        if isinstance(setup, int):
            return setup
        run_dir, config = RunDir(setup.run_dir), setup.config
        from agents.trainer import Trainer

        trainer = Trainer(config, run_dir, resume=setup.resume, progress=progress,
                          checkpoint=setup.checkpoint, world=world)  # fmt: skip
        if world.is_main:
            print(f"run directory: {run_dir.path}", flush=True)
        row = trainer.run()
        run = config.run
        if world.is_main and (run.target_success is not None
                              or run.target_oracle_share is not None):  # fmt: skip
            outcome = target_outcome(config, row, trainer.reached_targets,
                                     run_dir.read_target_checks())  # fmt: skip
            print(outcome, flush=True)
    except (ConfigError, RunDirError) as error:
        say(f"error: {error}")
        return USAGE_ERROR
    except OSError as error:  # e.g. a full disk: the checkpoint written before stays intact
        where = f"; the last good checkpoint is kept in {run_dir.checkpoints}" if run_dir else ""
        say(f"error: training stopped, cannot write {error.filename or 'the run directory'}: "
            f"{error.strerror or error}{where}")  # fmt: skip
        return 1
    except NonFiniteLossError as error:
        assert run_dir is not None
        say(f"error: training stopped, {error}; the last good checkpoint is kept in "
            f"{run_dir.checkpoints}")  # fmt: skip
        return 1
    except KeyboardInterrupt as interrupt:
        resume = f"; resume with --resume {run_dir.path}" if run_dir else ""
        if isinstance(interrupt, Interrupted):  # it finished its update and saved it
            say(f"interrupted at update {interrupt.update}, checkpoint saved{resume}")
            return 128 + interrupt.signum
        say(f"\ninterrupted{resume}")
        return INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
