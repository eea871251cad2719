"""Evaluate a trained run: ``python evaluate.py RUN_DIR [--episodes 1000] [--video 3]``.

Rebuilds env, policy and weights from the run directory alone, plays
``--episodes`` episodes on the batched env (split evenly over the envs),
prints a short table and writes ``RUN_DIR/eval.json``. Task flags such as
``--length 5000`` change the task to test generalisation beyond training;
``--video K`` records K episodes (reference env + memory panel) to
``RUN_DIR/videos/`` and, for Expire-Span, their span pictures to
``RUN_DIR/plots/``. Every flag is documented by ``--help``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import tyro

import envs
from agents.cli import USAGE_ERROR, parse_args, resolve_device, task_flags, task_parameters
from agents.run_config import ConfigError
from agents.run_dir import RunDir, RunDirError, atomic_write_bytes

TaskOverrides = task_flags("(default: the run's setting)")
"""The task parameters as flags, to evaluate on other settings than trained on (view_size must
stay the run's: the policy's observations keep their shape)."""


@dataclass(kw_only=True)
class EvalArgs(TaskOverrides):  # type: ignore[misc, valid-type]
    """Evaluate a trained run: `python evaluate.py RUN_DIR [--episodes 1000] [--video 3]`."""

    run_dir: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR")]
    """A run directory made by train_rl.py."""
    episodes: int = 1000
    """Episodes to evaluate, split evenly over the envs (0: skip the evaluation, e.g. to only
    record videos)."""
    num_envs: Annotated[int | None, tyro.conf.arg(metavar="INT")] = None
    """Parallel envs (default: the run's, at most --episodes)."""
    stochastic: bool = False
    """Sample actions from the policy (default: the most likely action)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where env and policy run (auto: cuda when available)."""
    threads: Annotated[int | None, tyro.conf.arg(metavar="INT")] = None
    """CPU threads for torch (default: the run's setting, else torch's)."""
    seed: int = 0
    """Seed of the evaluation episodes."""
    checkpoint: Annotated[str | None, tyro.conf.arg(metavar="NAME")] = None
    """Checkpoint file in RUN_DIR/checkpoints (or a path); default latest.pt."""
    output: Annotated[str | None, tyro.conf.arg(metavar="PATH")] = None
    """Where to write eval.json (default: RUN_DIR/eval.json)."""
    no_oracle: bool = False
    """Skip scoring the task's scripted oracle on the same settings."""
    video: Annotated[int, tyro.conf.arg(metavar="K")] = 0
    """Record K episodes to RUN_DIR/videos/ (reference env and memory panel)."""
    gif: bool = False
    """Write GIFs instead of MP4s."""
    frame_skip: Annotated[int | None, tyro.conf.arg(metavar="N")] = None
    """Write every N-th step (and every step that shows the cue or an instruction, follows a
    reward or ends the episode); default: chosen so a time-limit episode has at most ~1000
    frames."""
    fps: float = 15.0
    """Video frames per second."""

    @property
    def deterministic(self) -> bool:
        return not self.stochastic

    def overrides(self) -> dict[str, Any]:
        """The task parameters given on the command line."""
        names = {name for names in task_parameters().values() for name in names}
        return {name: getattr(self, name) for name in sorted(names)
                if getattr(self, name) is not None}  # fmt: skip


def check_args(args: EvalArgs) -> None:
    """Flag values tyro cannot check (raises ConfigError naming the flag)."""
    checks = [
        (args.episodes >= 0, f"--episodes must be >= 0, got {args.episodes}"),
        (args.num_envs is None or args.num_envs >= 1,
         f"--num-envs must be >= 1, got {args.num_envs}"),
        (args.threads is None or args.threads >= 1,
         f"--threads must be >= 1, got {args.threads}"),
        (args.video >= 0, f"--video must be >= 0, got {args.video}"),
        (args.frame_skip is None or args.frame_skip >= 1,
         f"--frame-skip must be >= 1, got {args.frame_skip}"),
        (0 < args.fps <= 240, f"--fps must be in (0, 240], got {args.fps}"),
        (args.episodes > 0 or args.video > 0,
         "--episodes 0 with no --video: nothing to do (give --episodes N or --video K)"),
        (not (args.gif or args.frame_skip) or args.video > 0,
         "--gif and --frame-skip apply to videos: add --video K"),
        (args.output is None or not Path(args.output).is_dir(),
         f"--output {args.output} is a directory; give the path of the eval.json to write"),
    ]  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def _format(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def report(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """The table's rows for an eval.json summary."""
    ckpt = summary["checkpoint"]
    task = " ".join(f"{k}={v}" for k, v in summary["task"]["settings"].items())
    rows = [
        ("checkpoint", f"{Path(ckpt['path']).name} (step {ckpt['global_step']})"),
        ("task", f"{summary['task']['env']} {task}"),
        ("mode", "deterministic" if summary["deterministic"] else "stochastic"),
    ]
    if summary.get("episodes"):
        low, high = summary["success_ci95"]
        rows += [
            ("episodes", f"{summary['episodes']} ({summary['num_envs']} envs)"),
            ("success rate", f"{_format(summary['success_rate'])}  "
                             f"(95% CI {_format(low)} to {_format(high)})"),
            ("mean return", f"{_format(summary['mean_return'])} ± "
                            f"{_format(summary['std_return'])} (std)"),
            ("mean length", _format(summary["mean_length"], 1)),
            ("timed out", _format(summary["timeout_rate"])),
            ("memories alive", f"mean {_format(summary['mem_alive_mean'], 1)}, "
                               f"max {_format(summary['mem_alive_max'], 0)}"),
        ]  # fmt: skip
        for key, value in summary["counters"].items():
            rows.append((key.replace("_", " "), _format(value)))
    oracle = summary.get("oracle")
    if oracle:
        counters = "".join(f", {k} {_format(v)}" for k, v in oracle["counters"].items())
        rows.append(("oracle", f"success {_format(oracle['success_rate'])}, return "
                               f"{_format(oracle['mean_return'])}{counters}"))  # fmt: skip
        if summary.get("oracle_share") is not None:
            rows.append(("share of oracle", f"{100 * summary['oracle_share']:.1f} % of its "
                                            f"{summary['score'].replace('_', ' ')}"))  # fmt: skip
        if summary["deterministic"] and summary.get("timeout_rate") and not oracle["timeout_rate"]:
            # The oracle finishes every episode in time, so the policy's time-outs may be a
            # greedy loop: repeating a no-op for ever where the sampled policy moves on.
            rows.append(("note", "greedy actions can loop until the time limit where sampled "
                                 "ones move on: --stochastic samples from the policy"))  # fmt: skip
    return rows


def run(args: EvalArgs) -> dict[str, Any]:
    """Evaluate (and record) as ``args`` say; returns the eval.json summary."""
    from agents.load_run import load_run

    check_args(args)
    device = resolve_device(args.device)
    threads = args.threads or _run_threads(args.run_dir)
    if threads:
        torch.set_num_threads(threads)
    overrides = args.overrides()
    loaded = load_run(args.run_dir, args.checkpoint, device, overrides)
    if args.video > 0:  # before minutes of evaluation, not after
        from agents.video import check_recordable

        check_recordable(loaded.config)
    summary: dict[str, Any] = {
        "run_dir": str(loaded.run_dir.path),
        "checkpoint": loaded.checkpoint,
        "policy": loaded.config.policy,
        "task": {"env": loaded.config.env, "settings": loaded.env_kwargs,
                 "overrides": loaded.overrides},
        "deterministic": args.deterministic,
        "seed": args.seed,
    }  # fmt: skip
    output = Path(args.output) if args.output else loaded.run_dir.path / "eval.json"
    if args.episodes > 0:
        summary.update(evaluate_episodes(args, loaded))
        write_json(output, summary)
    rows = report(summary)
    if args.video > 0:
        summary["videos"] = record(args, loaded)
        for video in summary["videos"]:
            outcome = "success" if video["success"] else "no success"
            rows.append(("video", f"{video['path']} ({video['steps']} steps, "
                                  f"{video['frames']} frames, {outcome})"))  # fmt: skip
        if args.episodes > 0:
            write_json(output, summary)
    if args.episodes > 0:
        rows.append(("wrote", str(output)))
    print_table(rows)
    return summary


def evaluate_episodes(args: EvalArgs, loaded: Any) -> dict[str, Any]:
    """The policy's evaluation (and the oracle's, on the same settings), for eval.json."""
    from agents.eval_progress import EvalProgressDisplay
    from agents.evaluate import PolicyAgent, evaluate, evaluate_with_oracle, score_name

    num_envs = min(args.num_envs or loaded.config.learner.num_envs, args.episodes)
    agent = PolicyAgent(loaded.policy, args.deterministic, args.seed)
    with EvalProgressDisplay("evaluating") as show:
        if args.no_oracle or loaded.config.env not in envs.TASKS:  # gym ids have no oracle
            env = loaded.make_env(num_envs, args.seed)
            return evaluate(env, agent, args.episodes, seed=args.seed, progress=show).to_dict()
        result, oracle, share = evaluate_with_oracle(
            lambda: loaded.make_env(num_envs, args.seed), agent, args.episodes, args.seed,
            progress=show,
        )  # fmt: skip
    keys = ("success_rate", "mean_return", "mean_length", "timeout_rate", "counters")
    score = score_name(envs.TASKS[loaded.config.env][0])
    return {**result.to_dict(), "oracle": {key: oracle.to_dict()[key] for key in keys},
            "score": score, "oracle_share": share}  # fmt: skip


def record(args: EvalArgs, loaded: Any) -> list[dict[str, Any]]:
    """Record ``--video`` episodes; their eval.json entries."""
    from agents.video import record_videos

    prefix = "".join(f"{key.replace('_', '-')}{value}-" for key, value in loaded.overrides.items())
    videos = record_videos(loaded, args.video, args.seed, args.deterministic, args.gif,
                           args.frame_skip, args.fps, prefix)  # fmt: skip
    return [{"path": v.path, "steps": v.steps, "frames": v.frames, "success": v.success,
             "return": v.episode_return} for v in videos]  # fmt: skip


def _run_threads(path: str) -> int | None:
    """The run's ``threads`` setting, if it opens (errors are reported by ``load_run``)."""
    try:
        return RunDir.open(path).config().run.threads
    except RunDirError:
        return None


def write_json(path: Path, summary: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(summary, indent=2) + "\n").encode())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    args = parse_args(EvalArgs, argv, "python evaluate.py", __doc__.splitlines()[0])
    try:
        run(args)
    except (ConfigError, RunDirError) as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except OSError as error:  # e.g. an --output in a read-only place
        print(f"error: cannot write {error.filename}: {error.strerror}", file=sys.stderr)
        return USAGE_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
