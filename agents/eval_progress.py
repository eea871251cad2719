"""Progress of an evaluation: where it stands, and a display of it (a tqdm bar on a terminal).

`agents.evaluate.evaluate` hands an `EvalProgress` to a callback at each of its host check
points (no extra host synchronisation); `EvalProgressDisplay` is such a callback.
"""

from __future__ import annotations

import math
import sys
from typing import Any, NamedTuple, TextIO


class EvalProgress(NamedTuple):
    """Where an evaluation stands, at one of its host check points."""

    episodes_done: int
    """Counted episodes ended so far."""
    episodes: int
    """Counted episodes in all."""
    successes: float
    """Successes among the episodes done."""
    env_steps: int
    """Steps of all envs so far."""
    seconds: float
    """Seconds since the evaluation started."""
    seconds_left: float
    """Estimated seconds to the end: at the pace of the episodes done so far, and never beyond
    the time limit's bound; NaN while neither is known."""

    @property
    def success_rate(self) -> float:
        """Success rate of the episodes done (NaN before the first)."""
        return self.successes / self.episodes_done if self.episodes_done else math.nan


def seconds_left(done: int, episodes: int, steps: int, paced_steps: int,
                  step_limit: int | None, seconds: float) -> float:  # fmt: skip
    """The time left of an evaluation ``seconds`` and ``steps`` in, with ``done`` of
    ``episodes`` episodes ended by step ``paced_steps``, which ends by ``step_limit`` steps at
    the latest (None: no limit). Episodes end in bursts (every env's at once when all time
    out), so the pace is that of the step where the last of them ended."""
    total = paced_steps * episodes / done if done else math.inf  # steps the evaluation takes
    if total <= steps:  # later than that pace said: the pace so far
        total = steps * episodes / done
    total = min(total, step_limit or math.inf)
    return (total - steps) * seconds / steps if math.isfinite(total) and steps else math.nan




class EvalProgressDisplay:
    """Shows an evaluation's :class:`EvalProgress` as training shows its own: a tqdm bar
    (episodes done, running success rate, time left) when ``stream`` (default stderr) is a
    terminal, else a plain line every ``interval`` seconds (none in a shorter evaluation).
    Pass it as ``evaluate(..., progress=display)``; use it in a ``with`` block, or ``close``
    it, to end the bar."""

    def __init__(self, label: str = "evaluating", stream: TextIO | None = None,
                 interval: float = 30.0):  # fmt: skip
        self.label, self.interval = label, interval
        self.stream = sys.stderr if stream is None else stream
        self.interactive = self.stream.isatty()
        self.bar: Any = None
        self.last_line = 0.0  # the evaluation's seconds at the last plain line

    @staticmethod
    def describe(progress: EvalProgress) -> str:
        """``"128/1000 episodes, success 0.945, about 3 min left"``."""
        rate = progress.success_rate
        success = "n/a" if math.isnan(rate) else f"{rate:.3f}"
        if progress.episodes_done >= progress.episodes:
            left = f"took {_duration(progress.seconds)}"
        elif math.isnan(progress.seconds_left):
            left = "time left unknown yet"
        else:
            left = f"about {_duration(progress.seconds_left)} left"
        return f"{progress.episodes_done}/{progress.episodes} episodes, success {success}, {left}"

    def __call__(self, progress: EvalProgress) -> None:
        if self.interactive:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=progress.episodes, desc=self.label, file=self.stream,
                                dynamic_ncols=True, bar_format="{desc}: {percentage:3.0f}%|{bar}| "
                                "{elapsed} elapsed{postfix}")  # fmt: skip
            self.bar.n = progress.episodes_done
            self.bar.set_postfix_str(self.describe(progress), refresh=True)
        elif (progress.seconds - self.last_line >= self.interval
              and progress.episodes_done < progress.episodes):  # fmt: skip
            print(f"{self.label}: {self.describe(progress)}", file=self.stream, flush=True)
            self.last_line = progress.seconds

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> EvalProgressDisplay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _duration(seconds: float) -> str:
    """``"45 s"``, ``"12 min"``, ``"2 h 05 min"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
