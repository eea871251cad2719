"""The results page, from ``cells.jsonl`` alone: the paper's claim on corridor 1000 at equal
memory, a summary table, and per task a table of every core (seeds solved, the mean score
with its 95 % t-interval, steps and wall time to the stop, memories alive, the commands) and
its learning curves.

``report`` writes ``docs/results.md`` and ``docs/results/<task>.png`` byte for byte the same
each time from the same cells: nothing is read but the cells file, and the plots carry no
version stamp.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.figure import Figure  # no pyplot: no global backend, nothing opens a window

import envs

# isort: split
# The harness's other modules, beside this file (a script's folder is on sys.path).
from results_grid import CORES, TASKS, Core, Task, matches, read_records, shown_path, threads_flag

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
    """The rows of ``task``'s table: each core that runs on it, one row per ``--threads`` its
    cells ran with (one empty row for a core with no cell yet)."""
    rows = []
    for core in cores:
        if not core.runs_on(task):
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
    """Env steps as the tables show them (``2.50M``, ``12,000``)."""
    return f"{steps / 1e6:.2f}M" if steps >= 1e5 else f"{steps:,.0f}"


def wall_text(seconds: float) -> str:
    """Wall time as the tables show it: seconds, minutes or hours."""
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
        if glance:
            return [f"not run: {reason}" if reason else "not run yet"]
        seeds = f"(0 of {declared} seeds)"
        state = f"not run {seeds}: {reason}" if reason else f"not run yet {seeds}"
        return [row_title(row), "", state, *[""] * 5]
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
    peaks = [r["mem_alive_max"] for r in records if r.get("mem_alive_max") is not None]
    memory = f"{statistics.fmean(alive):.1f}" if alive else "—"
    if peaks:  # what is held at the hardest step (a corridor's junction), not only on average
        memory += f" (peak {max(peaks):.0f})"
    threads = sorted({r["threads"] for r in records})
    threads_text = "/".join(map(str, threads)) + (
        f" (--threads {row.threads})" if row.threads is not None else " (torch's choice)")
    templates = sorted({command_template(r) for r in records})
    return [row_title(row), threads_text, count, score, steps, wall, memory,
            "; ".join(templates)]  # fmt: skip


def row_title(row: Row) -> str:
    """The core's title, with the Transformer-XL windows its cells used."""
    windows = sorted({r["memory_size"] for r in row.records if r.get("memory_size")})
    shown = f" (M = {', '.join(map(str, windows))})" if windows else ""
    return row.core.title + shown


def claim_text(records: list[dict[str, Any]], tasks: Sequence[Task],
               cores: Sequence[Core]) -> str:  # fmt: skip
    """Whether the paper's claim holds on corridor 1000 at equal memory, from the cells run
    as the README's command is typed (torch's default threads; ``--threads`` variants have
    their own rows in the tables)."""
    task = next((t for t in tasks if t.env == "corridor" and t.settings == {"length": 1000}), None)
    expire = next((c for c in cores if c.name == "expire_span" and c.algo == "ppo"), None)
    trxl = next((c for c in cores if c.name == "trxl-equal-memory"), None)
    if task is None or expire is None or trxl is None:
        return "Not part of this grid."
    as_typed = [r for r in records if threads_flag(r) is None]
    es = [r for r in as_typed if matches(r, task, expire)]
    tx = [r for r in as_typed if matches(r, task, trxl)]
    es_seeds, tx_seeds = {r["seed"] for r in es}, {r["seed"] for r in tx}
    if not (set(expire.seeds) <= es_seeds and set(trxl.seeds) <= tx_seeds):
        return (f"**Not yet measured**: {len(es_seeds & set(expire.seeds))} of "
                f"{len(expire.seeds)} Expire-Span seeds and {len(tx_seeds & set(trxl.seeds))} "
                f"of {len(trxl.seeds)} Transformer-XL (equal memory) seeds have run.")  # fmt: skip
    es_solved, tx_solved = sum(r["solved"] for r in es), sum(r["solved"] for r in tx)
    need = math.ceil(0.8 * len(es))  # the preset's robustness bar: 4 of 5 seeds
    windows = sorted({r["memory_size"] for r in tx})
    facts = (f"As typed (torch's default threads), Expire-Span (the preset) meets the bar "
             f"({task.bar.text}) in {es_solved} of "
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
    """A task's section of the page: its bar and budget, its table, its plot and, for a
    gymnasium task, the published figures found for it."""
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

NOT_RUN_YET = (
    '"Not run yet": declared and waiting its turn. The grid is filled over many sittings, '
    "one run at a time on a 2-core CPU; "
    "`python benchmarks/results.py run --cells ID` runs a cell (`--dry-run` lists them with "
    'their commands). "Not run: ..." gives the reason a cell is declared but not run.'
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
             *glance_table(tasks, cores, table), "", NOT_RUN_YET, ""]  # fmt: skip
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

