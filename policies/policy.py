"""`MemoryPolicy`: observation encoder -> memory core -> actor and critic heads.

Shape legend: T time, B env columns, A actions, D model dim, L layers.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, NamedTuple

import gymnasium as gym
import torch
from torch import nn

from policies.config import SPAN_LR_SCALE, PolicyConfig, build_config
from policies.core import MemoryCore
from policies.encoder import Obs, ObservationDecoder, ObservationEncoder
from policies.expire_span import ExpireSpanCore
from policies.lstm import LSTMCore
from policies.state import State
from policies.trxl import TransformerXLCore

Tensor = torch.Tensor

CORE_CLASSES: dict[str, type[MemoryCore]] = {
    "expire_span": ExpireSpanCore,
    "trxl": TransformerXLCore,
    "lstm": LSTMCore,
}


class PolicyOutput(NamedTuple):
    """Outputs of `MemoryPolicy.forward` for a chunk [T, B]. Every field is a tensor on the
    policy's device; the statistics (the last three fields) are detached: read them (``.item()``,
    ``.tolist()``) only when logging, so stepping never waits for the device."""

    logits: Tensor
    """[T, B, A] action logits."""
    values: Tensor
    """[T, B] state values."""
    aux_loss: Tensor
    """[] auxiliary loss to add to the actor-critic loss: the span loss (0 for trxl and lstm),
    plus the observation reconstruction loss when ``reconstruction_coef`` > 0 and autograd is
    on (training)."""
    memory_alive: Tensor
    """[B, L] memories alive for the next step, per env and layer (shape [B, 0] for lstm)."""
    span_mean: Tensor
    """[L] mean span of the chunk's new memories per layer (shape [0] without spans)."""
    spans: Tensor
    """[T, B, L] span of each new memory per layer, for diagnostics ([T, B, 0] without spans)."""


class MemoryPolicy(nn.Module):
    """An actor-critic with a recurrent memory core; build it with `make_policy`."""

    def __init__(
        self,
        kind: str,
        config: PolicyConfig,
        observation_space: gym.Space,
        num_actions: int,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.config = config
        self.observation_space = observation_space
        self.num_actions = num_actions
        self.encoder = ObservationEncoder(observation_space, config.d_model, config.encoder_hidden,
                                          config.cell_embed_dim, config.token_embed_dim,
                                          config.egocentric)
        self.core = CORE_CLASSES[kind](config)
        self.decoder = (ObservationDecoder(observation_space, config.d_model,
                                           config.encoder_hidden)
                        if config.reconstruction_coef > 0 else None)  # fmt: skip
        self.actor = nn.Linear(config.d_model, num_actions)
        self.critic = nn.Linear(config.d_model, 1)
        # Orthogonal heads as in CleanRL, but see PolicyConfig.actor_init_gain for the actor.
        nn.init.orthogonal_(self.actor.weight, gain=config.actor_init_gain)
        nn.init.orthogonal_(self.critic.weight, gain=1.0)
        nn.init.zeros_(self.critic.bias)
        with torch.no_grad():
            bias = config.actor_bias_init or (0.0,) * num_actions
            self.actor.bias.copy_(torch.tensor(bias))

    def config_dict(self) -> dict[str, Any]:
        """The config as plain data: ``make_policy(kind, space, num_actions, **config_dict())``
        rebuilds this policy."""
        return dataclasses.asdict(self.config)

    def initial_state(self, num_envs: int, device: torch.device | str | None = None) -> State:
        """The state of ``num_envs`` envs before their first step (on the policy's device by
        default)."""
        reference = self.actor.weight
        device = reference.device if device is None else torch.device(device)
        return State(self.kind, self.core.initial_state(num_envs, device, reference.dtype))

    def forward(
        self, obs: Obs, state: State, episode_starts: Tensor
    ) -> tuple[PolicyOutput, State]:
        """Run ``obs`` [T, B, ...] from ``state``; ``episode_starts[t, b]`` means ``obs[t, b]``
        begins a new episode (nothing before it influences outputs at or after t)."""
        if episode_starts.dim() != 2:
            raise ValueError(
                f"episode_starts must be [T, B], got shape {tuple(episode_starts.shape)}")
        if state.kind != self.kind:
            raise ValueError(f"state of a {state.kind!r} policy given to a {self.kind!r} policy")
        if state.num_envs != episode_starts.shape[1]:
            raise ValueError(f"state has {state.num_envs} envs, episode_starts "
                             f"{episode_starts.shape[1]} (shape [T, B])")
        x = self.encoder(obs)  # [T, B, D]
        core = self.core(x, state.tensors, episode_starts.to(torch.bool))
        aux_loss = core.aux_loss
        if self.decoder is not None and torch.is_grad_enabled():  # a loss for training only
            aux_loss = aux_loss + self.config.reconstruction_coef * self.decoder.loss(
                core.features, obs)
        output = PolicyOutput(
            logits=self.actor(core.features),
            values=self.critic(core.features).squeeze(-1),  # [T, B, 1] -> [T, B]
            aux_loss=aux_loss,
            memory_alive=core.alive.detach(),
            span_mean=core.spans.detach().mean(dim=(0, 1)),
            spans=core.spans.detach(),
        )
        return output, State(self.kind, core.state)

    def span_parameters(self) -> list[nn.Parameter]:
        """The span predictors' parameters (empty for trxl and lstm)."""
        return self.core.span_parameters()

    def param_groups(self, lr: float, span_lr_scale: float = SPAN_LR_SCALE) -> list[dict]:
        """Optimizer parameter groups: everything at ``lr``, the span predictors at
        ``lr * span_lr_scale`` (a lower span learning rate keeps learned spans stable,
        ``docs/experiments.md``). Each group carries a ``name`` ("main" or "span")."""
        span = self.span_parameters()
        span_ids = {id(p) for p in span}
        main = [p for p in self.parameters() if id(p) not in span_ids]
        groups = [{"name": "main", "params": main, "lr": lr}]
        if span:
            groups.append({"name": "span", "params": span, "lr": lr * span_lr_scale})
        return groups


def make_policy(
    kind: str, observation_space: gym.Space, num_actions: int, **config: Any
) -> MemoryPolicy:
    """Build a `MemoryPolicy` with core ``kind`` ("expire_span", "trxl" or "lstm").

    ``config`` holds the fields of the kind's config class (`policies.config`); unknown
    kinds, unknown keys and bad values raise ValueError naming the value and what is allowed.
    """
    cfg = build_config(kind, config)
    if isinstance(num_actions, bool) or not isinstance(num_actions, numbers.Integral) or (
        num_actions < 1
    ):
        raise ValueError(f"num_actions must be an integer >= 1, got {num_actions!r}")
    num_actions = int(num_actions)
    if cfg.actor_bias_init is not None and len(cfg.actor_bias_init) != num_actions:
        raise ValueError(f"actor_bias_init must have one entry per action ({num_actions}), "
                         f"got {len(cfg.actor_bias_init)}")
    return MemoryPolicy(kind, cfg, observation_space, num_actions)
