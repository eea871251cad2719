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

from agents.learner import Learner, Replay
from agents.returns import vtrace
from agents.rollout import Rollout

Tensor = torch.Tensor


class IMPALA(Learner):
    """Actor-critic learner with V-trace value targets and policy-gradient advantages."""

    def losses(
        self, rollout: Rollout, replay: Replay, columns: Tensor, targets: None
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        config = self.config
        values = replay.values.detach()
        terminated, truncated = self.episode_ends(rollout)
        vtrace_targets = vtrace(
            rollout.log_probs[:, columns], replay.log_probs.detach(),
            rollout.rewards[:, columns], values, rollout.last_values[columns],
            terminated[:, columns], truncated[:, columns], values,
            config.gamma, config.rho_clip, config.c_clip,
        )  # fmt: skip
        policy_loss = -(vtrace_targets.pg_advantages * replay.log_probs).mean()
        value_loss = 0.5 * (replay.values - vtrace_targets.vs).pow(2).mean()
        with torch.no_grad():
            log_ratio = replay.log_probs - rollout.log_probs[:, columns]
            extra = {
                "approx_kl": (log_ratio.exp() - 1 - log_ratio).mean(),
                "clip_fraction": (log_ratio.exp() > config.rho_clip).float().mean(),
            }
        return policy_loss, value_loss, extra
