"""The CUDA path: the same tasks, policies and learner on a GPU (skipped without one).

CI has no GPU; run these where one is at hand (``pytest tests/test_cuda.py``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from test_policies_interface import build, random_obs, random_starts, run_chunks

import envs
import evaluate as evaluate_cli
import train_rl
from agents.evaluate import OracleAgent, evaluate
from agents.learner import Replay
from agents.resolve import resolve
from agents.run_dir import RunDir
from agents.train_args import TrainArgs
from agents.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TASKS = [
    ("corridor", {"length": 7}),
    ("portal", {"num_rooms": 2, "room_length": 3, "max_steps": 60}),
    ("instruction", {"size": 3, "delay_min": 10, "delay_max": 12, "max_steps": 60}),
]


@pytest.mark.parametrize(("name", "kwargs"), TASKS, ids=[name for name, _ in TASKS])
def test_oracle_scores_the_same_on_cuda_as_on_cpu(name, kwargs):
    """The sync-free reset path (every env draws, ``torch.where`` keeps the running ones)
    plays by the same rules as the CPU one: the oracle solves every episode on both. (The
    episodes themselves differ: the two paths draw different random numbers.)"""
    results = {}
    for device in ("cpu", "cuda"):
        env = envs.make_batched(name, 6, device=device, seed=3, **kwargs)
        assert env.sync_free == (device == "cuda")
        results[device] = evaluate(env, OracleAgent(env), episodes=30, seed=3)
    assert results["cuda"].success_rate == results["cpu"].success_rate == 1.0
    for result in results.values():
        if name == "corridor":
            assert result.mean_return == 1.0 and result.mean_length == 8
        if name == "portal":
            assert result.counters["goals"] == 60 // (2 * 4)
        if name == "instruction":
            assert result.counters["instructions_carried_fraction"] == 1.0


@pytest.mark.parametrize("kind", ["expire_span", "trxl", "lstm"])
def test_policy_outputs_on_cuda_match_cpu(kind):
    """Same weights and inputs (float64): logits and values agree, streamed or in one call."""
    policy = build(kind)
    generator = torch.Generator().manual_seed(4)
    obs = random_obs(40, 3, generator)
    starts = random_starts(40, 3, generator)
    expected = run_chunks(policy, obs, starts, policy.initial_state(3), [40])[:2]
    policy = policy.cuda()
    obs = {key: value.cuda() for key, value in obs.items()}
    for sizes in ([40], [1] * 40):
        got = run_chunks(policy, obs, starts.cuda(), policy.initial_state(3, "cuda"), sizes)[:2]
        for tensor, reference in zip(got, expected, strict=True):
            assert tensor.device.type == "cuda"
            torch.testing.assert_close(tensor.cpu(), reference, rtol=0, atol=1e-9)


def cuda_trainer(tmp_path: Path, **overrides) -> Trainer:
    args = TrainArgs(env="corridor", length=6, num_envs=16, num_steps=64, chunk_length=16,
                num_minibatches=2, update_epochs=2, total_steps=65536, d_model=16,
                device="cuda", **overrides)  # fmt: skip
    config = resolve(args)
    return Trainer(config, RunDir.create(tmp_path / "run", config), progress=False)


def test_a_rollout_waits_on_the_host_only_to_compact_memory(tmp_path):
    """No step of the rollout synchronises with the host, except the Expire-Span buffer's
    compaction, once per ``compact_interval`` steps and layer."""
    trainer = cuda_trainer(tmp_path)
    trainer.collector.collect()  # warm-up: lazy initialisation may synchronise once
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.collector.collect()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "called a synchronizing" in str(w.message)]
    core = trainer.policy.core
    allowed = 64 // core.compact_interval * core.num_layers
    assert len(syncs) <= allowed, [str(w.message) for w in syncs[:3]]


def test_the_learner_replays_a_cuda_rollout_exactly(tmp_path):
    trainer = cuda_trainer(tmp_path)
    trainer.learner.update(trainer.collector.collect())
    rollout = trainer.collector.collect()
    assert rollout.actions.device.type == "cuda"
    columns = torch.arange(rollout.actions.shape[1], device="cuda")
    with torch.no_grad():
        replay = Replay(trainer.policy, rollout, columns)
    torch.testing.assert_close(replay.log_probs, rollout.log_probs, rtol=0, atol=1e-4)
    torch.testing.assert_close(replay.values, rollout.values, rtol=0, atol=1e-4)


@pytest.mark.parametrize("policy", ["expire_span", "trxl", "lstm"])
@pytest.mark.parametrize("algo", ["ppo", "impala"])
def test_train_and_evaluate_on_cuda(tmp_path, capsys, policy, algo):
    run_dir = tmp_path / "run"
    argv = ["--env", "corridor", "--length", "4", "--num-envs", "8", "--num-steps", "16",
            "--num-minibatches", "2", "--update-epochs", "2", "--log-interval", "1",
            "--total-steps", "384", "--device", "cuda", "--policy", policy, "--algo", algo,
            "--run-dir", str(run_dir)]  # fmt: skip
    assert train_rl.main(argv, progress=False) == 0
    assert json.loads((run_dir / "config.json").read_text())["run"]["device"] == "cuda"
    assert RunDir.open(run_dir).load_checkpoint()["global_step"] == 384
    assert evaluate_cli.main([str(run_dir), "--episodes", "16", "--device", "cuda"]) == 0
    summary = json.loads((run_dir / "eval.json").read_text())
    assert summary["episodes"] == 16 and 0.0 <= summary["success_rate"] <= 1.0
    capsys.readouterr()
