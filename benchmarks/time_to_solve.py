"""Time to solve: wall time and env steps from the command to the stop, Expire-Span's preset.

    python benchmarks/time_to_solve.py [--tasks corridor100 corridor1000 portal] [--seeds 1 2 3]
                                       [--threads N] [--summary-only]

Each row is one task: ``python train_rl.py --env TASK [task flags] --seed S`` with its preset,
as the README gives it (with ``--threads N`` only where asked), one seed at a time, each run
followed by its greedy evaluation. The runs are the Expire-Span preset cells of the results
grid (``results.py``): a seed already in ``docs/results/cells.jsonl`` is not run again, an
interrupted one is resumed, and every finished one is on the results page too.
``--summary-only`` runs nothing and summarises the cells already there.

It prints one JSON line: per task, each seed's wall time and env steps to the stop, their
median and range, the seeds that meet the task's bar, and what the same step budget gave the
grid's other cores there (Transformer-XL, LSTM, sb3-contrib RecurrentPPO: seeds solved and mean
score, from their cells, with the threads they ran with). ``bars`` checks corridor 1000 (every
seed solved, median <= 120 s, none over 300 s) and corridor 10,000 (solved, <= 1 % of the
length alive, within 60 min), each ``null`` until its seeds have run. Wall times are the
runs' own training clocks; a run shares nothing only when nothing else runs on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from agents.cli import ArgumentParser

# isort: split
# The harness's modules, beside this file (a script's folder is on sys.path).
from results_grid import (
    CORES,
    RESULTS,
    RUNS_ROOT,
    TASKS,
    Core,
    Task,
    exit_status,
    matches,
    preset_core,
    read_records,
    shown_path,
    threads_flag,
)
from results_page import command_template, score_of
from results_run import run

DEFAULT_TASKS = ("corridor100", "corridor1000", "portal")
DEFAULT_SEEDS = (1, 2, 3)
CORRIDOR1000_MEDIAN_S, CORRIDOR1000_MAX_S = 120.0, 300.0
CORRIDOR10000_S, CORRIDOR10000_ALIVE_SHARE = 3600.0, 0.01


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Each value, their median and range (None for no values)."""
    if not values:
        return {"each": [], "median": None, "min": None, "max": None}
    return {"each": list(values), "median": statistics.median(values), "min": min(values),
            "max": max(values)}  # fmt: skip


def task_row(task: Task, cores: Sequence[Core], records: list[dict[str, Any]],
             seeds: Sequence[int], threads: int | None) -> dict[str, Any]:  # fmt: skip
    """One task's row: the preset's seeds at ``threads`` and the other cores at the budget."""
    preset = preset_core(cores)
    mine = sorted((r for r in records if matches(r, task, preset) and r["seed"] in seeds
                   and threads_flag(r) == threads), key=lambda r: r["seed"])  # fmt: skip
    baselines = []
    for core in cores:
        if core is preset or not core.runs_on(task):
            continue
        theirs = [r for r in records if matches(r, task, core)]
        for flag in sorted({threads_flag(r) for r in theirs}, key=lambda flag: flag or 0):
            ran = [r for r in theirs if threads_flag(r) == flag]
            baselines.append({
                "core": core.title, "threads": flag, "seeds": len(ran),
                "solved": sum(r["solved"] for r in ran),
                "score_mean": round(statistics.fmean(score_of(r) for r in ran), 4),
                "budget_steps": ran[0]["budget_steps"],
            })  # fmt: skip
    return {
        "task": task.label,
        "command": command_template(mine[0]) if mine else None,
        "threads": threads,
        "seeds_asked": list(seeds),
        "seeds_run": [r["seed"] for r in mine],
        "solved": sum(r["solved"] for r in mine),
        "bar": task.bar.text,
        "wall_s": spread([r["wall_s"] for r in mine]),
        "steps": spread([r["steps"] for r in mine]),
        "score": [round(score_of(r), 4) for r in mine],
        "mem_alive_mean": [r["mem_alive_mean"] for r in mine],
        "loads": [r.get("load") for r in mine],
        "baselines_at_budget": baselines,
    }


def bars(rows: dict[str, dict[str, Any]]) -> dict[str, bool | None]:
    """The time-to-solve bars on the rows that have all their seeds (None: not yet run)."""
    result: dict[str, bool | None] = {}
    row = rows.get("corridor1000")
    if row is not None:
        wall = row["wall_s"]
        result["corridor1000_median_120s_none_over_300s"] = (
            None if len(row["seeds_run"]) < len(row["seeds_asked"])
            else row["solved"] == len(row["seeds_run"]) and wall["median"] <= CORRIDOR1000_MEDIAN_S
            and wall["max"] <= CORRIDOR1000_MAX_S)  # fmt: skip
    row = rows.get("corridor10000")
    if row is not None:
        met = [wall <= CORRIDOR10000_S and alive <= CORRIDOR10000_ALIVE_SHARE * 10000
               for wall, alive in zip(row["wall_s"]["each"], row["mem_alive_mean"], strict=True)]
        result["corridor10000_solved_within_60min"] = (
            None if not row["seeds_run"] else row["solved"] == len(met) and all(met))
    return result


def summary(records: list[dict[str, Any]], tasks: Sequence[Task], cores: Sequence[Core],
            seeds: Sequence[int], threads: int | None) -> dict[str, Any]:  # fmt: skip
    """The JSON line."""
    rows = {task.label: task_row(task, cores, records, seeds, threads) for task in tasks}
    return {"benchmark": "time_to_solve", "rows": list(rows.values()), "bars": bars(rows)}


def build_parser(tasks: Sequence[Task]) -> argparse.ArgumentParser:
    """The command line."""
    parser = ArgumentParser(prog="python benchmarks/time_to_solve.py",
                            description=__doc__.splitlines()[0])  # fmt: skip
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS),
                        choices=[task.label for task in tasks], metavar="TASK",
                        help=f"the rows, grid task labels (default: {' '.join(DEFAULT_TASKS)}; "
                             f"also: corridor10000)")  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS), metavar="S",
                        help="seeds of each row (default: 1 2 3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="--threads of the runs (default: none given, torch's choice)")
    parser.add_argument("--summary-only", action="store_true",
                        help="run nothing; summarise the cells already in the results file")
    parser.add_argument("--runs-root", default=str(RUNS_ROOT),
                        help=f"where the run directories go (default: {shown_path(RUNS_ROOT)})")
    parser.add_argument("--results", default=str(RESULTS),
                        help=f"the cells file (default: {shown_path(RESULTS)})")
    return parser


@contextlib.contextmanager
def progress_on_stderr() -> Iterator[None]:
    """Send the runs' progress (the harness's and its subprocesses') to stderr, so that stdout
    carries the JSON line alone."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)  # the subprocesses'
    try:
        with contextlib.redirect_stdout(sys.stderr):  # this process's
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main(argv: Sequence[str] | None = None, tasks: Sequence[Task] = TASKS,
         cores: Sequence[Core] = CORES) -> int:  # fmt: skip
    """Run the rows' missing seeds, then print the JSON line; returns the exit status."""
    args = build_parser(tasks).parse_args(argv)
    if args.threads is not None and args.threads < 1:
        print(f"error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    preset = preset_core(cores)
    if preset is None:
        print("error: the grid declares no Expire-Span preset core", file=sys.stderr)
        return 2
    if any(seed not in preset.seeds for seed in args.seeds):
        print(f"error: --seeds {' '.join(map(str, args.seeds))}: the grid's Expire-Span cells "
              f"have seeds {' '.join(map(str, preset.seeds))}", file=sys.stderr)
        return 2
    by_label = {task.label: task for task in tasks}
    chosen = [by_label[label] for label in dict.fromkeys(args.tasks)]  # in the order asked

    def run_rows() -> int:  # one task at a time (the grid would order them by stage)
        status = 0
        with progress_on_stderr():
            for task in chosen:
                cells = argparse.Namespace(
                    cells=[f"{task.label}-{preset.key}-s*"], seeds=args.seeds,
                    threads=args.threads, dry_run=False, runs_root=args.runs_root,
                    results=args.results)  # fmt: skip
                status = max(status, run(cells, tasks, cores))
        return status

    status = 0 if args.summary_only else exit_status(run_rows)
    if status in (2, 130):
        return status
    records = read_records(Path(args.results))
    print(json.dumps(summary(records, chosen, cores, args.seeds, args.threads)), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
