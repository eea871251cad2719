"""PPO for memory policies (Schulman et al., 2017), recurrent in the CleanRL way.

Shape legend: T rollout steps, b envs of a minibatch.

Minibatches are whole env columns; each is replayed chunk by chunk from the
memory state stored at the chunk's start during the rollout, so the first
epoch reproduces the rollout exactly (log-ratio 0) and gradients flow within
a chunk. Loss = clipped policy loss + vf_coef · value loss − ent_coef ·
entropy + the policy's auxiliary loss (the Expire-Span span loss). Advantages
are normalised per minibatch (over every rank's part of it under torchrun).
"""

from __future__ import annotations

import torch

from agents.learner import Learner, Replay
from agents.returns import gae
from agents.rollout import Rollout

Tensor = torch.Tensor


class PPO(Learner):
    """Clipped-objective PPO with GAE advantages."""

    def targets(self, rollout: Rollout) -> tuple[Tensor, Tensor]:
        # A truncated episode bootstraps from the value of its last observed state (the
        # final observation's own value would need one more pass of the memory core).
        terminated, truncated = self.episode_ends(rollout)
        return gae(
            rollout.rewards, rollout.values, rollout.last_values, terminated, truncated,
            rollout.values, self.config.gamma, self.config.gae_lambda,
        )  # fmt: skip

    def losses(
        self, rollout: Rollout, replay: Replay, columns: Tensor, targets: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        config = self.config
        advantages, returns = targets
        log_ratio = replay.log_probs - rollout.log_probs[:, columns]  # [T, b]
        ratio = log_ratio.exp()
        adv = advantages[:, columns]
        # Under torchrun: normalised by the whole minibatch's statistics, every rank's part.
        mean, std = self.world.mean_and_std(adv)
        adv = (adv - mean) / std.clamp_min(config.adv_std_floor)
        clipped = ratio.clamp(1 - config.clip_coef, 1 + config.clip_coef)
        policy_loss = torch.max(-adv * ratio, -adv * clipped).mean()
        value_loss = 0.5 * (replay.values - returns[:, columns]).pow(2).mean()
        with torch.no_grad():
            extra = {
                "approx_kl": ((ratio - 1) - log_ratio).mean(),
                "clip_fraction": ((ratio - 1).abs() > config.clip_coef).float().mean(),
            }
        return policy_loss, value_loss, extra
