"""Running the results grid: one cell at a time, skipped when done, resumed when interrupted,
each finished cell appended to ``cells.jsonl``.

``run`` goes through the grid in order, one cell at a time: a cell already in
``docs/results/cells.jsonl`` is skipped; a cell whose run directory holds an unfinished run is
resumed (``train_rl.py --resume``); the rest are started. The harness writes ``harness.json``
in each run directory (the commands, the commits that ran it, and whether training and
evaluation exited 0); a run whose ``harness.json`` does not say trained, but whose latest
checkpoint has reached its ``--total-steps``, is finished too (one that stopped at its target
in the moment between ``train_rl.py``'s exit and that write is resumed, and trains on until
its target stops it again). Each finished cell appends one JSON line to ``cells.jsonl`` (one
write, flushed and fsynced). ``--threads N`` is passed to ``train_rl.py`` and ``evaluate.py``
and makes other cells (ids ending in ``-threadsN``); without it torch chooses, and the cell
records the count it chose.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from agents.run_dir import RunDir, atomic_write_bytes

# isort: split
# The harness's other modules, beside this file (a script's folder is on sys.path).
from results_grid import (
    CORES,
    ROOT,
    TASKS,
    Cell,
    Core,
    HarnessError,
    Planner,
    Task,
    command_text,
    grid_cells,
    read_records,
    shown_path,
)

CURVE_POINTS = 100
"""Learning-curve points kept per cell."""


# -- the record of a finished cell ----------------------------------------------------------
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
    """The time now, ISO 8601 in UTC to the second."""
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


def machine() -> str:
    """The CPU the runs ran on, and the vector instructions torch used: the same seed and thread
    count give the same run on one kind of CPU, not across kinds."""
    import platform

    import torch

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle
                         if line.startswith("model name"))  # fmt: skip
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__} " \
           f"({torch.backends.cpu.get_cpu_capability()})"


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
        "machine": machine() if device == "cpu" else device,
        "load": round(os.getloadavg()[0], 1),
        "command": harness["command"],
        "score_name": score_name,
        "score": score,
        "oracle_share": evaluation.get("oracle_share"),
        "success_rate": evaluation["success_rate"],
        "mem_alive_mean": evaluation.get("mem_alive_mean"),
        "mem_alive_max": evaluation.get("mem_alive_max"),
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
def read_harness(run_dir: Path) -> dict[str, Any] | None:
    """The run directory's ``harness.json`` (None if the harness has not written one)."""
    path = run_dir / "harness.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_harness(run_dir: Path, harness: dict[str, Any]) -> None:
    """Replace the run directory's ``harness.json`` in one atomic write."""
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


