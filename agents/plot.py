"""Plots of runs (matplotlib, headless): learning curves, memory, losses and span pictures.

``python -m agents.plot RUN_DIR [RUN_DIR ...]`` draws from each run's
``metrics.csv``:

- ``learning.png``: success rate and episode return against env steps,
- ``memory.png``: memories alive (mean and max) and mean predicted span against env steps,
- ``losses.png``: the learner's losses and diagnostics,

into ``RUN_DIR/plots/`` for one run, or overlaid (one colour per run, e.g.
Expire-Span against Transformer-XL on one task) into ``--output-dir``
(default ``plots/``) for several. :func:`plot_span_episode` draws the span
picture of one recorded episode (the RL version of the paper's Figure 8):
the observation timeline, and under it each layer's predicted span of every
observation, coloured by span. ``evaluate.py --video K`` writes one per
recorded episode of an Expire-Span policy.

Shape legend: T steps of an episode, L layers, V view size.
"""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure  # no pyplot: no global backend, nothing opens a window
from minigrid.core.constants import COLORS, IDX_TO_COLOR, OBJECT_TO_IDX

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
def observation_strip(images: np.ndarray, salient: np.ndarray) -> np.ndarray:
    """[T, V, V, 3] minigrid cells -> an RGB timeline [V + 2, T·V, 3]: each step's window
    (objects in their colour, the agent light grey, floor black), and under it a band in the
    colour of what the task showed to remember at that step."""
    steps, view = images.shape[:2]
    objects, colors = images[..., 0], images[..., 1]
    palette = np.array([COLORS[IDX_TO_COLOR[i]] for i in range(len(IDX_TO_COLOR))], np.uint8)
    rgb = palette[np.clip(colors, 0, len(palette) - 1)]  # [T, V, V, 3]
    plain = np.isin(objects, [OBJECT_TO_IDX["empty"], OBJECT_TO_IDX["unseen"],
                              OBJECT_TO_IDX["floor"]])  # fmt: skip
    rgb[plain] = 0
    rgb[objects == OBJECT_TO_IDX["wall"]] //= 2  # walls darker than objects of their colour
    rgb[objects == OBJECT_TO_IDX["agent"]] = 200
    windows = rgb.transpose(0, 2, 1, 3)  # image[t, x, y] -> [T, y, x, 3]: rows are y
    strip = windows.transpose(1, 0, 2, 3).reshape(view, steps * view, 3)  # [V, T·V, 3]
    band = np.where(salient[:, None, :] >= 0, salient[:, None, :], 0).astype(np.uint8)
    band = np.repeat(band, view, axis=1).reshape(1, steps * view, 3)
    gap = np.full((1, steps * view, 3), 255, np.uint8)
    return np.concatenate([strip, gap, band], axis=0)


def plot_span_episode(trace: Any, path: str | Path) -> Path:
    """The span picture of one episode (``agents.video.EpisodeTrace``): the observation
    timeline on top, then per layer the predicted span of each step's memory, coloured by
    span. The cue (or instruction) should get long spans, the steps between short ones."""
    spans = np.asarray(trace.spans, dtype=float)  # [T, L]
    steps, layers = spans.shape
    figure = Figure(figsize=(11, 1.6 + 1.7 * layers), layout="constrained")
    axes = figure.subplots(1 + layers, 1, sharex=True, squeeze=False,
                           height_ratios=[1.0] + [2.0] * layers)[:, 0]  # fmt: skip
    axes[0].imshow(observation_strip(trace.images, trace.salient), aspect="auto",
                   interpolation="nearest", extent=(-0.5, steps - 0.5, 1, 0))  # fmt: skip
    axes[0].set_yticks([])
    axes[0].set_ylabel("observation", fontsize=8)
    cmap = colormaps["viridis"]
    norm = Normalize(0.0, max(trace.max_span, 1.0))
    timeline = np.arange(steps)
    for layer in range(layers):
        axis = axes[1 + layer]
        axis.vlines(timeline, 0, spans[:, layer], colors=cmap(norm(spans[:, layer])),
                    linewidth=max(0.5, min(4.0, 400 / steps)))  # fmt: skip
        axis.set_ylim(0, trace.max_span * 1.02)
        axis.set_ylabel(f"span, layer {layer}", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.2)
    axes[-1].set_xlabel("step of the episode", fontsize=8)
    axes[-1].set_xlim(-0.5, steps - 0.5)
    figure.colorbar(ScalarMappable(norm, cmap), ax=list(axes[1:]), label="predicted span (steps)")
    outcome = "success" if trace.success else "no success"
    figure.suptitle(f"{trace.title}: {outcome}, return {trace.episode_return:.2f}", fontsize=9)
    path = Path(path)
    figure.savefig(path, dpi=110)
    return path


# -- command line ------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``error: ...``, exit status 2)."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agents.plot RUN_DIR [RUN_DIR ...]``; returns the exit status."""
    parser = _Parser(prog="python -m agents.plot", description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories")
    parser.add_argument("--output-dir", default=None,
                        help="where the PNGs go (default: RUN_DIR/plots for one run, plots/ for "
                             "several)")  # fmt: skip
    parser.add_argument(
        "--labels",
        nargs="+",
        default=None,
        help="legend labels, one per run (default: directory and policy)",
    )
    args = parser.parse_args(argv)
    try:
        written = plot_run_dirs(args.run_dirs, args.output_dir, args.labels)
    except PlotError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
