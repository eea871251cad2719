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

import argparse
import ast
import inspect
import itertools
import json
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

import envs
from agents.config import TASK_FLAGS, Args, resolve_device
from agents.run_config import ConfigError
from agents.run_dir import RunDir, RunDirError, atomic_write_bytes

TASK_PARAMETERS = sorted({name for names in TASK_FLAGS.values() for name in names})


def field_docstrings(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (what ``train_rl.py --help`` shows)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, following in itertools.pairwise(body):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):  # fmt: skip
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


FLAG_HELP = field_docstrings(Args)
"""Help of the task flags: the training flags' own docstrings (one source of truth)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``error: ...``, exit status 2)."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python evaluate.py", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by train_rl.py")
    parser.add_argument(
        "--episodes",
        type=int,
        default=1000,
        help="episodes to evaluate, split evenly over the envs (0: skip the "
        "evaluation, e.g. to only record videos) (default: 1000)",
    )
    parser.add_argument(
        "--num-envs",
        type=int,
        default=None,
        help="parallel envs (default: the run's, at most --episodes)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--deterministic",
        dest="deterministic",
        action="store_true",
        default=True,
        help="take the most likely action (default)",
    )
    mode.add_argument(
        "--stochastic",
        dest="deterministic",
        action="store_false",
        help="sample actions from the policy",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where env and policy run (default: auto, cuda when available)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: the run's setting, else torch's)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the evaluation episodes")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint file in RUN_DIR/checkpoints (or a path); default latest",
    )
    parser.add_argument("--output", default=None, help="where to write eval.json "
                        "(default: RUN_DIR/eval.json)")  # fmt: skip
    parser.add_argument(
        "--no-oracle",
        dest="oracle",
        action="store_false",
        help="skip scoring the task's scripted oracle on the same settings",
    )
    task = parser.add_argument_group("task overrides (default: the run's settings)")
    for name in TASK_PARAMETERS:
        meaning = FLAG_HELP.get(name, name)
        if name == "view_size":
            meaning += " Must stay the run's: the policy's observations keep their shape."
        task.add_argument("--" + name.replace("_", "-"), dest=name, type=int, default=None,
                          help=meaning)  # fmt: skip
    video = parser.add_argument_group("videos")
    video.add_argument(
        "--video",
        type=int,
        default=0,
        metavar="K",
        help="record K episodes to RUN_DIR/videos/ (default: 0)",
    )
    video.add_argument("--gif", action="store_true", help="write GIFs instead of MP4s")
    video.add_argument(
        "--frame-skip",
        type=int,
        default=None,
        metavar="N",
        help="write every N-th step (and every step that shows the cue or an "
        "instruction, follows a reward or ends the episode); default: "
        "chosen so a time-limit episode has at most ~1000 frames",
    )
    video.add_argument("--fps", type=float, default=15.0, help="frames per second (default: 15)")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Flag values the parser cannot check (raises ConfigError naming the flag)."""
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate (and record) as ``args`` say; returns the eval.json summary."""
    from agents.evaluate import load_run

    check_args(args)
    device = resolve_device(args.device)
    threads = args.threads or _run_threads(args.run_dir)
    if threads:
        torch.set_num_threads(threads)
    overrides = {name: getattr(args, name) for name in TASK_PARAMETERS}
    loaded = load_run(args.run_dir, args.checkpoint, device, overrides)
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


def evaluate_episodes(args: argparse.Namespace, loaded: Any) -> dict[str, Any]:
    """The policy's evaluation (and the oracle's, on the same settings), for eval.json."""
    from agents.evaluate import PolicyAgent, evaluate, evaluate_with_oracle, score_name

    num_envs = min(args.num_envs or loaded.config.learner.num_envs, args.episodes)
    agent = PolicyAgent(loaded.policy, args.deterministic, args.seed)
    if not (args.oracle and loaded.config.env in envs.TASKS):  # gym ids have no oracle
        env = loaded.make_env(num_envs, args.seed)
        return evaluate(env, agent, args.episodes, seed=args.seed).to_dict()
    result, oracle, share = evaluate_with_oracle(
        lambda: loaded.make_env(num_envs, args.seed), agent, args.episodes, args.seed
    )
    keys = ("success_rate", "mean_return", "mean_length", "timeout_rate", "counters")
    score = score_name(envs.TASKS[loaded.config.env][0])
    return {**result.to_dict(), "oracle": {key: oracle.to_dict()[key] for key in keys},
            "score": score, "oracle_share": share}  # fmt: skip


def record(args: argparse.Namespace, loaded: Any) -> list[dict[str, Any]]:
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
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ConfigError, RunDirError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # e.g. an --output in a read-only place
        print(f"error: cannot write {error.filename}: {error.strerror}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
