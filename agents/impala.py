"""IMPALA-style actor-critic with V-trace targets (Espeholt et al., 2018).

Shape legend: T rollout steps, b envs of a minibatch.

Same rollouts as PPO; the policy that collected a rollout (the behaviour
policy μ) lags the one being trained (π) by the minibatches already taken,
and V-trace corrects for that lag with truncated importance weights.
Loss = −ρ-weighted advantage · log π + vf_coef · ½ (v_s − V)² − ent_coef ·
entropy + the policy's auxiliary (span) loss.
"""

from __future__ import annotations

import torch

from agents.learner import Learner, Replay, mean_metrics
from agents.returns import vtrace
from agents.rollout import Rollout

Tensor = torch.Tensor


class IMPALA(Learner):
    """Actor-critic learner with V-trace value targets and policy-gradient advantages."""

    def _update(self, rollout: Rollout) -> dict[str, Tensor]:
        config = self.config
        history = []
        for _ in range(config.update_epochs):
            for columns in self.minibatches():
                columns = columns.to(rollout.actions.device)
                replay = Replay(self.policy, rollout, columns)
                values = replay.values.detach()
                targets = vtrace(
                    rollout.log_probs[:, columns], replay.log_probs.detach(),
                    rollout.rewards[:, columns], values, rollout.last_values[columns],
                    rollout.terminated[:, columns], rollout.truncated[:, columns], values,
                    config.gamma, config.rho_clip, config.c_clip,
                )  # fmt: skip
                policy_loss = -(targets.pg_advantages * replay.log_probs).mean()
                value_loss = 0.5 * (replay.values - targets.vs).pow(2).mean()
                entropy = replay.entropy.mean()
                aux_loss = replay.output.aux_loss
                loss = (policy_loss + config.vf_coef * value_loss - config.ent_coef * entropy
                        + aux_loss)  # fmt: skip
                grad_norm = self.optimise(loss)
                with torch.no_grad():
                    log_ratio = replay.log_probs - rollout.log_probs[:, columns]
                    history.append({
                        "policy_loss": policy_loss.detach(),
                        "value_loss": value_loss.detach(),
                        "entropy": entropy.detach(),
                        "aux_loss": aux_loss.detach(),
                        "approx_kl": (log_ratio.exp() - 1 - log_ratio).mean(),
                        "clip_fraction": (log_ratio.exp() > config.rho_clip).float().mean(),
                        "grad_norm": grad_norm.detach(),
                    })  # fmt: skip
        return mean_metrics(history)
