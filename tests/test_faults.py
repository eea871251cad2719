"""Fault injection: a run killed with SIGKILL at random moments, and resumed each time, ends as
the run that was never interrupted (slow: `pytest -m slow tests/test_faults.py`)."""

from __future__ import annotations

import csv
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KILLS = 10
# A corridor with random lengths and a length curriculum (its stage is checkpointed too), a
# metrics row every update and a checkpoint every 3, so kills land everywhere: in training,
# in a metrics write, in a checkpoint write, while starting up.
RUN = ["--env", "corridor", "--length", "24", "--min-length", "5", "--curriculum-start", "6",
       "--num-envs", "8", "--num-steps", "16", "--num-minibatches", "2", "--update-epochs", "2",
       "--total-steps", str(8 * 16 * 60), "--log-interval", "1", "--checkpoint-interval", "3",
       "--seed", "7", "--threads", "1"]  # fmt: skip


def command(*argv: str) -> list[str]:
    return [sys.executable, "train_rl.py", *argv]


def metric_steps(run_dir: Path) -> list[int]:
    if not (run_dir / "metrics.csv").exists():
        return []
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [int(row["global_step"]) for row in csv.DictReader(handle)]


def tensorboard_steps(run_dir: Path, tag: str) -> list[int]:
    """The steps of a scalar as TensorBoard shows it (a resumed writer's purge applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


@pytest.mark.slow
def test_ten_sigkills_at_random_moments_leave_the_uninterrupted_run(tmp_path, weights_hash):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(command(*RUN, "--run-dir", str(reference)), cwd=ROOT, check=True,
                   capture_output=True, timeout=600)  # fmt: skip
    rng = random.Random(20261129)
    kills = 0
    while kills < KILLS:
        started = (killed / "config.json").exists()  # a kill before that leaves no run
        argv = command("--resume", str(killed)) if started else command(*RUN, "--run-dir",
                                                                        str(killed))
        process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)  # fmt: skip
        rows = len(metric_steps(killed))
        wait_rows, extra = rng.randint(0, 3), rng.uniform(0.0, 0.4)
        while len(metric_steps(killed)) < rows + wait_rows and process.poll() is None:
            time.sleep(0.01)
        time.sleep(extra)
        if process.poll() is not None:  # it finished before the kill: not a kill survived
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += (killed / "config.json").exists()
    subprocess.run(command("--resume", str(killed)), cwd=ROOT, check=True, capture_output=True,
                   timeout=600)  # fmt: skip
    assert kills == KILLS
    assert weights_hash(killed) == weights_hash(reference)
    steps = metric_steps(reference)
    assert metric_steps(killed) == steps  # every interval exactly once
    for tag in ("charts/success_rate", "losses/policy_loss"):
        assert tensorboard_steps(killed, tag) == tensorboard_steps(reference, tag) == steps
    assert not list(killed.rglob(".*.tmp*"))
