"""The results page: a declared grid of training runs against baselines, run cell by cell.

    python benchmarks/results.py run [--cells PATTERN ...] [--seeds S ...] [--threads N] [--dry-run]
    python benchmarks/results.py report

The grid is task x core x learner x seed; a cell is one seed of one core on one task, a
``train_rl.py`` run and its evaluation (sb3-contrib: ``benchmarks/sb3_baseline.py``), every
core on a task at the same step budget. ``run`` goes through the cells one at a time,
skipping those already in ``docs/results/cells.jsonl``, resuming interrupted ones and
appending one JSON line per finished cell; ``report`` writes ``docs/results.md`` and its
plots from that file alone, byte for byte the same each time.

This file is the command line; the harness is three modules beside it:

- ``results_grid.py``: the grid as declared (tasks, cores, cells), each cell's commands and
  step budget, and how ``cells.jsonl``'s lines are matched to cells;
- ``results_run.py``: running the cells (skip, resume, record);
- ``results_page.py``: the page (tables, 95 % t-intervals, the paper's claim, plots).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agents.cli import ArgumentParser

# isort: split
# The harness's modules, beside this file (a script's folder is on sys.path).
from results_grid import (
    CORES,
    PAGE,
    RESULTS,
    RUNS_ROOT,
    TASKS,
    Core,
    Task,
    exit_status,
    shown_path,
)
from results_page import report
from results_run import run


def build_parser() -> argparse.ArgumentParser:
    """The ``run`` and ``report`` commands and their flags."""
    parser = ArgumentParser(prog="python benchmarks/results.py",
                            description=__doc__.splitlines()[0])  # fmt: skip
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
    command = run if args.command == "run" else report
    return exit_status(lambda: command(args, tasks, cores))


if __name__ == "__main__":
    sys.exit(main())
