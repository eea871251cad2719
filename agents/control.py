"""The run's control rules: a task's curriculum, when to stop before the step budget, and
how a signal stops a run.

Each rule is a small object with its own state (checkpointed with the run) that
the trainer asks at every logging interval; the trainer applies what it
decides to the env, the collector and the learner. Neither reads anything but
the interval's metrics and the run's config.
"""

from __future__ import annotations

import math
import os
import signal
import threading
from types import FrameType
from typing import Any

from agents.run_config import LearnerConfig, RunConfig

CONFIRM_EVERY = 5
"""Logging intervals between two greedy checks of the targets (`StopRule.check_due`)."""


class Curriculum:
    """A task's training curriculum (corridor: the longest length drawn; Instruction: the
    room's size). It starts at ``curriculum_start`` and doubles, up to the task's own value,
    whenever a logging interval's success rate reaches ``curriculum_success``. The stage sets
    the entropy coefficient (geometric from ``ent_coef`` at the first stage to
    ``ent_coef_final`` at the full task) and, with ``span_lr_scale_final``, the span
    predictors' learning-rate multiplier on the full task."""

    def __init__(self, config: LearnerConfig, full: int):
        if config.curriculum_start is None:
            raise ValueError("a curriculum needs curriculum_start")
        self.config, self.full = config, int(full)
        self.stage = int(config.curriculum_start)

    @property
    def at_full_task(self) -> bool:
        """Whether the stage is the task itself."""
        return self.stage >= self.full

    @property
    def full_fraction(self) -> float:
        """The share of episodes at the full task in the current stage (once it is reached)."""
        return self.config.curriculum_full_fraction if self.at_full_task else 0.0

    def advance(self, success_rate: float) -> bool:
        """Move on after an interval with ``success_rate``; whether the stage changed."""
        if self.at_full_task or not success_rate >= self.config.curriculum_success:
            return False
        self.stage = min(2 * self.stage, self.full)
        return True

    def ent_coef(self) -> float:
        """The entropy coefficient of the current stage."""
        config = self.config
        if config.ent_coef_final is None:
            return config.ent_coef
        start = config.curriculum_start
        if self.stage >= self.full or start >= self.full:
            return config.ent_coef_final
        fraction = min(max(math.log(self.stage / start) / math.log(self.full / start), 0.0), 1.0)
        return config.ent_coef * (config.ent_coef_final / config.ent_coef) ** fraction

    def span_lr_scale(self) -> float | None:
        """The span predictors' learning-rate multiplier of the current stage (None: the
        learner's own, unchanged)."""
        if self.config.span_lr_scale_final is None:
            return None
        return self.config.span_lr_scale_final if self.at_full_task else self.config.span_lr_scale

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage}

    def load_state_dict(self, data: dict[str, Any]) -> None:
        self.stage = int(data["stage"])


class StopRule:
    """Whether a run stops before its step budget: a logging interval on the full task meets
    ``target_success`` and ``target_alive`` (each when set), and, with ``confirm_episodes``,
    greedy episodes of the full task meet them too (and ``target_oracle_share``, which only
    greedy episodes score). A greedy check runs at most once every `CONFIRM_EVERY`
    intervals."""

    def __init__(self, run: RunConfig):
        self.run = run
        self.last_check = -math.inf
        """Update of the last greedy check."""

    @property
    def active(self) -> bool:
        """Whether the run has a target to stop at."""
        return self.run.target_success is not None or self.run.target_oracle_share is not None

    def interval_meets(self, row: dict[str, float]) -> bool:
        """Whether an interval on the full task meets the targets that training measures (a
        policy without memories logs NaN alive memories and never meets --target-alive). With
        only a --target-oracle-share every interval goes on to the greedy check."""
        return self.active and self.meets(row["success_rate"], row["mem_alive_mean"])

    def meets(self, success: float, alive: float, share: float | None = None) -> bool:
        """Whether these figures meet each target that is set (the oracle share only where a
        greedy check scored it)."""
        run = self.run
        return (
            (run.target_success is None or success >= run.target_success)
            and (run.target_alive is None or alive <= run.target_alive)
            and (share is None or run.target_oracle_share is None
                 or share >= run.target_oracle_share)
        )  # fmt: skip

    def check_due(self, update: int) -> bool:
        """Whether a greedy check may run at ``update`` (and if so, mark it as run)."""
        if update - self.last_check < CONFIRM_EVERY * self.run.log_interval:
            return False
        self.last_check = update
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"last_check": self.last_check}

    def load_state_dict(self, data: dict[str, Any]) -> None:
        self.last_check = float(data["last_check"])


class Interrupted(KeyboardInterrupt):
    """Training stopped on a signal (``signum``) after a checkpoint at ``update``."""

    def __init__(self, signum: int, update: int):
        super().__init__(signum, update)
        self.signum, self.update = signum, update


class SignalStop:
    """While entered (in the main thread of a single process), the first SIGINT or SIGTERM
    only sets ``signum`` for the loop to read between updates; a second one raises
    KeyboardInterrupt at once. Elsewhere it changes nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> SignalStop:
        if self.enabled:
            self.previous = {signum: signal.signal(signum, self._receive)
                             for signum in self.SIGNALS}  # fmt: skip
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _receive(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        # os.write, not print: a handler may run in the middle of a print to the same stream.
        os.write(2, b"\nstopping after this update with a checkpoint "
                    b"(Ctrl-C again stops at once)\n")  # fmt: skip
