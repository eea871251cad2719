"""The learner's contract with the collector and the optimiser (a fresh cache and the clip)."""

from pathlib import Path

import torch

from agents.learner import Replay
from agents.resolve import resolve
from agents.run_dir import RunDir
from agents.train_args import TrainArgs
from agents.trainer import Trainer


def tiny_trainer(tmp_path: Path, **overrides) -> Trainer:
    args = TrainArgs(env="corridor", length=6, num_envs=4, num_steps=16, chunk_length=8,
                num_minibatches=2, update_epochs=2, total_steps=4096, d_model=16, threads=1,
                **overrides)  # fmt: skip
    config = resolve(args)
    return Trainer(config, RunDir.create(tmp_path / "run", config), progress=False)


def test_replay_of_a_fresh_rollout_reproduces_the_behaviour_policy(tmp_path):
    """After an update, the next rollout is collected with the new parameters only: the
    learner's replay of it gives back its log-probabilities and values (no stale key cache)."""
    trainer = tiny_trainer(tmp_path)
    trainer.learner.update(trainer.collector.collect())
    for _ in range(2):  # memories cached across the update are carried into this rollout
        rollout = trainer.collector.collect()
    columns = torch.arange(rollout.actions.shape[1])
    with torch.no_grad():
        replay = Replay(trainer.policy, rollout, columns)
    torch.testing.assert_close(replay.log_probs, rollout.log_probs, rtol=0, atol=1e-5)
    torch.testing.assert_close(replay.values, rollout.values, rtol=0, atol=1e-5)


def test_the_span_loss_does_not_shrink_the_policy_gradient(tmp_path):
    """Each parameter group is clipped on its own: a huge span loss leaves the main group's
    gradient exactly as the task loss alone makes it."""
    grads = []
    for coef in (0.0, 1000.0):
        trainer = tiny_trainer(tmp_path / str(coef), span_loss_coef=coef, max_span=3000)
        rollout = trainer.collector.collect()
        replay = Replay(trainer.policy, rollout, torch.arange(4))
        task_loss = -replay.log_probs.mean() + replay.values.pow(2).mean()
        trainer.learner.optimise(task_loss + replay.output.aux_loss)
        main = trainer.learner.optimizer.param_groups[0]["params"]
        grads.append(torch.cat([p.grad.flatten() for p in main if p.grad is not None]))
        span = trainer.learner.optimizer.param_groups[1]["params"]
        span_norm = torch.cat([p.grad.flatten() for p in span]).norm()
        assert span_norm <= trainer.config.learner.max_grad_norm + 1e-6
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=1e-9)
