"""The results grid as declared: its tasks, cores and cells, each cell's commands and step
budget, and how the lines of ``cells.jsonl`` are read and matched to cells.

The grid (`TASKS` x `CORES`) is task x core x learner x seed. A cell is one seed of one core
on one task: a normal ``train_rl.py`` run in ``runs/results/<cell>/`` followed by
``evaluate.py`` (for sb3-contrib, ``benchmarks/sb3_baseline.py``, which trains and
evaluates). Every core on a task trains for the same step budget, the task's Expire-Span
preset's (``learner.total_steps`` of the resolved config). The cores:

- ``expire_span``: the task's preset, exactly the README's command
  (``python train_rl.py --env corridor --length 1000 --seed S``), 5 seeds; on corridor 1000
  also with ``--algo impala``;
- ``trxl-equal-memory``: Transformer-XL whose window is the mean memories alive
  (``mem_alive_mean`` of the evaluation) of the task's Expire-Span cells, rounded up, so
  these cells wait for those;
- ``trxl-equal-reach``: Transformer-XL whose window covers what the task asks to remember:
  the corridor's length (the oracle turns at the junction after ``length`` steps), a Portal
  trip through every room, Instruction's longest delay between instructions, a gymnasium
  env's time limit;
- ``lstm``; ``sb3``: sb3-contrib's RecurrentPPO (`VARIANTS` of ``sb3_baseline.py``).
"""

from __future__ import annotations

import json
import math
import shlex
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym

import envs
from agents.cli import flag_name, parse_args
from agents.resolve import resolve
from agents.run_config import ConfigError
from agents.train_args import TrainArgs

ROOT = Path(__file__).resolve().parent.parent
"""The repository: commands run from it and show paths relative to it."""
RESULTS = ROOT / "docs" / "results" / "cells.jsonl"
PAGE = ROOT / "docs" / "results.md"
RUNS_ROOT = ROOT / "runs" / "results"


class HarnessError(RuntimeError):
    """A cell the harness cannot run as declared (the message says why and what to do)."""


def exit_status(command: Callable[[], int]) -> int:
    """``command()``'s exit status, or 2 with one line for a HarnessError and 130 for
    Ctrl-C (the cell then resumes on the next run)."""
    try:
        return command()
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; run again to resume the cell", file=sys.stderr)
        return 130


def preset_core(cores: Sequence[Core]) -> Core | None:
    """The grid's Expire-Span preset core (PPO), if it declares one."""
    return next((c for c in cores if c.name == "expire_span" and c.algo == "ppo"), None)


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
    cores: tuple[str, ...] | None = None
    """Keys of the only cores that run on this task (None: every core that runs on all)."""


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
        """The core's part of a cell id: name, variant and learner (``sb3-defaults-ppo``)."""
        return "-".join(part for part in (self.name, self.variant, self.algo) if part)

    def runs_on(self, task: Task) -> bool:
        """Whether this core has cells on ``task``."""
        return ((self.tasks is None or task.label in self.tasks)
                and (task.cores is None or self.key in task.cores))  # fmt: skip

    def reason_not_run(self, task: Task) -> str | None:
        """Why this core's cells on ``task`` are declared but not run (None: they run)."""
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
    # The long corridor: the preset alone (its budget is 40M steps; a Transformer-XL window
    # covering it does not fit in memory).
    Task("corridor10000", "corridor", {"length": 10000}, "Corridor, length 10,000",
         CORRIDOR_BAR, episodes=1000, num_envs=200, stage=3, cores=("expire_span-ppo",)),
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
        """``<task>-<core key>-s<seed>[-threads<N>]``: the run directory's name and the
        record's ``cell``."""
        threads = f"-threads{self.threads}" if self.threads is not None else ""
        return f"{self.task.label}-{self.core.key}-s{self.seed}{threads}"


def grid_cells(
    tasks: Sequence[Task] = TASKS, cores: Sequence[Core] = CORES, threads: int | None = None
) -> list[Cell]:
    """Every declared cell, in the order they run."""
    cells = [Cell(task, core, seed, threads) for task in tasks for core in cores
             if core.runs_on(task) for seed in core.seeds]  # fmt: skip
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
    """The task's settings as command-line flags (``["--length", "1000"]``)."""
    return [word for name, value in task.settings.items() for word in (flag_name(name), str(value))]


class Planner:
    """The commands of the grid's cells: budgets and windows from the resolved configs, the
    equal-memory window from the finished Expire-Span cells."""

    def __init__(self, records: list[dict[str, Any]], runs_root: Path = RUNS_ROOT,
                 cores: Sequence[Core] = CORES):  # fmt: skip
        self.records, self.runs_root = records, runs_root
        self.preset_core = preset_core(cores)
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
        """The env steps every core trains for on ``task``: the Expire-Span preset's."""
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


def command_text(argv: Sequence[str] | None) -> str | None:
    """``argv`` as the command line that runs it (None for no command)."""
    return None if argv is None else shlex.join(["python", *argv])


# -- the cells file: its lines read and matched to cells ---------------------------------------
def matches(record: dict[str, Any], task: Task, core: Core) -> bool:
    """Whether a cells.jsonl record is a cell of ``core`` on ``task``."""
    return (record.get("task") == task.env
            and all(record.get(name) == value for name, value in task.settings.items())
            and record.get("core") == core.name and record.get("variant", "") == core.variant
            and record.get("algo") == core.algo)  # fmt: skip


def threads_flag(record: dict[str, Any]) -> int | None:
    """The ``--threads`` a record's cell was run with (None: torch's choice)."""
    return record["threads"] if record.get("threads_given") else None


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

