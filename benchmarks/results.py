"""The results page: a declared grid of training runs against baselines, run cell by cell.

    python benchmarks/results.py run [--cells PATTERN ...] [--seeds S ...] [--threads N] [--dry-run]
    python benchmarks/results.py report

The grid (`TASKS` x `CORES`) is task x core x learner x seed. A cell is one
seed of one core on one task: a normal ``train_rl.py`` run in
``runs/results/<cell>/`` followed by ``evaluate.py`` (for sb3-contrib,
``benchmarks/sb3_baseline.py``, which trains and evaluates). Every core on a
task trains for the same step budget, the task's Expire-Span preset's
(``learner.total_steps`` of the resolved config). The cores:

- ``expire_span``: the task's preset, exactly the README's command
  (``python train_rl.py --env corridor --length 1000 --seed S``), 5 seeds; on
  corridor 1000 also with ``--algo impala``;
- ``trxl-equal-memory``: Transformer-XL whose window is the mean memories alive
  (``mem_alive_mean`` of the evaluation) of the task's Expire-Span cells,
  rounded up, so these cells wait for those;
- ``trxl-equal-reach``: Transformer-XL whose window covers what the task asks
  to remember: the corridor's length (the oracle turns at the junction after
  ``length`` steps), a Portal trip through every room, Instruction's longest
  delay between instructions, a gymnasium env's time limit;
- ``lstm``; ``sb3``: sb3-contrib's RecurrentPPO (`VARIANTS` of
  ``sb3_baseline.py``).

``run`` goes through the grid in order, one cell at a time: a cell already in
``docs/results/cells.jsonl`` is skipped; a cell whose run directory holds an
unfinished run is resumed (``train_rl.py --resume``); the rest are started.
The harness writes ``harness.json`` in each run directory (the commands, the
commits that ran it, and whether training and evaluation exited 0); a run
whose ``harness.json`` does not say trained, but whose latest checkpoint has
reached its ``--total-steps``, is finished too (one that stopped at its target
in the moment between ``train_rl.py``'s exit and that write is resumed, and
trains on until its target stops it again). Each finished cell appends one
JSON line to ``cells.jsonl`` (one write, flushed and fsynced). ``--threads N``
is passed to ``train_rl.py`` and ``evaluate.py`` and makes other cells (ids
ending in ``-threadsN``); without it torch chooses, and the cell records the
count it chose.

``report`` writes ``docs/results.md`` and ``docs/results/<task>.png`` from
``cells.jsonl`` alone, byte for byte the same each time.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import gymnasium as gym
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure  # no pyplot: no global backend, nothing opens a window

import envs
from agents.cli import parse_args
from agents.resolve import resolve
from agents.run_config import ConfigError
from agents.run_dir import RunDir, atomic_write_bytes
from agents.train_args import TrainArgs

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "docs" / "results" / "cells.jsonl"
PAGE = ROOT / "docs" / "results.md"
RUNS_ROOT = ROOT / "runs" / "results"
CURVE_POINTS = 100
"""Learning-curve points kept per cell."""


# -- the grid ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bar:
    """When a cell counts as solved: its evaluation's ``metric`` at least ``threshold``."""

    metric: str
    threshold: float
    text: str


CORRIDOR_BAR = Bar("success_rate", 0.99, "greedy success >= 0.99")
ORACLE_BAR = Bar("oracle_share", 0.90, ">= 90 % of the scripted oracle's score, greedy")
MINIGRID_BAR = Bar("success_rate", 0.95, "greedy success >= 0.95")


@dataclass(frozen=True)
class Task:
    """One task of the grid and how its cells are evaluated."""

    label: str
    """The cells' id prefix and the plot's file name."""
    env: str
    """``--env``: a suite task or a gymnasium id."""
    settings: dict[str, int]
    """Task flags of every command (e.g. ``{"length": 1000}``); unset ones are the task's."""
    title: str
    bar: Bar
    episodes: int
    """Evaluation episodes (``evaluate.py --episodes``)."""
    num_envs: int
    """Envs they are split over (``evaluate.py --num-envs``)."""
    stage: int = 1
    """Cells run in order of stage (the task's or the core's, the later), then task, core, seed."""
    total_steps: int | None = None
    """The step budget of every core; default: the Expire-Span preset's."""
    train_flags: tuple[str, ...] = ()
    """More flags of every ``train_rl.py`` command on this task."""


@dataclass(frozen=True)
class Core:
    """One row of every task's table: a memory core (and learner) over some seeds."""

    name: str
    """``expire_span``, ``trxl-equal-memory``, ``trxl-equal-reach``, ``lstm`` or ``sb3``."""
    title: str
    algo: str = "ppo"
    variant: str = ""
    """sb3: the hyperparameter variant of ``sb3_baseline.py``."""
    seeds: tuple[int, ...] = (1, 2, 3)
    tasks: tuple[str, ...] | None = None
    """Task labels it runs on (None: all)."""
    not_run: tuple[tuple[str, str], ...] = ()
    """(task label, reason) of cells declared but not run; the page gives the reason."""
    stage: int = 1

    @property
    def key(self) -> str:
        return "-".join(part for part in (self.name, self.variant, self.algo) if part)

    def reason_not_run(self, task: Task) -> str | None:
        return dict(self.not_run).get(task.label)


TASKS: tuple[Task, ...] = (
    Task("corridor100", "corridor", {"length": 100}, "Corridor, length 100", CORRIDOR_BAR,
         episodes=1000, num_envs=200),
    Task("corridor1000", "corridor", {"length": 1000}, "Corridor, length 1000", CORRIDOR_BAR,
         episodes=1000, num_envs=200),
    Task("MiniGrid-MemoryS13Random-v0", "MiniGrid-MemoryS13Random-v0", {},
         "MiniGrid-MemoryS13Random-v0", MINIGRID_BAR, episodes=1000, num_envs=100),
    Task("MiniGrid-MemoryS17Random-v0", "MiniGrid-MemoryS17Random-v0", {},
         "MiniGrid-MemoryS17Random-v0", MINIGRID_BAR, episodes=1000, num_envs=100),
    Task("portal", "portal", {}, "Portal", ORACLE_BAR, episodes=200, num_envs=100, stage=2),
    Task("instruction", "instruction", {}, "Instruction", ORACLE_BAR, episodes=200, num_envs=100,
         stage=2),
)  # fmt: skip
"""The tasks, cheap and decisive ones first (stage 1)."""

SB3_TASKS = ("corridor100", "corridor1000", "MiniGrid-MemoryS13Random-v0",
             "MiniGrid-MemoryS17Random-v0")  # fmt: skip
CORES: tuple[Core, ...] = (
    # The preset as the README tells users to run it, over 5 seeds (robust, not lucky).
    Core("expire_span", "Expire-Span (the task's preset)", seeds=(1, 2, 3, 4, 5)),
    Core("expire_span", "Expire-Span, IMPALA learner", algo="impala", tasks=("corridor1000",)),
    Core("trxl-equal-memory", "Transformer-XL, window = Expire-Span's memories alive"),
    Core("trxl-equal-reach", "Transformer-XL, window covering the task"),
    Core("lstm", "LSTM"),
    Core("sb3", "sb3-contrib RecurrentPPO, defaults", variant="defaults", tasks=SB3_TASKS,
         stage=2),
    Core("sb3", "sb3-contrib RecurrentPPO, tuned (our corridor preset's PPO settings)",
         variant="tuned", tasks=("corridor100", "corridor1000"), stage=2),
)  # fmt: skip
"""The cores; baselines over 3 seeds."""

PUBLISHED: tuple[dict[str, Any], ...] = ()
"""Published figures for the grid's gymnasium tasks, each a dict with ``task`` (a label),
``method``, ``figure``, ``budget`` (env steps), ``setting`` and ``source`` (URL). None was
found for MiniGrid-MemoryS13Random-v0 or -S17Random-v0 in the sources of `PUBLISHED_SEARCHED`."""

PUBLISHED_SEARCHED: tuple[tuple[str, str, str], ...] = (
    ("CleanRL's PPO-TrXL documentation", "https://docs.cleanrl.dev/rl-algorithms/ppo-trxl/",
     "figures for Memory Gym's environments only; for MiniGrid, the command of "
     "MiniGrid-MemoryS9-v0 without a figure"),
    ("Memory Gym (Pleines et al.)", "https://arxiv.org/abs/2309.17207",
     "its own environments: Mortar Mayhem, Mystery Path and Searing Spotlights"),
    ("sb3-contrib's RecurrentPPO documentation and the RL Zoo's trained agents",
     "https://sb3-contrib.readthedocs.io/en/master/modules/ppo_recurrent.html",
     "no RecurrentPPO figure for a MiniGrid memory task"),
)  # fmt: skip
"""Where published figures for the MiniGrid memory tasks were looked for: (name, URL, what
it holds)."""


# -- cells and their commands -------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """One seed of one core on one task, with the harness's ``--threads`` (None: torch's)."""

    task: Task
    core: Core
    seed: int
    threads: int | None = None

    @property
    def id(self) -> str:
        threads = f"-threads{self.threads}" if self.threads is not None else ""
        return f"{self.task.label}-{self.core.key}-s{self.seed}{threads}"


def grid_cells(
    tasks: Sequence[Task] = TASKS, cores: Sequence[Core] = CORES, threads: int | None = None
) -> list[Cell]:
    """Every declared cell, in the order they run."""
    cells = [Cell(task, core, seed, threads) for task in tasks for core in cores
             if core.tasks is None or task.label in core.tasks for seed in core.seeds]  # fmt: skip
    order = {id(item): index for index, item in enumerate((*tasks, *cores))}
    return sorted(cells, key=lambda cell: (max(cell.task.stage, cell.core.stage),
                                           order[id(cell.task)], order[id(cell.core)],
                                           cell.seed))  # fmt: skip


def shown_path(path: Path) -> str:
    """``path`` as commands show it: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def task_flags(task: Task) -> list[str]:
    return [f for name, value in task.settings.items()
            for f in (f"--{name.replace('_', '-')}", str(value))]  # fmt: skip


class Planner:
    """The commands of the grid's cells: budgets and windows from the resolved configs, the
    equal-memory window from the finished Expire-Span cells."""

    def __init__(self, records: list[dict[str, Any]], runs_root: Path = RUNS_ROOT,
                 cores: Sequence[Core] = CORES):  # fmt: skip
        self.records, self.runs_root = records, runs_root
        self.preset_core = next((c for c in cores if c.name == "expire_span" and c.algo == "ppo"),
                                None)  # fmt: skip
        self._configs: dict[str, Any] = {}

    def preset_argv(self, task: Task, seed: int = 1) -> list[str]:
        """The Expire-Span preset's training flags on ``task``."""
        budget = ["--total-steps", str(task.total_steps)] if task.total_steps else []
        return ["--env", task.env, *task_flags(task), "--seed", str(seed), *budget,
                *task.train_flags]  # fmt: skip

    def config(self, task: Task) -> Any:
        """The resolved config of the task's Expire-Span preset."""
        if task.label not in self._configs:
            argv = self.preset_argv(task)
            try:
                self._configs[task.label] = resolve(parse_args(TrainArgs, argv, "train_rl", ""))
            except ConfigError as error:
                raise HarnessError(f"train_rl.py {shlex.join(argv)}: {error}") from None
        return self._configs[task.label]

    def budget(self, task: Task) -> int:
        return int(self.config(task).learner.total_steps)

    def reach(self, task: Task) -> int:
        """A Transformer-XL window that covers what ``task`` asks to remember."""
        env, settings = task.env, self.config(task).env_kwargs
        if env == "corridor":
            return int(settings["length"])  # the oracle turns at the junction after `length` steps
        if env == "portal":
            return int(envs.TASKS["portal"][0].config_class(**settings).trip_steps)
        if env == "instruction":
            return int(settings["delay_max"])  # an instruction is held until the next at most
        made = gym.make(env)
        limit = made.spec.max_episode_steps if made.spec else None
        limit = limit or getattr(made.unwrapped, "max_steps", None)
        made.close()
        if not limit:
            raise HarnessError(f"{env} declares no time limit for a window to cover")
        return int(limit)

    def equal_memory(self, cell: Cell) -> tuple[int | None, str]:
        """The window of a ``trxl-equal-memory`` cell: the mean memories alive of the task's
        Expire-Span preset cells (all seeds, the same threads), rounded up; None until they
        have all run, with a note saying so."""
        core = self.preset_core
        if core is None:
            raise HarnessError("trxl-equal-memory needs the grid's Expire-Span preset core")
        done = {r["seed"]: r["mem_alive_mean"] for r in self.records
                if matches(r, cell.task, core) and threads_flag(r) == cell.threads}  # fmt: skip
        missing = [seed for seed in core.seeds if seed not in done]
        if missing:
            ran = len(core.seeds) - len(missing)
            return None, (f"waits for the Expire-Span cells of {cell.task.label} ({ran} of "
                          f"{len(core.seeds)} done)")  # fmt: skip
        alive = [done[seed] for seed in core.seeds]
        return max(1, math.ceil(statistics.fmean(alive))), ""

    def commands(self, cell: Cell) -> tuple[list[str] | None, list[str] | None, str]:
        """(training argv, evaluation argv, note) after ``python``; the training argv is None
        while the cell waits (the note says for what)."""
        run_dir = shown_path(self.runs_root / cell.id)
        threads = ["--threads", str(cell.threads)] if cell.threads is not None else []
        task, core = cell.task, cell.core
        evaluate = ["evaluate.py", run_dir, "--episodes", str(task.episodes),
                    "--num-envs", str(task.num_envs), *threads]  # fmt: skip
        if core.name == "sb3":
            env = envs.TASKS[task.env][2] if task.env in envs.TASKS else task.env
            train = ["benchmarks/sb3_baseline.py", "--env", env, *task_flags(task), "--variant",
                     core.variant, "--seed", str(cell.seed), "--total-steps",
                     str(self.budget(task)), "--run-dir", run_dir, "--episodes",
                     str(task.episodes), "--num-envs", str(task.num_envs), *threads]  # fmt: skip
            return train, None, ""
        flags = self.preset_argv(task, cell.seed)
        budget = ["--total-steps", str(self.budget(task))] if not task.total_steps else []
        if core.name == "expire_span" and core.algo != "ppo":
            flags += ["--algo", core.algo, *budget]
        elif core.name in ("trxl-equal-memory", "trxl-equal-reach"):
            window, note = (self.equal_memory(cell) if core.name == "trxl-equal-memory"
                            else (self.reach(task), ""))  # fmt: skip
            if window is None:
                return None, evaluate, note
            flags += ["--policy", "trxl", "--memory-size", str(window), *budget]
        elif core.name == "lstm":
            flags += ["--policy", "lstm", *budget]
        return ["train_rl.py", *flags, "--run-dir", run_dir, *threads], evaluate, ""


def matches(record: dict[str, Any], task: Task, core: Core) -> bool:
    """Whether a cells.jsonl record is a cell of ``core`` on ``task``."""
    return (record.get("task") == task.env
            and all(record.get(name) == value for name, value in task.settings.items())
            and record.get("core") == core.name and record.get("variant", "") == core.variant
            and record.get("algo") == core.algo)  # fmt: skip


def threads_flag(record: dict[str, Any]) -> int | None:
    """The ``--threads`` a record's cell was run with (None: torch's choice)."""
    return record["threads"] if record.get("threads_given") else None


def command_text(argv: Sequence[str] | None) -> str | None:
    return None if argv is None else shlex.join(["python", *argv])


# -- the records ---------------------------------------------------------------------------------
def read_records(path: Path) -> list[dict[str, Any]]:
    """The finished cells of ``path`` (none if it does not exist); a line that is not JSON (a
    write cut short) is skipped with a warning."""
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"warning: {path}:{number} is not JSON; skipped", file=sys.stderr)
    return records


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one line, in one write, flushed to disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size and os.pread(fd, 1, os.fstat(fd).st_size - 1) != b"\n":
            line = b"\n" + line  # after a line cut short, start on a line of our own
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def downsample(rows: list[dict[str, float]], points: int = CURVE_POINTS) -> list[dict[str, Any]]:
    """At most ``points`` evenly spaced rows (the last one kept) of global_step, wall_time,
    success_rate and mem_alive_mean; NaN becomes null."""
    if len(rows) > points:
        step = (len(rows) - 1) / (points - 1)
        rows = [rows[round(index * step)] for index in range(points)]

    def number(value: Any, digits: int) -> float | None:
        value = float(value) if value not in (None, "") else math.nan
        return round(value, digits) if math.isfinite(value) else None

    return [{"global_step": int(float(row["global_step"])),
             "wall_time": number(row.get("wall_time"), 1),
             "success_rate": number(row.get("success_rate"), 4),
             "mem_alive_mean": number(row.get("mem_alive_mean"), 2)} for row in rows]  # fmt: skip


def git_state() -> dict[str, Any]:
    """The commit of the tree that runs (and whether tracked files outside docs/ differ)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs")
    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(status),
            "date": utc_now()}  # fmt: skip


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


_default_threads: list[int] = []


def default_threads() -> int:
    """The threads torch uses when not told (as in a fresh ``python train_rl.py``): asked of a
    fresh interpreter, since this process may have set its own."""
    if not _default_threads:
        probe = "import torch; print(torch.get_num_threads())"
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                              check=True)  # fmt: skip
        _default_threads.append(int(done.stdout.strip()))
    return _default_threads[0]


def make_record(cell: Cell, run_dir: Path, harness: dict[str, Any], budget: int) -> dict[str, Any]:
    """The cells.jsonl line of a cell whose run and evaluation finished."""
    sb3 = cell.core.name == "sb3"
    evaluation = json.loads((run_dir / ("summary.json" if sb3 else "eval.json")).read_text())
    if sb3:
        with open(run_dir / "curve.csv", newline="") as handle:
            rows: list[dict[str, Any]] = list(csv.DictReader(handle))
        device, memory_size = "cpu", None
    else:
        run = RunDir(run_dir)
        rows = run.read_metrics()
        config = run.config()
        device, memory_size = config.run.device, config.policy_kwargs.get("memory_size")
    score_name = evaluation.get("score") or "success_rate"
    score = (evaluation["success_rate"] if score_name == "success_rate"
             else evaluation["counters"][score_name])  # fmt: skip
    measured = evaluation.get(cell.task.bar.metric)
    commits = harness["commits"]
    return {
        "cell": cell.id,
        "task": cell.task.env,
        **cell.task.settings,
        "core": cell.core.name,
        "variant": cell.core.variant,
        "algo": cell.core.algo,
        "seed": cell.seed,
        "memory_size": memory_size,
        "threads": cell.threads if cell.threads is not None else default_threads(),
        "threads_given": cell.threads is not None,
        "device": device,
        "command": harness["command"],
        "score_name": score_name,
        "score": score,
        "oracle_share": evaluation.get("oracle_share"),
        "success_rate": evaluation["success_rate"],
        "mem_alive_mean": evaluation.get("mem_alive_mean"),
        "episodes": evaluation.get("episodes"),
        "steps": int(evaluation["checkpoint"]["global_step"]),
        "wall_s": round(float(evaluation["checkpoint"]["wall_time"]), 1),
        "solved": measured is not None and measured >= cell.task.bar.threshold,
        "bar": cell.task.bar.text,
        "budget_steps": budget,
        "commit": commits[0]["commit"],
        "dirty": any(entry["dirty"] for entry in commits),
        "resumed_commits": [entry["commit"] for entry in commits[1:]],
        "date": utc_now(),
        "curve": downsample(rows),
    }


# -- running cells -------------------------------------------------------------------------------
class HarnessError(RuntimeError):
    """A cell the harness cannot run as declared (the message says why and what to do)."""


def read_harness(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "harness.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_harness(run_dir: Path, harness: dict[str, Any]) -> None:
    atomic_write_bytes(run_dir / "harness.json", (json.dumps(harness, indent=2) + "\n").encode())


def checkpoint_step(run_dir: Path) -> int | None:
    """The global step of a train_rl run's latest checkpoint (None without one)."""
    path = run_dir / "checkpoints" / "latest.pt"
    if not path.is_file():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def run_state(cell: Cell, run_dir: Path, command: dict[str, Any]) -> str:
    """What a cell's run directory needs: ``new`` (nothing resumable there), ``resume``,
    ``evaluate`` (trained) or ``record`` (trained and evaluated). Raises HarnessError for a
    directory the harness did not make, or one made by another command."""
    if not run_dir.exists():
        return "new"
    harness = read_harness(run_dir)
    if harness is None:
        if any(run_dir.iterdir()):
            raise HarnessError(f"{run_dir} was not made by this harness (no harness.json); "
                               "move it away to run the cell")  # fmt: skip
        return "new"
    if harness["command"]["train"] != command["train"]:
        raise HarnessError(f"{run_dir} holds a run of another command "
                           f"({harness['command']['train']}; the grid now says "
                           f"{command['train']}): move it away to run the cell again")  # fmt: skip
    if cell.core.name == "sb3":
        if (run_dir / "summary.json").exists():
            return "record"
        return "resume" if (run_dir / "checkpoint.zip").exists() else "new"
    if harness.get("evaluated"):
        return "record"
    if harness.get("trained"):
        return "evaluate"
    step = checkpoint_step(run_dir)
    if step is None:
        return "new"
    # The marker is written once train_rl.py exits 0; a run at its budget ended without it.
    total = RunDir(run_dir).config().learner.total_steps
    return "evaluate" if step >= total else "resume"


def training_argv(cell: Cell, state: str, run_dir: Path, train: list[str]) -> list[str]:
    """The command that trains a cell in ``state`` ``new`` or ``resume``."""
    if state == "new":
        return train
    if cell.core.name == "sb3":
        return [*train, "--resume"]
    threads = ["--threads", str(cell.threads)] if cell.threads is not None else []
    return ["train_rl.py", "--resume", shown_path(run_dir), *threads]


def execute(argv: Sequence[str]) -> int:
    """Run ``python argv`` from the repository root, its output on ours."""
    print(f"$ {command_text(argv)}", flush=True)
    return subprocess.run([sys.executable, *argv], cwd=ROOT).returncode


def run_cell(cell: Cell, planner: Planner, results: Path, train: list[str],
             evaluate: list[str] | None) -> bool:  # fmt: skip
    """Train (or resume), evaluate and record one cell; whether it finished."""
    run_dir = planner.runs_root / cell.id
    command = {"train": command_text(train), "evaluate": command_text(evaluate)}
    state = run_state(cell, run_dir, command)
    if state == "new":
        if run_dir.exists():
            shutil.rmtree(run_dir)  # only a start with no checkpoint: nothing to keep
        run_dir.mkdir(parents=True)
        harness = {"cell": cell.id, "command": command, "commits": [git_state()]}
        write_harness(run_dir, harness)
    else:
        harness = read_harness(run_dir) or {}
    if state == "resume":
        harness["commits"].append(git_state())
        write_harness(run_dir, harness)
    if state in ("new", "resume"):
        status = execute(training_argv(cell, state, run_dir, train))
        if status != 0:
            print(f"cell {cell.id}: training exited with status {status}", file=sys.stderr)
            return False
        harness["trained"] = True
        write_harness(run_dir, harness)
    if state != "record" and evaluate is not None:
        status = execute(evaluate)
        if status != 0:
            print(f"cell {cell.id}: evaluation exited with status {status}", file=sys.stderr)
            return False
        harness["evaluated"] = True
        write_harness(run_dir, harness)
    record = make_record(cell, run_dir, harness, planner.budget(cell.task))
    append_record(results, record)
    planner.records.append(record)
    print(f"cell {cell.id}: score {record['score']:.4g}, solved {record['solved']}; "
          f"appended to {shown_path(results)}", flush=True)  # fmt: skip
    return True


def run(args: argparse.Namespace, tasks: Sequence[Task] = TASKS,
        cores: Sequence[Core] = CORES) -> int:  # fmt: skip
    """The ``run`` command: the selected cells, one at a time (or their plan)."""
    results, runs_root = Path(args.results), Path(args.runs_root)
    planner = Planner(read_records(results), runs_root, cores)
    cells = [cell for cell in grid_cells(tasks, cores, args.threads)
             if (not args.cells or any(fnmatch.fnmatch(cell.id, p) for p in args.cells))
             and (not args.seeds or cell.seed in args.seeds)]  # fmt: skip
    if not cells:
        chosen = [f"--cells {' '.join(args.cells)}" if args.cells else "",
                  f"--seeds {' '.join(map(str, args.seeds))}" if args.seeds else ""]
        raise HarnessError(f"no declared cell matches {' '.join(filter(None, chosen))}")
    print(f"{len(cells)} cells; results in {shown_path(results)}, runs in "
          f"{shown_path(runs_root)}", flush=True)  # fmt: skip
    failed, waiting = [], []
    for index, cell in enumerate(cells, start=1):
        done = {record["cell"] for record in planner.records}
        head = f"[{index}/{len(cells)}] {cell.id}"
        reason = cell.core.reason_not_run(cell.task)
        if cell.id in done or reason:
            print(f"{head}: {'done' if cell.id in done else 'not run: ' + reason}", flush=True)
            continue
        train, evaluate, note = planner.commands(cell)
        if train is None:
            waiting.append(cell.id)
            print(f"{head}: {note}", flush=True)
            continue
        if args.dry_run:
            command = {"train": command_text(train), "evaluate": command_text(evaluate)}
            state = run_state(cell, runs_root / cell.id, command)
            print(f"{head}: {state}\n    {command['train']}", flush=True)
            if evaluate is not None:
                print(f"    {command['evaluate']}", flush=True)
            continue
        print(f"{head}: running", flush=True)
        if not run_cell(cell, planner, results, train, evaluate):
            failed.append(cell.id)
    if failed:
        print(f"failed: {', '.join(failed)} (their run directories are kept; run again to "
              "resume them)", file=sys.stderr)  # fmt: skip
    if waiting and not args.dry_run:
        print(f"waiting: {', '.join(waiting)}", flush=True)
    return 1 if failed else 0


# -- statistics ------------------------------------------------------------------------------------
T_95 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
        2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
        2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)  # fmt: skip
"""Two-sided 95 % quantiles of Student's t with 1..30 degrees of freedom."""
Z_95 = 1.959963984540054


def t_quantile_95(df: int) -> float:
    """Two-sided 95 % quantile of Student's t with ``df`` degrees of freedom (above 30, the
    Cornish-Fisher expansion around the normal quantile, within 1e-4)."""
    if df <= len(T_95):
        return T_95[df - 1]
    z = Z_95
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))  # fmt: skip


def mean_ci(values: Sequence[float]) -> tuple[float, float | None, float | None]:
    """The mean of ``values`` and its 95 % t-interval (None with fewer than 2 values)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None
    half = t_quantile_95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


# -- the page --------------------------------------------------------------------------------------
@dataclass
class Row:
    """One line of a task's table: a core's cells at one ``--threads``."""

    task: Task
    core: Core
    threads: int | None
    records: list[dict[str, Any]]


def table_rows(task: Task, cores: Sequence[Core], records: list[dict[str, Any]]) -> list[Row]:
    rows = []
    for core in cores:
        if core.tasks is not None and task.label not in core.tasks:
            continue
        mine = sorted((r for r in records if matches(r, task, core)),
                      key=lambda r: (threads_flag(r) or 0, r["seed"], r["cell"]))  # fmt: skip
        flags = sorted({threads_flag(r) for r in mine}, key=lambda flag: flag or 0)
        rows += [Row(task, core, flag, [r for r in mine if threads_flag(r) == flag])
                 for flag in flags] or [Row(task, core, None, [])]  # fmt: skip
    return rows


def score_of(record: dict[str, Any]) -> float:
    """The page's score: the share of the oracle where the task has one, else success."""
    share = record.get("oracle_share")
    return share if share is not None else record["success_rate"]


def steps_text(steps: float) -> str:
    return f"{steps / 1e6:.2f}M" if steps >= 1e5 else f"{steps:,.0f}"


def wall_text(seconds: float) -> str:
    if seconds < 600:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3 * 3600 else f"{seconds / 3600:.1f} h"


def command_template(record: dict[str, Any]) -> str:
    """The record's commands with its seed as S and its run directory as RUN."""
    command = record["command"]
    texts = [command["train"]] + ([command["evaluate"]] if command.get("evaluate") else [])
    out = []
    for text in texts:
        words = shlex.split(text)
        for index, word in enumerate(words):
            if index and words[index - 1] == "--seed":
                words[index] = "S"
            elif Path(word).name == record["cell"]:
                words[index] = "RUN"
        out.append(" ".join(words))
    return "`" + "`, then `".join(out) + "`"


def row_cells(row: Row, glance: bool = False) -> list[str]:
    """A row's table cells (or, with ``glance``, its short form for the summary table)."""
    core, records = row.core, row.records
    declared = len(core.seeds)
    if not records:
        reason = core.reason_not_run(row.task)
        because = f": {reason}" if reason else ""
        if glance:
            return [f"not run{because}"]
        return [row_title(row), "", f"not run (0 of {declared} seeds){because}", *[""] * 5]
    solved = [r for r in records if r["solved"]]
    count = f"{len(solved)} / {len(records)}"
    if len(records) < declared:
        count += f" (of {declared})"
    mean, low, high = mean_ci([score_of(r) for r in records])
    score = f"{mean:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else "")
    if glance:
        return [f"{count} solved, {mean:.3f}"]
    if solved:
        steps = steps_text(statistics.fmean(r["steps"] for r in solved))
        wall = wall_text(statistics.fmean(r["wall_s"] for r in solved))
        if len(solved) < len(records):
            steps, wall = f"{steps} ({len(solved)} solved)", f"{wall} ({len(solved)} solved)"
    else:
        budget = max(r["budget_steps"] for r in records)
        steps, wall = f"not solved at budget ({steps_text(budget)})", "not solved at budget"
    alive = [r["mem_alive_mean"] for r in records if r.get("mem_alive_mean") is not None]
    memory = f"{statistics.fmean(alive):.1f}" if alive else "—"
    threads = sorted({r["threads"] for r in records})
    threads_text = "/".join(map(str, threads)) + (
        f" (--threads {row.threads})" if row.threads is not None else " (torch's choice)")
    templates = sorted({command_template(r) for r in records})
    return [row_title(row), threads_text, count, score, steps, wall, memory,
            "; ".join(templates)]  # fmt: skip


def row_title(row: Row) -> str:
    windows = sorted({r["memory_size"] for r in row.records if r.get("memory_size")})
    shown = f" (M = {', '.join(map(str, windows))})" if windows else ""
    return row.core.title + shown


def claim_text(records: list[dict[str, Any]], tasks: Sequence[Task],
               cores: Sequence[Core]) -> str:  # fmt: skip
    """Whether the paper's claim holds on corridor 1000 at equal memory, from the cells."""
    task = next((t for t in tasks if t.env == "corridor" and t.settings == {"length": 1000}), None)
    expire = next((c for c in cores if c.name == "expire_span" and c.algo == "ppo"), None)
    trxl = next((c for c in cores if c.name == "trxl-equal-memory"), None)
    if task is None or expire is None or trxl is None:
        return "Not part of this grid."
    es = [r for r in records if matches(r, task, expire)]
    tx = [r for r in records if matches(r, task, trxl)]
    es_seeds, tx_seeds = {r["seed"] for r in es}, {r["seed"] for r in tx}
    if not (set(expire.seeds) <= es_seeds and set(trxl.seeds) <= tx_seeds):
        return (f"**Not yet measured**: {len(es_seeds & set(expire.seeds))} of "
                f"{len(expire.seeds)} Expire-Span seeds and {len(tx_seeds & set(trxl.seeds))} "
                f"of {len(trxl.seeds)} Transformer-XL (equal memory) seeds have run.")  # fmt: skip
    es_solved, tx_solved = sum(r["solved"] for r in es), sum(r["solved"] for r in tx)
    need = math.ceil(0.8 * len(es))  # the preset's robustness bar: 4 of 5 seeds
    windows = sorted({r["memory_size"] for r in tx})
    facts = (f"Expire-Span (the preset) meets the bar ({task.bar.text}) in {es_solved} of "
             f"{len(es)} runs with {statistics.fmean(r['mem_alive_mean'] for r in es):.1f} "
             f"memories alive on average; Transformer-XL with a window of "
             f"{', '.join(map(str, windows))} (equal memory) in {tx_solved} of {len(tx)}, "
             f"mean success {statistics.fmean(r['success_rate'] for r in tx):.3f}.")  # fmt: skip
    if es_solved >= need and tx_solved == 0:
        return f"**Holds.** {facts}"
    why = []
    if es_solved < need:
        why.append(f"Expire-Span meets the bar in fewer than {need} of {len(es)} runs")
    if tx_solved:
        why.append("Transformer-XL at equal memory meets it too")
    return f"**Does not hold**: {' and '.join(why)}. {facts}"


def task_section(task: Task, rows: list[Row], plot: Path | None, page: Path) -> list[str]:
    records = [r for row in rows for r in row.records]
    score = ("share of the oracle's score" if task.env in envs.TASKS
             else "success rate (no oracle)")  # fmt: skip
    lines = [f"## {task.title}", "",
             f"Solved: {task.bar.text}, over {task.episodes} evaluation episodes "
             f"(`evaluate.py --episodes {task.episodes} --num-envs {task.num_envs}`)."]  # fmt: skip
    budgets = sorted({r["budget_steps"] for r in records})
    if budgets:
        source = "set by the grid" if task.total_steps else "the Expire-Span preset's"
        lines[-1] += (f" Budget: {', '.join(f'{b:,}' for b in budgets)} env steps for every "
                      f"core ({source}).")  # fmt: skip
    lines += ["", f"| core | threads | seeds solved / run | {score}, mean [95 % CI] | env steps "
              "to the stop | wall time to the stop | memories alive | command |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    lines += ["| " + " | ".join(row_cells(row)) + " |" for row in rows]
    if plot is not None:
        link = os.path.relpath(plot, page.parent)
        lines += ["", f"![learning curves on {task.title}]({link})"]
    published = [p for p in PUBLISHED if p["task"] == task.label]
    if task.env not in ("corridor", "portal", "instruction"):
        lines += ["", "Published figures:"]
        if published:
            lines += ["", "| method | figure | budget | setting | source |",
                      "|---|---|---|---|---|"]  # fmt: skip
            lines += [f"| {p['method']} | {p['figure']} | {p['budget']:,} | {p['setting']} | "
                      f"<{p['source']}> |" for p in published]  # fmt: skip
        else:
            lines[-1] += " no published figure was found for this task (see below)."
    return [*lines, ""]


def draw_curves(task: Task, rows: list[Row], path: Path) -> Path | None:
    """Learning curves of every core on ``task``: success against env steps and against wall
    time, and memories alive against env steps; one colour per core, one line per cell."""
    drawn = [row for row in rows if row.records]
    if not drawn:
        return None
    colors = colormaps["tab10"].colors
    figure = Figure(figsize=(15, 4.2), layout="constrained")
    axes = figure.subplots(1, 3)
    panels = (("global_step", "success_rate", "env steps", "success rate (training)"),
              ("wall_time", "success_rate", "wall time (s)", "success rate (training)"),
              ("global_step", "mem_alive_mean", "env steps",
               "memories alive (training)"))  # fmt: skip
    for axis, (x_key, y_key, x_label, y_label) in zip(axes, panels, strict=True):
        for index, row in enumerate(drawn):
            label = row_title(row) + (f", --threads {row.threads}" if row.threads else "")
            style = "-" if row.threads is None else "--"
            for number, record in enumerate(row.records):
                points = [(p[x_key], p[y_key]) for p in record["curve"]
                          if p.get(x_key) is not None and p.get(y_key) is not None]  # fmt: skip
                if not points:
                    continue
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, style, color=colors[index % len(colors)], linewidth=1,
                          alpha=0.8, label=label if number == 0 else None)  # fmt: skip
        axis.set_xlabel(x_label, fontsize=8)
        axis.set_ylabel(y_label, fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    figure.suptitle(f"{task.title}: one line per seed", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, metadata={"Software": None})  # no version: reproducible bytes
    return path


INTRO = (
    "Each cell is one seed of one core on one task: a `train_rl.py` run and its greedy "
    "evaluation by `evaluate.py` (sb3-contrib: `benchmarks/sb3_baseline.py`, which does both). "
    "Every core on a task trains for the same step budget, the Expire-Span preset's. Scores "
    "are means over seeds with 95 % t-intervals; steps and wall time to the stop are means over "
    "the seeds that meet the task's bar. Transformer-XL's equal-memory window is the mean "
    "memories alive of the task's Expire-Span cells, rounded up; its covering window is the "
    "corridor's length (the oracle turns at the junction after that many steps), a Portal trip "
    "through every room, Instruction's longest delay between instructions, or a gymnasium "
    "env's time limit."
)


def glance_table(tasks: Sequence[Task], cores: Sequence[Core],
                 table: dict[str, list[Row]]) -> list[str]:  # fmt: skip
    """One line per task, one column per core: seeds solved and the mean score."""
    titles = list(dict.fromkeys(core.title for core in cores))
    lines = ["| task | " + " | ".join(titles) + " |", "|---" * (len(titles) + 1) + "|"]
    for task in tasks:
        cells: dict[str, list[str]] = {}
        for row in table[task.label]:
            suffix = f" (--threads {row.threads})" if row.threads is not None else ""
            cells.setdefault(row.core.title, []).append(row_cells(row, glance=True)[0] + suffix)
        shown = ["<br>".join(cells.get(title, ["—"])) for title in titles]
        lines.append(f"| {task.title} | " + " | ".join(shown) + " |")
    return lines


def cells_footer(records: list[dict[str, Any]], shown: int) -> list[str]:
    """Where the cells come from (commits, dates), and how many belong to no table."""
    if not records:
        return ["None has run yet."]
    commits = sorted({r["commit"] for r in records if r.get("commit")})
    dates = sorted(r["date"] for r in records)
    lines = [f"Run from {len(commits)} commit(s) ({', '.join(c[:10] for c in commits)}), "
             f"finished between {dates[0]} and {dates[-1]}; "
             f"{sum(bool(r.get('dirty')) for r in records)} with tracked files changed from "
             "their commit."]  # fmt: skip
    if len(records) > shown:
        lines.append(f"{len(records) - shown} cell(s) in the file belong to no declared task "
                     "and core (not shown).")  # fmt: skip
    return lines


def render_page(records: list[dict[str, Any]], page: Path, results: Path,
                tasks: Sequence[Task] = TASKS, cores: Sequence[Core] = CORES) -> str:  # fmt: skip
    """The page's markdown from ``records`` (read from ``results``); its plots are written
    beside ``results``."""
    unique: dict[str, dict[str, Any]] = {}
    for record in records:
        unique.setdefault(record["cell"], record)  # a cell appended twice: the first line counts
    records = list(unique.values())
    table = {task.label: table_rows(task, cores, records) for task in tasks}
    lines = ["# Results: Expire-Span against Transformer-XL, LSTM and sb3-contrib", "",
             f"Generated by `python benchmarks/results.py report` from "
             f"`{os.path.relpath(results, page.parent)}` ({len(records)} cells); not edited by "
             f"hand. {INTRO}", "",
             "## The paper's claim: corridor 1000 at equal memory", "",
             claim_text(records, tasks, cores), "", "## At a glance", "",
             *glance_table(tasks, cores, table), ""]  # fmt: skip
    for task in tasks:
        plot = draw_curves(task, table[task.label], results.parent / f"{task.label}.png")
        lines += task_section(task, table[task.label], plot, page)
    lines += ["## Where published figures were looked for", "",
              "Each gymnasium task's section lists the published figures found for it.", "",
              *(f"- {name} (<{url}>): {holds}" for name, url, holds in PUBLISHED_SEARCHED),
              "", "## The cells", ""]  # fmt: skip
    shown = sum(len(row.records) for rows in table.values() for row in rows)
    return "\n".join([*lines, *cells_footer(records, shown)]) + "\n"


def report(args: argparse.Namespace, tasks: Sequence[Task] = TASKS,
           cores: Sequence[Core] = CORES) -> int:  # fmt: skip
    """The ``report`` command: docs/results.md and its plots from cells.jsonl."""
    results, page = Path(args.results), Path(args.page)
    text = render_page(read_records(results), page, results, tasks, cores)
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(text)
    print(f"wrote {shown_path(page)} and its plots in {shown_path(results.parent)}")
    return 0


# -- command line ----------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``error: ...``, exit status 2)."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python benchmarks/results.py", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run the grid's cells, one at a time")
    run_parser.add_argument("--cells", nargs="+", metavar="PATTERN",
                            help="only cells whose id matches one of these shell patterns "
                                 "(e.g. 'corridor100-*')")  # fmt: skip
    run_parser.add_argument("--seeds", nargs="+", type=int, metavar="S", help="only these seeds")
    run_parser.add_argument("--threads", type=int, default=None,
                            help="--threads of train_rl.py and evaluate.py, part of the cell "
                                 "ids (default: torch's choice, recorded)")  # fmt: skip
    run_parser.add_argument("--dry-run", action="store_true",
                            help="print each cell's state and commands; run nothing")
    run_parser.add_argument("--runs-root", default=str(RUNS_ROOT),
                            help=f"where the run directories go (default: {shown_path(RUNS_ROOT)})")
    report_parser = commands.add_parser("report", help="write the page from the cells")
    report_parser.add_argument("--page", default=str(PAGE),
                               help=f"the page (default: {shown_path(PAGE)})")
    for sub in (run_parser, report_parser):
        sub.add_argument("--results", default=str(RESULTS),
                         help=f"the cells file; plots go beside it (default: "
                              f"{shown_path(RESULTS)})")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None, tasks: Sequence[Task] = TASKS,
         cores: Sequence[Core] = CORES) -> int:  # fmt: skip
    """Run the CLI; returns the process exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "run" and args.threads is not None and args.threads < 1:
        print(f"error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    try:
        if args.command == "run":
            return run(args, tasks, cores)
        return report(args, tasks, cores)
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; run again to resume the cell", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
