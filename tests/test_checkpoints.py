"""Checkpoints are data, survive kills and full disks, and old ones still load."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_rl
from agents.run_dir import CHECKPOINT_VERSION, RunDir, atomic_write_bytes

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_V1 = Path(__file__).parent / "fixtures" / "run_v1"
TINY = ["--env", "corridor", "--length", "4", "--num-envs", "8", "--num-steps", "16",
        "--num-minibatches", "2", "--update-epochs", "2", "--log-interval", "1",
        "--checkpoint-interval", "2", "--threads", "1"]  # fmt: skip


def train(run_dir: Path, *extra: str) -> None:
    assert train_rl.main([*TINY, "--run-dir", str(run_dir), *extra], progress=False) == 0


class RunsCode:
    """Unpickling this object runs a command that leaves a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def cli(script: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, script, *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    run_dir = tmp_path / "run"
    train(run_dir, "--total-steps", "256")
    marker = tmp_path / "pwned"
    payload = RunDir.open(run_dir).load_checkpoint()
    payload["policy"]["trap"] = RunsCode(marker)
    for name in ("latest.pt", "ckpt_00000002.pt"):
        torch.save(payload, run_dir / "checkpoints" / name)
    for result in (cli("evaluate.py", str(run_dir), "--episodes", "4", "--threads", "1"),
                   cli("train_rl.py", "--resume", str(run_dir), "--total-steps", "512")):
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, result.stderr
        assert len(lines) == 1 and "is not plain data (it names posix.system)" in lines[0]
        assert "Traceback" not in result.stderr
    assert not marker.exists()


def test_a_version_1_checkpoint_loads_and_resumes_exactly(tmp_path, weights_hash):
    """The fixture is a run of the first checkpoint format, cut at step 512 of 1024; the hash is
    that of its weights at step 1024 in the uninterrupted run of that version."""
    run_dir = tmp_path / "run_v1"
    shutil.copytree(FIXTURE_V1, run_dir)
    payload = RunDir.open(run_dir).load_checkpoint()
    assert payload["format_version"] == CHECKPOINT_VERSION and "numpy_rng" not in payload
    assert train_rl.main(["--resume", str(run_dir)], progress=False) == 0
    assert weights_hash(run_dir) == (
        "5d3ca04a6f5481641e898c2830fd2510531a0401a410a602c524fbb2893842d8"
    )
    result = cli("evaluate.py", str(run_dir), "--episodes", "8", "--threads", "1")
    assert result.returncode == 0, result.stderr


def test_a_checkpoint_of_an_unknown_version_is_refused_naming_both(tmp_path):
    run_dir = tmp_path / "run"
    train(run_dir, "--total-steps", "256")
    for path in (run_dir / "checkpoints").glob("*.pt"):
        payload = torch.load(path, weights_only=True)
        torch.save({**payload, "format_version": 99}, path)
    result = cli("evaluate.py", str(run_dir), "--episodes", "4")
    assert result.returncode == 2
    assert (f"has format version 99; this expire-rl reads versions 1 and {CHECKPOINT_VERSION}"
            in result.stderr)  # fmt: skip


def test_a_truncated_latest_checkpoint_falls_back_and_the_run_goes_on(
    tmp_path, capsys, weights_hash
):
    run_dir, reference = tmp_path / "run", tmp_path / "reference"
    train(reference, "--total-steps", "768")
    train(run_dir, "--total-steps", "768")
    # A kill left latest.pt cut short and a temporary file of the write it interrupted.
    checkpoints = run_dir / "checkpoints"
    latest = checkpoints / "latest.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    (checkpoints / "ckpt_00000006.pt").unlink()  # the kill came before this one was final
    (checkpoints / ".latest.pt.tmp4242").write_bytes(b"half a checkpoint")
    capsys.readouterr()
    assert train_rl.main(["--resume", str(run_dir)], progress=False) == 0
    err = capsys.readouterr().err
    assert "latest.pt is corrupt" in err and "using ckpt_00000004.pt (step 512)" in err
    assert not (checkpoints / ".latest.pt.tmp4242").exists()
    assert weights_hash(run_dir) == weights_hash(reference)  # the same run, to the end


def test_a_full_disk_stops_training_with_one_line_and_keeps_the_last_checkpoint(
    tmp_path, capsys, monkeypatch
):
    run_dir = tmp_path / "run"
    train(run_dir, "--total-steps", "256")
    kept = (run_dir / "checkpoints" / "latest.pt").read_bytes()
    real_fsync = os.fsync

    def full(descriptor: int) -> None:
        real_fsync(descriptor)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("agents.run_dir.os.fsync", full)
    capsys.readouterr()
    assert train_rl.main(["--resume", str(run_dir), "--total-steps", "512"],
                         progress=False) == 1  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err
    assert f"the last good checkpoint is kept in {run_dir / 'checkpoints'}" in err
    monkeypatch.undo()
    assert (run_dir / "checkpoints" / "latest.pt").read_bytes() == kept
    assert not list((run_dir / "checkpoints").glob(".*.tmp*"))


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "file"
    atomic_write_bytes(path, b"old")

    def fail(*_: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("agents.run_dir.os.replace", fail)
    with pytest.raises(OSError):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["file"]


def test_a_run_killed_before_its_first_checkpoint_starts_over_on_resume(
    tmp_path, capsys, weights_hash
):
    run_dir, reference = tmp_path / "run", tmp_path / "reference"
    train(reference, "--total-steps", "512")
    train(run_dir, "--total-steps", "512")
    shutil.rmtree(run_dir / "checkpoints")  # as if killed before the first was written
    rows = (run_dir / "metrics.csv").read_text()
    capsys.readouterr()
    assert train_rl.main(["--resume", str(run_dir)], progress=False) == 0
    assert "has no checkpoint yet; training it from the start" in capsys.readouterr().out
    assert weights_hash(run_dir) == weights_hash(reference)
    assert (run_dir / "metrics.csv").read_text().count("\n") == rows.count("\n")
