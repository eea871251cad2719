"""The training-throughput benchmark's own logic (its timings are not asserted)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import train_rl
from agents.run_dir import RunDirError

ROOT = Path(__file__).resolve().parent.parent


def load_benchmark():
    spec = importlib.util.spec_from_file_location(
        "train_throughput", ROOT / "benchmarks" / "train_throughput.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_from_run_times_the_trained_weights_and_rejects_another_task(tmp_path):
    benchmark = load_benchmark()
    run_dir = tmp_path / "run"
    assert train_rl.main(["--env", "corridor", "--length", "6", "--num-envs", "8",
                          "--num-steps", "16", "--total-steps", "256", "--threads", "1",
                          "--run-dir", str(run_dir)], progress=False) == 0  # fmt: skip
    weights = benchmark.trained_weights(str(run_dir), 6)
    saved = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)["policy"]
    assert weights.keys() == saved.keys()
    assert all(torch.equal(weights[name], saved[name]) for name in saved)
    measured = benchmark.ours_steps_per_second(6, 0.01, "cpu", 8, 1, 1, weights)
    assert measured["trained_weights"] is True and measured["measured_updates"] >= 1
    assert measured["matmul_mflop_per_step"] > 0
    with pytest.raises(RunDirError, match=r"--from-run .*\"corridor\", 7, "):
        benchmark.trained_weights(str(run_dir), 7)
    with pytest.raises(RunDirError, match="does not exist"):
        benchmark.trained_weights(str(tmp_path / "missing"), 6)
