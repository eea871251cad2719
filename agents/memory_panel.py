"""The memory panel of the episode videos (``agents.video``): what the policy keeps, step by step.

Shape legend: T steps of an episode, L layers of the memory core, K memories kept in a layer,
S strip height and W panel width in pixels.

Per layer, a strip with a timeline of the episode (now at the right, the episode's start at the
left, logarithmic in age so that recent steps stay readable in episodes of thousands of steps):

- Expire-Span: every past step still in memory as a bar at its age, as tall as the steps it
  has left (its span ``e_i`` minus its age, plus the ramp) on a logarithmic scale with 10,
  100 and 1000 steps marked, so a memory kept for a thousand more steps towers over those
  about to go. Memories of salient steps keep the salient colour, the longest-kept one labelled
  with the steps it has left; the others are blue, turn orange while they fade on the ramp
  and vanish when they expire. The count of memories kept is the policy's own
  (``PolicyOutput.memory_alive``); ages and spans come from its state.
- Transformer-XL: the same, for its fixed window of the last M steps.
- LSTM: the hidden state's norm at every step so far.

Salient steps, where the task shows what must be remembered (``ReferenceEnv.salient_color``:
the corridor's cue, an instruction, a new portal room), are ticked under each strip in their
colour, bright while kept.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from PIL import ImageFont

from agents.evaluate import ActionStep
from envs.reference import RGB, ReferenceEnv
from policies.expire_span import ramp_width

PANEL_TITLE_HEIGHT = 18
STRIP_HEIGHT = 56
TICK_HEIGHT = 5
STRIP_GAP = 8
LABEL_WIDTH = 92  # left margin of the timeline, for the layer label
SCALE_WIDTH = 30  # right margin, for the span scale's labels
MIN_TIMELINE = 24  # the timeline spans at least this many steps
AGE_SCALE = 8.0  # the timeline is linear in age below this many steps, logarithmic above
SPAN_MARKS = (10, 100, 1000, 10000)  # steps left marked on the strip's scale
BACKGROUND = (24, 24, 28)
FADING = np.array([255, 140, 30])  # memories on the ramp, scaled by their mask value
PLAIN_LOW, PLAIN_HIGH = np.array([60, 80, 120]), np.array([150, 195, 245])  # other memories
MIN_BAR_WIDTH = 3  # pixel columns per kept memory at least, so a lone old memory shows
LABEL_FONT_SIZE = 11


@functools.lru_cache(maxsize=4)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in font at ``size`` pixels (Pillow >= 10.1: scalable)."""
    return ImageFont.load_default(size=size)


class MemoryPanel:
    """Keeps what the panel needs across an episode and draws it ([H, W, 3] uint8).

    ``update(t, step, salient)`` is called after the policy read the observation of step t
    (``salient``: the colour of what that observation showed to remember, or None).
    Histories are preallocated for ``max_steps + 1`` steps, so memory is bounded.
    """

    def __init__(self, kind: str, config: Any, num_layers: int, max_steps: int, width: int,
                 salient_name: str = ReferenceEnv.salient_name):  # fmt: skip
        self.kind, self.num_layers, self.width = kind, num_layers, width
        self.salient_name = salient_name
        self.max_span = float(getattr(config, "max_span", 0) or 0)
        self.ramp = float(getattr(config, "ramp_length", 1) or 1)
        self.ramp_growth = float(getattr(config, "ramp_growth", 0.0) or 0.0)
        self.window = float(getattr(config, "memory_size", 0) or 0)
        self.plot_width = width - LABEL_WIDTH - SCALE_WIDTH
        self.height = PANEL_TITLE_HEIGHT + num_layers * (STRIP_HEIGHT + TICK_HEIGHT + STRIP_GAP)
        self.height += 14  # the timeline's axis labels
        self.values = np.zeros((max_steps + 2, num_layers), dtype=np.float32)  # spans or norms
        self.salient = np.zeros((max_steps + 2, 3), dtype=np.int16) - 1  # [T, 3] colour or -1
        # Per layer: steps, remaining (span - age) and ramp length (Expire-Span) of each memory.
        self.kept: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.alive = np.zeros(num_layers, dtype=np.int64)  # [L] memories kept, from the policy
        self.step = 0

    @classmethod
    def for_policy(cls, policy: Any, max_steps: int, width: int,
                   salient_name: str = ReferenceEnv.salient_name) -> MemoryPanel:  # fmt: skip
        return cls(policy.kind, policy.config, policy.config.num_layers, max_steps, width,
                   salient_name)  # fmt: skip

    def update(self, t: int, step: ActionStep, salient: RGB | None) -> None:
        self.step = t
        if salient is not None:
            self.salient[t] = salient
        tensors = step.state.tensors
        if self.kind == "lstm":
            hidden = tensors["hidden"][0].float()  # [L, D]
            self.values[t] = hidden.norm(dim=-1).cpu().numpy()
            return
        if step.memory_alive is not None:
            self.alive = step.memory_alive[0].round().long().cpu().numpy()  # [L]
        if step.output is not None and step.output.spans.shape[-1] > 0:
            self.values[t] = step.output.spans[0, 0].float().cpu().numpy()  # [L]
        self.kept = []
        for layer in range(self.num_layers):
            valid = tensors[f"memory_valid_{layer}"][0].cpu().numpy()  # [M]
            age = tensors[f"memory_age_{layer}"][0].cpu().numpy()[valid]  # steps to the next
            steps = t + 1 - age  # the episode step each kept memory was made at
            if self.kind == "expire_span":
                spans = self.values[steps, layer]
                remaining = spans - age
                width = ramp_width(spans, self.ramp, self.ramp_growth)  # R + ρ·e
                ramp = np.broadcast_to(width, spans.shape)
                alive = remaining + ramp > 0  # without pruning, expired slots stay valid
                steps, remaining, ramp = steps[alive], remaining[alive], ramp[alive]
            else:
                remaining = self.window - age
                ramp = np.zeros_like(remaining)
            self.kept.append((steps, remaining, ramp))

    # -- drawing --
    def _height(self, steps_left: np.ndarray) -> np.ndarray:
        """Bar heights as fractions of the strip for memories with ``steps_left`` steps left
        (logarithmic: a few steps left already show, L_max fills the strip)."""
        longest = (self.max_span * (1 + self.ramp_growth) + self.ramp
                   if self.kind == "expire_span" else self.window)  # fmt: skip
        return np.log1p(np.clip(steps_left, 0, None)) / math.log1p(max(longest, 1.0))

    def _bars(self, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(steps [K], height fractions [K], colours [K, 3]) of one layer's strip."""
        if self.kind == "lstm":
            steps = np.arange(self.step + 1)
            norms = self.values[: self.step + 1, layer]
            fraction = norms / max(float(norms.max()), 1e-6)
            colors = PLAIN_LOW + fraction[:, None] * (PLAIN_HIGH - PLAIN_LOW)
            return steps, fraction, colors.astype(np.uint8)
        steps, remaining, ramp = self.kept[layer]
        left = remaining + ramp
        fraction = self._height(left)
        colors = (PLAIN_LOW + fraction[:, None] * (PLAIN_HIGH - PLAIN_LOW)).astype(np.uint8)
        # m of the next query: 1 before the ramp, falling to 0 along it (trxl: always 1).
        mask = np.clip(1 + remaining / ramp, 0, 1) if self.kind == "expire_span" else 1.0
        fading = remaining < 0
        colors[fading] = FADING
        salient = self.salient[steps, 0] >= 0
        colors[salient] = self.salient[steps[salient]]
        dim = 0.35 + 0.65 * np.broadcast_to(mask, fraction.shape)[fading, None]
        colors[fading] = (colors[fading] * dim).astype(np.uint8)
        return steps, np.clip(fraction, 0.03, 1.0), colors

    def _x(self, ages: np.ndarray) -> np.ndarray:
        """Pixel column of the right edge of steps ``ages`` steps ago (0 = now, at the right).

        The axis is logarithmic in age (linear over the last AGE_SCALE steps), so the recent
        steps stay readable while the episode's first step, thousands of steps ago, is still
        on the left edge."""
        oldest = max(self.step, MIN_TIMELINE - 1) + 1
        fraction = np.log1p(ages / AGE_SCALE) / math.log1p(oldest / AGE_SCALE)
        return LABEL_WIDTH + np.round(self.plot_width * (1 - fraction)).astype(np.int64)

    def _columns(
        self, left: np.ndarray, right: np.ndarray, fraction: np.ndarray, colors: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Bar height in pixels [W] and colour [W, 3] of every pixel column; bar k covers
        columns left[k] .. right[k] - 2 (at least MIN_BAR_WIDTH), and the tallest bar wins a
        column."""
        order = np.argsort(fraction, kind="stable")  # rank r: the r-th shortest bar
        widths = np.maximum(right[order] - 1 - left[order], MIN_BAR_WIDTH)  # [K]
        starts = np.repeat(left[order], widths)  # one entry per covered column
        offsets = np.arange(widths.sum()) - np.repeat(np.cumsum(widths) - widths, widths)
        rank = np.full(self.width, -1, dtype=np.int64)
        np.maximum.at(rank, np.clip(starts + offsets, 0, self.width - 1),
                      np.repeat(np.arange(len(order)), widths))  # fmt: skip
        covered = rank >= 0
        heights = np.zeros(self.width, dtype=np.int64)
        column_color = np.zeros((self.width, 3), dtype=np.uint8)
        heights[covered] = np.round(fraction[order][rank[covered]] * STRIP_HEIGHT)
        column_color[covered] = colors[order][rank[covered]]
        return heights, column_color

    def _scale(self, strip: np.ndarray, top: int, labels: list[tuple[int, int, str]]) -> None:
        """Faint lines across the strip where bars of SPAN_MARKS steps left end, labelled."""
        longest = self.max_span if self.kind == "expire_span" else self.window
        for mark in SPAN_MARKS:
            if mark > longest:
                break
            # The row where a bar of ``mark`` steps left ends (see ``_columns``).
            height = float(self._height(np.array([mark]))[0])
            row = max(STRIP_HEIGHT - round(height * STRIP_HEIGHT), 0)
            strip[row, LABEL_WIDTH : self.width - SCALE_WIDTH] = 60
            text = f"{mark // 1000}k" if mark >= 1000 else str(mark)
            labels.append((self.width - SCALE_WIDTH + 4, top + row - 6, text))

    def _salient_label(
        self, layer: int, left: np.ndarray, right: np.ndarray, top: int
    ) -> tuple[int, int, str] | None:
        """The label of the layer's longest-kept salient memory, beside its bar (columns
        ``left`` .. ``right`` of each kept memory), or None."""
        steps, remaining, ramp = self.kept[layer]
        salient = np.nonzero(self.salient[steps, 0] >= 0)[0]
        if self.kind != "expire_span" or len(salient) == 0:
            return None
        k = salient[np.argmax(remaining[salient])]
        steps_left = remaining[k] + ramp[k]
        text = f"{self.salient_name} (step {steps[k]}): {steps_left:.0f} steps left"
        height = float(self._height(np.array([steps_left]))[0])
        y = top + min(max(int(STRIP_HEIGHT * (1 - height)) - 2, 0), STRIP_HEIGHT - 14)
        x = max(int(right[k]) - 1, int(left[k]) + MIN_BAR_WIDTH) + 3
        if x + font(LABEL_FONT_SIZE).getlength(text) > self.width - SCALE_WIDTH:
            x = int(left[k]) - 4 - int(font(LABEL_FONT_SIZE).getlength(text))
        return (max(x, LABEL_WIDTH), y, text)

    def draw(self) -> tuple[np.ndarray, list[tuple[int, int, str]]]:
        """The panel's pixels and its text labels (x, y, text), drawn later with the caption."""
        image = np.zeros((self.height, self.width, 3), dtype=np.uint8)
        image[:] = BACKGROUND
        labels = [(6, 2, self.title())]
        salient_steps = np.nonzero(self.salient[: self.step + 1, 0] >= 0)[0]
        start_x = max(int(self._x(np.array([self.step + 1]))[0]) - 1, 0)
        top = PANEL_TITLE_HEIGHT
        for layer in range(self.num_layers):
            steps, fraction, colors = self._bars(layer)
            ages = self.step - steps  # [K]
            right, left = self._x(ages), self._x(ages + 1)
            column_height, column_color = self._columns(left, right, fraction, colors)
            rows = np.arange(STRIP_HEIGHT)[:, None]  # [S, 1]
            filled = rows >= STRIP_HEIGHT - column_height[None, :]  # [S, W]
            strip = image[top : top + STRIP_HEIGHT]
            if self.kind != "lstm":
                self._scale(strip, top, labels)
            strip[:, start_x] = 90  # the episode's start
            strip[filled] = np.broadcast_to(column_color[None], (*filled.shape, 3))[filled]
            ticks = image[top + STRIP_HEIGHT + 1 : top + STRIP_HEIGHT + 1 + TICK_HEIGHT]
            salient_ages = self.step - salient_steps
            # A salient step still in memory is bright (the LSTM's strip covers every step).
            shades = np.where(np.isin(salient_steps, steps), 1.0, 0.35)
            for step, low, high, scale in zip(
                salient_steps, self._x(salient_ages + 1), self._x(salient_ages), shades,
                strict=True,
            ):  # fmt: skip
                colour = (self.salient[step] * scale).astype(np.uint8)
                ticks[:, low : max(high - 1, low + MIN_BAR_WIDTH)] = colour
            labels.append((6, top + 4, f"layer {layer}"))
            if self.kind != "lstm":
                labels.append((6, top + 20, f"kept: {self.alive[layer]}"))
                label = self._salient_label(layer, left, right, top)
                if label is not None:
                    labels.append(label)
            else:
                labels.append((6, top + 20, f"|h| {self.values[self.step, layer]:.2f}"))
            top += STRIP_HEIGHT + TICK_HEIGHT + STRIP_GAP
        labels.append((start_x - 14, top - 4, "start"))
        for age in (10, 100, 1000, 10000):
            x = int(self._x(np.array([age]))[0])
            if age <= self.step and start_x + 60 < x < self.width - SCALE_WIDTH - 60:
                image[top - 10 : top - 6, x] = 160
                labels.append((x - 12, top - 4, f"{age} ago"))
        labels.append((self.width - SCALE_WIDTH - 26, top - 4, "now"))
        return image, labels

    def title(self) -> str:
        if self.kind == "expire_span":
            return ("memory: past steps still kept; height = steps left (log scale, "
                    f"L_max {self.max_span:.0f}); orange = expiring")  # fmt: skip
        if self.kind == "trxl":
            return (f"memory: Transformer-XL window of the last {self.window:.0f} steps; "
                    "height = steps left (log scale)")  # fmt: skip
        return "memory: LSTM hidden-state norm at each step"
