"""What PPO and the IMPALA-style learner share: optimiser, schedule, replay of chunks.

Shape legend: T rollout steps, B envs, b envs of a minibatch, C chunks, L chunk length.

Under torchrun each rank learns from its own rollout (its B / N env columns) and
the ranks' gradients are averaged before clipping (`agents.distributed`); a
minibatch is the union of the ranks' minibatches.
"""

from __future__ import annotations

import abc
from typing import Any

import torch
from torch.distributions import Categorical

from agents.distributed import SINGLE, World
from agents.rollout import Rollout, chunk_columns, chunked, unchunk
from agents.run_config import LearnerConfig
from policies.policy import MemoryPolicy, PolicyOutput

Tensor = torch.Tensor


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training must stop."""


class Replay:
    """The current policy's outputs on a minibatch of rollout columns, time-first [T, b]."""

    def __init__(self, policy: MemoryPolicy, rollout: Rollout, columns: Tensor):
        obs, starts, state = chunked(rollout, columns)
        output, _ = policy(obs, state, starts)
        num_chunks = len(rollout.start_states)
        distribution = Categorical(logits=output.logits, validate_args=False)  # no host sync
        actions = chunk_columns(rollout.actions, rollout, columns)
        self.log_probs = unchunk(distribution.log_prob(actions), num_chunks)  # [T, b]
        self.entropy = unchunk(distribution.entropy(), num_chunks)  # [T, b]
        self.values = unchunk(output.values, num_chunks)  # [T, b]
        self.output: PolicyOutput = output


class Learner(abc.ABC):
    """Adam over the policy (span predictors at a lower rate), linear LR annealing,
    gradient clipping and a stop on a non-finite loss."""

    def __init__(self, policy: MemoryPolicy, config: LearnerConfig, seed: int,
                 world: World = SINGLE):  # fmt: skip
        """``config.num_envs`` counts the envs of all ranks of ``world``; this rank learns
        from its share of them. ``seed`` orders this rank's minibatches."""
        self.policy, self.config, self.world = policy, config, world
        self.num_envs = config.num_envs // world.size
        self.optimizer = torch.optim.Adam(
            policy.param_groups(config.learning_rate, config.span_lr_scale), eps=1e-5
        )
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.num_updates = config.total_steps // (config.num_envs * config.num_steps)
        self.update_count = 0
        self.ent_coef = config.ent_coef  # the trainer moves it with a length curriculum
        self.generator = torch.Generator().manual_seed(seed)  # minibatch order

    def set_span_lr_scale(self, scale: float) -> None:
        """Move the span predictors' base learning rate to ``scale`` x the main one."""
        for index, group in enumerate(self.optimizer.param_groups):
            if group.get("name") == "span":
                self.base_lrs[index] = self.config.learning_rate * scale

    def set_learning_rate(self) -> float:
        """Anneal linearly from the base rate to 0 over the run; return the main rate."""
        fraction = 1.0
        if self.config.anneal_lr:
            fraction = 1.0 - self.update_count / max(self.num_updates, 1)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * fraction
        return self.optimizer.param_groups[0]["lr"]

    def minibatches(self) -> list[Tensor]:
        """A random split of this rank's env columns into ``num_minibatches`` groups."""
        order = torch.randperm(self.num_envs, generator=self.generator)
        return list(order.chunk(self.config.num_minibatches))

    def optimise(self, loss: Tensor) -> Tensor:
        """One gradient step; raises NonFiniteLossError before touching the weights.

        Each parameter group is clipped to ``max_grad_norm`` on its own, and the main group's
        norm is returned. The span loss's gradient grows with L_max: measured at the start of
        corridor-1000 training (L_max 3016), 45 for the span group against 1-16 for the rest,
        so one global clip scaled the policy's gradient by about 0.01, erratically from one
        minibatch to the next.

        Under torchrun the clip sees the gradient averaged over the ranks."""
        self.backward(loss)
        norms = [
            torch.nn.utils.clip_grad_norm_(group["params"], self.config.max_grad_norm)
            for group in self.optimizer.param_groups
        ]
        self.optimizer.step()
        return norms[0]

    def backward(self, loss: Tensor) -> None:
        """Fill the gradients from ``loss``: under torchrun, the mean of every rank's (a
        non-finite loss on any rank stops them all); NonFiniteLossError before any
        gradient is used."""
        distributed = self.world.distributed
        if not distributed and not torch.isfinite(loss):
            raise NonFiniteLossError(f"loss is {loss.item()} at update {self.update_count}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if not distributed:
            return
        # The ranks' losses are checked in the gradients' all-reduce: one exchange, and every
        # rank stops together instead of leaving the others waiting for its gradient.
        parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        bad = self.world.average_gradients(parameters, loss)
        if bad:
            here = f"is {loss.item()}" if not torch.isfinite(loss) else "is not finite"
            raise NonFiniteLossError(f"loss {here} on {bad} of {self.world.size} processes "
                                     f"at update {self.update_count}")  # fmt: skip

    def update(self, rollout: Rollout) -> dict[str, Tensor]:
        """Learn from one rollout; returns metrics as 0-d tensors (read them when logging).

        Epochs of minibatches of env columns; each minibatch is replayed by the current
        policy and its loss is ``policy + vf_coef · value − ent_coef · entropy + aux`` with
        the policy and value terms from the algorithm (:meth:`losses`).
        """
        learning_rate = self.set_learning_rate()
        config = self.config
        targets = self.targets(rollout)
        history = []
        for _ in range(config.update_epochs):
            for columns in self.minibatches():
                columns = columns.to(rollout.actions.device)
                replay = Replay(self.policy, rollout, columns)
                policy_loss, value_loss, extra = self.losses(rollout, replay, columns, targets)
                entropy = replay.entropy.mean()
                aux_loss = replay.output.aux_loss
                loss = (policy_loss + config.vf_coef * value_loss - self.ent_coef * entropy
                        + aux_loss)  # fmt: skip
                grad_norm = self.optimise(loss)
                history.append({
                    "policy_loss": policy_loss.detach(),
                    "value_loss": value_loss.detach(),
                    "entropy": entropy.detach(),
                    "aux_loss": aux_loss.detach(),
                    "grad_norm": grad_norm.detach(),
                    **extra,
                })  # fmt: skip
        self.update_count += 1
        metrics = mean_metrics(history)
        metrics["learning_rate"] = torch.tensor(learning_rate)
        metrics["ent_coef"] = torch.tensor(self.ent_coef)
        return metrics

    def episode_ends(self, rollout: Rollout) -> tuple[Tensor, Tensor]:
        """(terminated, truncated) as the returns see them: with ``bootstrap_truncated`` off
        a time-out ends the episode like a termination."""
        if self.config.bootstrap_truncated:
            return rollout.terminated, rollout.truncated
        return rollout.terminated | rollout.truncated, torch.zeros_like(rollout.truncated)

    def targets(self, rollout: Rollout) -> Any:
        """What the algorithm computes once per rollout (e.g. GAE advantages)."""
        return None

    @abc.abstractmethod
    def losses(
        self, rollout: Rollout, replay: Replay, columns: Tensor, targets: Any
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(policy loss, value loss, detached extra metrics) of one minibatch."""

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "update_count": self.update_count,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, data: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(data["optimizer"])
        self.update_count = data["update_count"]
        self.generator.set_state(data["generator"])


def mean_metrics(history: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Average per-minibatch metric tensors (still on the device)."""
    return {key: torch.stack([m[key] for m in history]).mean() for key in history[0]}
