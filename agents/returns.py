"""Advantage and value targets as pure functions of time-first [T, B] tensors.

Shape legend: T rollout steps, B envs.

Episode ends are kept apart: ``terminated[t]`` means the episode ended at
step t and its future is worth 0; ``truncated[t]`` means it was cut off by a
time limit, so its future is worth the value of the state it was cut off in,
``bootstrap_values[t]``. Either way nothing flows back across the boundary
from the next episode (the env has already reset).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

Tensor = torch.Tensor


def next_state_values(
    values: Tensor,
    last_values: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    bootstrap_values: Tensor,
) -> Tensor:
    """Value [T, B] of the state after each step within the same episode.

    ``values`` [T, B] are V(s_t), ``last_values`` [B] is V(s_T) after the
    rollout; at a terminated step the next value is 0, at a truncated one it
    is ``bootstrap_values[t]``.
    """
    following = torch.cat([values[1:], last_values[None]], dim=0)  # [T, B]
    following = torch.where(truncated, bootstrap_values, following)
    return torch.where(terminated, torch.zeros_like(following), following)


def gae(
    rewards: Tensor,
    values: Tensor,
    last_values: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    bootstrap_values: Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016).

    ``A_t = δ_t + γλ (1 - done_t) A_{t+1}`` with
    ``δ_t = r_t + γ V(next_t) - V(s_t)``. Returns (advantages, returns =
    advantages + values), each [T, B].
    """
    next_values = next_state_values(values, last_values, terminated, truncated, bootstrap_values)
    deltas = rewards + gamma * next_values - values  # [T, B]
    continues = (~(terminated | truncated)).to(values.dtype)
    advantages = torch.empty_like(values)
    running = torch.zeros_like(last_values)
    for t in reversed(range(len(rewards))):
        running = deltas[t] + gamma * gae_lambda * continues[t] * running
        advantages[t] = running
    return advantages, advantages + values


class VTraceReturns(NamedTuple):
    """V-trace targets ``vs`` [T, B] and policy-gradient advantages [T, B]."""

    vs: Tensor
    pg_advantages: Tensor


def vtrace(
    behaviour_log_probs: Tensor,
    target_log_probs: Tensor,
    rewards: Tensor,
    values: Tensor,
    last_values: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    bootstrap_values: Tensor,
    gamma: float,
    rho_clip: float = 1.0,
    c_clip: float = 1.0,
    vtrace_lambda: float = 1.0,
) -> VTraceReturns:
    """V-trace off-policy targets (Espeholt et al., 2018, eq. 1 and section 4.2).

    With ``ρ_t = min(ρ̄, π/μ)`` and ``c_t = λ min(c̄, π/μ)``:
    ``v_s = V(s_s) + δ_s + γ c_s (v_{s+1} - V(s_{s+1}))`` where
    ``δ_s = ρ_s (r_s + γ V(next_s) - V(s_s))``, and the policy-gradient
    advantage is ``ρ_s (r_s + γ v_{s+1} - V(s_s))``. At an episode end the
    recursion stops: ``v_{s+1}`` is replaced by the next-state value (0 when
    terminated, the bootstrap value when truncated). Inputs are [T, B]
    (``last_values`` [B]); nothing here carries gradient.
    """
    with torch.no_grad():
        ratios = (target_log_probs - behaviour_log_probs).exp()
        rhos = ratios.clamp(max=rho_clip)
        cs = vtrace_lambda * ratios.clamp(max=c_clip)
        next_values = next_state_values(
            values, last_values, terminated, truncated, bootstrap_values
        )
        deltas = rhos * (rewards + gamma * next_values - values)  # [T, B]
        continues = (~(terminated | truncated)).to(values.dtype)
        corrections = torch.empty_like(values)  # v_s - V(s_s)
        running = torch.zeros_like(last_values)
        for t in reversed(range(len(rewards))):
            running = deltas[t] + gamma * continues[t] * cs[t] * running
            corrections[t] = running
        vs = values + corrections
        # v_{s+1} where the episode goes on, the plain next-state value where it ended.
        vs_next = torch.cat([vs[1:], last_values[None]], dim=0)
        vs_next = torch.where(continues.bool(), vs_next, next_values)
        pg_advantages = rhos * (rewards + gamma * vs_next - values)
    return VTraceReturns(vs, pg_advantages)
