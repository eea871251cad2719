"""Train a memory agent: ``python train_rl.py --env corridor --length 1000``.

Every flag is documented by ``--help``. A run writes
``runs/<env>-<policy>-<algo>-s<seed>-<time>/`` (config, metrics, TensorBoard
events, checkpoints); ``--resume RUN_DIR`` continues it from its latest
checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

import tyro

from agents.config import Args, ConfigError, TrainConfig, resolve
from agents.learner import NonFiniteLossError
from agents.run_dir import RunDir, RunDirError, default_name


def check_resume_flags(args: Args, run_config: TrainConfig) -> None:
    """Flags given with --resume must agree with the run: a mismatch is an error."""
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
            mismatches.append(f"--{name.replace('_', '-')} {value} (the run has {expected})")
    if mismatches:
        raise ConfigError(f"mismatched run directory {args.resume}: " + "; ".join(mismatches))


def main(argv: list[str] | None = None, progress: bool = True) -> int:
    """Run the CLI; returns the process exit status."""
    args = tyro.cli(Args, args=argv, description=__doc__.splitlines()[0])
    try:
        if args.resume is not None:
            run_dir = RunDir.open(args.resume)
            config = run_dir.config()
            check_resume_flags(args, config)
            run_dir.load_checkpoint()  # fail early on a missing or corrupt checkpoint
            resume = True
        else:
            config = resolve(args)
            path = Path(args.run_dir) if args.run_dir else Path("runs") / default_name(config)
            run_dir = RunDir.create(path, config)
            resume = False
        from agents.trainer import Trainer

        trainer = Trainer(config, run_dir, resume=resume, progress=progress)
        print(f"run directory: {run_dir.path}", flush=True)
        trainer.run()
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
