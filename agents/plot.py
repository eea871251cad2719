"""Plots of runs (matplotlib, headless): learning curves, memory, losses and span pictures.

``python -m agents.plot RUN_DIR [RUN_DIR ...]`` draws from each run's
``metrics.csv``:

- ``learning.png``: success rate and episode return against env steps,
- ``memory.png``: memories alive (mean and max) and mean predicted span against env steps,
- ``losses.png``: the learner's losses and diagnostics,

into ``RUN_DIR/plots/`` for one run, or overlaid (one colour per run, e.g.
Expire-Span against Transformer-XL on one task) into ``--output-dir``
(default ``plots/``) for several.

:func:`plot_span_episode` draws the span picture of one recorded episode (the
RL version of the paper's Figure 8): what the agent saw at the salient steps
(the corridor's cue, an instruction, a new room) and at the end, and under it
each layer's predicted span of every step on a logarithmic axis, the salient
steps marked in their colour, captioned with the salient step's span against
the median of the other steps. ``evaluate.py --video K`` writes one per
recorded episode of an Expire-Span policy.

Shape legend: T steps of an episode, L layers.
"""

from __future__ import annotations

import math
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import tyro
from matplotlib import colormaps
from matplotlib.figure import Figure  # no pyplot: no global backend, nothing opens a window
from minigrid.core.constants import COLORS

from agents.cli import USAGE_ERROR, parse_args
from agents.run_dir import METRIC_COLUMNS, RunDir, RunDirError

# Figure name -> subplots, each a tuple of metric columns drawn on one axis.
FIGURES: dict[str, tuple[tuple[str, ...], ...]] = {
    "learning": (("success_rate",), ("episode_return",)),
    "memory": (("mem_alive_mean", "mem_alive_max"), ("span_mean",)),
    "losses": (
        ("policy_loss",), ("value_loss",), ("entropy",), ("aux_loss",), ("approx_kl",),
        ("clip_fraction",), ("grad_norm",), ("learning_rate",), ("sps",),
    ),
}  # fmt: skip
LINE_STYLES = ("-", "--", ":")
# Axis labels where METRIC_COLUMNS' wording leans on the row's other columns.
YLABELS = {
    "success_rate": "success rate of the episodes ended in each logging interval",
    "episode_return": "mean return of the episodes ended in each logging interval",
}


class PlotError(ValueError):
    """Input that cannot be plotted (the message names it)."""


def read_run(path: str | Path) -> tuple[str, list[dict[str, float]], RunDir]:
    """A run's label (its directory name), metric rows and RunDir; raises PlotError."""
    try:
        run = RunDir.open(path)
        config = run.config()
    except RunDirError as error:
        raise PlotError(str(error)) from None
    rows = run.read_metrics()
    if not rows:
        raise PlotError(f"{run.path} has no metrics yet ({run.metrics_path.name} is missing or "
                        "empty): train it past its first logging interval")  # fmt: skip
    return f"{run.path.name} ({config.policy})", rows, run


def _series(rows: list[dict[str, float]], column: str) -> tuple[np.ndarray, np.ndarray]:
    """(env steps, values) of ``column``, keeping only finite values."""
    steps = np.array([row.get("global_step", math.nan) for row in rows], dtype=float)
    values = np.array([row.get(column, math.nan) for row in rows], dtype=float)
    keep = np.isfinite(steps) & np.isfinite(values)
    return steps[keep], values[keep]


def plot_metrics(
    runs: Sequence[tuple[str, list[dict[str, float]]]], output_dir: Path
) -> list[Path]:
    """Write learning.png, memory.png and losses.png for ``runs`` (label, rows); overlaid."""
    output_dir.mkdir(parents=True, exist_ok=True)
    colors = colormaps["tab10"].colors
    written = []
    for name, panels in FIGURES.items():
        columns = min(len(panels), 3)
        rows_count = math.ceil(len(panels) / columns)
        figure = Figure(figsize=(4.6 * columns, 3.4 * rows_count + 0.6), layout="constrained")
        axes = figure.subplots(rows_count, columns, squeeze=False).flatten()
        for axis, metrics in zip(axes, panels, strict=False):
            drawn = False
            for index, (label, rows) in enumerate(runs):
                for style, metric in zip(LINE_STYLES, metrics, strict=False):
                    steps, values = _series(rows, metric)
                    if len(steps) == 0:
                        continue
                    marker = "o" if len(steps) < 3 else None
                    suffix = f" · {metric}" if len(metrics) > 1 else ""
                    axis.plot(steps, values, style, color=colors[index % len(colors)],
                              marker=marker, label=f"{label}{suffix}")  # fmt: skip
                    drawn = True
            axis.set_title(" / ".join(metrics), fontsize=10)
            axis.set_xlabel("env steps", fontsize=8)
            meaning = YLABELS.get(metrics[0]) or METRIC_COLUMNS.get(metrics[0], "")
            meaning = textwrap.fill(meaning, 48)
            axis.set_ylabel(meaning, fontsize=7)
            axis.tick_params(labelsize=7)
            axis.grid(alpha=0.3)
            if not drawn:
                axis.text(0.5, 0.5, "no data\n(e.g. no memory count for lstm)", ha="center",
                          va="center", transform=axis.transAxes, fontsize=8)  # fmt: skip
            elif len(runs) > 1 or len(metrics) > 1:
                axis.legend(fontsize=7)
        for axis in axes[len(panels) :]:
            axis.set_visible(False)
        figure.suptitle(" vs ".join(label for label, _ in runs), fontsize=9)
        path = output_dir / f"{name}.png"
        figure.savefig(path, dpi=110)
        written.append(path)
    return written


def plot_run_dirs(
    paths: Sequence[str | Path], output_dir: str | Path | None = None,
    labels: Sequence[str] | None = None,
) -> list[Path]:  # fmt: skip
    """Plot one run into its ``plots/``, or several overlaid into ``output_dir``."""
    if labels is not None and len(labels) != len(paths):
        raise PlotError(f"--labels gives {len(labels)} labels for {len(paths)} runs")
    loaded = [read_run(path) for path in paths]
    runs = [(labels[i] if labels else label, rows) for i, (label, rows, _) in enumerate(loaded)]
    if output_dir is None:
        output_dir = loaded[0][2].path / "plots" if len(paths) == 1 else Path("plots")
    return plot_metrics(runs, Path(output_dir))


# -- the span picture ------------------------------------------------------------------------
SPAN_FLOOR = 1.0
"""The span axis starts here (log scale): shorter spans are drawn as this long."""
PLAIN_STEPS = "#6f8fbf"
"""Colour of the steps that show nothing to remember."""


COLOR_WORDS = {tuple(int(v) for v in rgb): name for name, rgb in COLORS.items()}
"""Minigrid's colours by RGB, to name a salient step's colour."""


def _named(name: str, rgb: np.ndarray) -> str:
    """``name`` with the colour word of ``rgb`` when it is one of minigrid's colours."""
    word = COLOR_WORDS.get(tuple(int(v) for v in rgb))
    return f"{name} ({word})" if word else name


def salient_events(salient: np.ndarray) -> list[np.ndarray]:
    """The salient events of ``salient`` ([T, 3] colour per step, -1 where nothing): the
    steps of each run of consecutive salient steps of one colour, in order."""
    shown = salient[:, 0] >= 0
    events: list[list[int]] = []
    for step in np.nonzero(shown)[0]:
        if events and events[-1][-1] == step - 1 and (salient[step] == salient[step - 1]).all():
            events[-1].append(int(step))
        else:
            events.append([int(step)])
    return [np.array(event) for event in events]


def span_summary(spans: np.ndarray, salient: np.ndarray, name: str) -> str:
    """One line on what Expire-Span keeps: the salient steps' spans against the median span
    of the other steps (``spans`` [T, L]: a step's span is its longest over the layers)."""
    longest = spans.max(axis=1)  # [T]
    events = salient_events(salient)
    others = np.ones(len(longest), dtype=bool)
    for event in events:
        others[event] = False
    rest = (f"other steps: median {np.median(longest[others]):.0f}" if others.any()
            else "no other steps")  # fmt: skip
    layers = f" (longest over the {spans.shape[1]} layers)" if spans.shape[1] > 1 else ""
    if not events:
        return f"span: median {np.median(longest):.0f} over {len(longest)} steps{layers}"
    peaks = [int(event[np.argmax(longest[event])]) for event in events]  # each event's best
    if len(events) == 1:
        return f"{name} (step {peaks[0]}): span {longest[peaks[0]]:.0f}; {rest}{layers}"
    best = max(peaks, key=lambda step: longest[step])
    return (f"{name} ({len(events)} times): median span {np.median(longest[peaks]):.0f}, "
            f"longest {longest[best]:.0f} (step {best}); {rest}{layers}")  # fmt: skip


def _frame_row(figure: Any, trace: Any, events: list[np.ndarray], outcome: str) -> None:
    """What the agent saw: the env's frames of the trace, titled by step and meaning."""
    firsts = {int(event[0]) for event in events}
    last = len(trace.spans) - 1
    steps = sorted(trace.frames)
    axes = figure.subplots(1, len(steps), squeeze=False)[0]
    for axis, step in zip(axes, steps, strict=True):
        axis.imshow(trace.frames[step], interpolation="antialiased")
        axis.set_xticks([])
        axis.set_yticks([])
        if step in firsts:
            label = f"step {step}: {_named(trace.salient_name, trace.salient[step])}"
        elif step == last:
            label = f"step {step}: end ({outcome})"
        else:
            label = f"step {step}: start" if step == 0 else f"step {step}"
        axis.set_title(label, fontsize=9)


def _span_axis(axis: Any, spans: np.ndarray, trace: Any, events: list[np.ndarray],
               layer: int) -> None:  # fmt: skip
    """One layer's spans ``spans`` [T] against the step, the salient steps marked."""
    steps = len(spans)
    timeline = np.arange(steps)
    shown = np.maximum(spans, SPAN_FLOOR)
    axis.fill_between(timeline, SPAN_FLOOR, shown, step="mid", color=PLAIN_STEPS, alpha=0.75,
                      linewidth=0.6, label="span of each step")  # fmt: skip
    others = np.ones(steps, dtype=bool)
    for event in events:
        others[event] = False
    if others.any():
        median = float(np.median(spans[others]))
        which = "median of the other steps" if events else "median span"
        axis.axhline(max(median, SPAN_FLOOR), color="0.35", linestyle="--", linewidth=1,
                     label=f"{which}: {median:.0f}")  # fmt: skip
    if trace.max_span > 0:
        axis.axhline(trace.max_span, color="0.6", linestyle=":", linewidth=1,
                     label=f"L_max {trace.max_span:.0f}")  # fmt: skip
    salient = np.concatenate(events) if events else np.zeros(0, dtype=int)
    if len(salient):
        colors = np.clip(trace.salient[salient] / 255.0, 0.0, 1.0)
        axis.vlines(salient, SPAN_FLOOR, shown[salient], colors=colors, linewidth=2.5, zorder=3)
        axis.scatter(salient, shown[salient], c=colors, s=36, edgecolors="black", zorder=4,
                     linewidths=0.8, label=f"{trace.salient_name} in view")  # fmt: skip
        best = int(salient[np.argmax(spans[salient])])
        axis.annotate(f"{trace.salient_name} (step {best}): span {spans[best]:.0f}",
                      (best, shown[best]), xytext=(10, -4), textcoords="offset points",
                      fontsize=9, fontweight="bold", va="top", zorder=5,
                      bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "0.7"})  # fmt: skip
    axis.set_yscale("log")
    axis.set_ylim(SPAN_FLOOR * 0.9, max(trace.max_span, float(shown.max()), 10.0) * 2.5)
    margin = max(1.0, 0.01 * steps)
    axis.set_xlim(-margin, steps - 1 + margin)
    axis.set_ylabel(f"span (steps), layer {layer}", fontsize=8)
    axis.tick_params(labelsize=7)
    axis.grid(alpha=0.25, which="major")
    if layer == 0:  # above the plot, where it hides no step
        axis.legend(fontsize=7, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=4,
                    frameon=False)  # fmt: skip


def plot_span_episode(trace: Any, path: str | Path) -> Path:
    """The span picture of one episode (``agents.video.EpisodeTrace``): the env's frames at
    the start, the first salient steps and the end on top, then per layer the predicted span
    of each step's memory on a log axis, the salient steps marked in their colour and the
    longest-kept one labelled; the title's second line compares their span with the median
    of the other steps (:func:`span_summary`)."""
    spans = np.asarray(trace.spans, dtype=float)  # [T, L]
    layers = spans.shape[1]
    events = salient_events(np.asarray(trace.salient))
    outcome = "success" if trace.success else "no success"
    has_frames = bool(trace.frames)
    height = 1.0 + 2.2 * layers + (1.6 if has_frames else 0.0)
    figure = Figure(figsize=(11, height), layout="constrained")
    if has_frames:
        top, bottom = figure.subfigures(2, 1, height_ratios=[1.6, 2.2 * layers])
        _frame_row(top, trace, events, outcome)
    else:
        bottom = figure
    axes = bottom.subplots(layers, 1, sharex=True, squeeze=False)[:, 0]
    for layer, axis in enumerate(axes):
        _span_axis(axis, spans[:, layer], trace, events, layer)
    axes[-1].set_xlabel("step of the episode (the span of a step: how many steps its memory "
                        "is kept)", fontsize=8)  # fmt: skip
    summary = span_summary(spans, np.asarray(trace.salient), trace.salient_name)
    figure.suptitle(f"{trace.title}: {outcome}, return {trace.episode_return:.2f}\n{summary}",
                    fontsize=10)  # fmt: skip
    path = Path(path)
    figure.savefig(path, dpi=110)
    return path


# -- command line ------------------------------------------------------------------------------
@dataclass
class PlotArgs:
    """Plot runs' learning curves, memory and losses: `python -m agents.plot RUN_DIR ...`."""

    run_dirs: Annotated[
        tuple[str, ...],
        tyro.conf.Positional,
        tyro.conf.arg(metavar="RUN_DIR [RUN_DIR ...]", help_behavior_hint="(required)"),
    ]
    """Run directories made by train_rl.py; several are overlaid, one colour per run."""
    output_dir: Annotated[
        str | None,
        tyro.conf.arg(metavar="DIR", help_behavior_hint="(default: RUN_DIR/plots for one run, "
                                                        "plots/ for several)"),
    ] = None  # fmt: skip
    """Where the PNGs go."""
    labels: Annotated[
        tuple[str, ...] | None,
        tyro.conf.arg(metavar="LABEL [LABEL ...]",
                      help_behavior_hint="(default: the directory's name and the policy)"),
    ] = None  # fmt: skip
    """Legend labels, one per run."""


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agents.plot RUN_DIR [RUN_DIR ...]``; returns the exit status."""
    args = parse_args(PlotArgs, argv, "python -m agents.plot", __doc__.splitlines()[0])
    try:
        if not args.run_dirs:
            raise PlotError("missing RUN_DIR (one or more run directories made by train_rl.py)")
        written = plot_run_dirs(args.run_dirs, args.output_dir, args.labels)
    except PlotError as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
