"""GAE and V-trace against hand-computed values and slow loops written like the papers."""

import math

import pytest
import torch

from agents.returns import gae, vtrace

GAMMA, LAMBDA = 0.9, 0.8


def column(*values):
    return torch.tensor(values, dtype=torch.float64)[:, None]  # [T, 1]


def flags(*values):
    return torch.tensor(values, dtype=torch.bool)[:, None]


def test_gae_by_hand_with_termination_and_truncation():
    # Steps: 0, 1 (terminated), 2, 3 (truncated, bootstrap 5.0), 4; then V(s_5) = 2.0.
    rewards = column(1.0, 2.0, 0.0, 1.0, 3.0)
    values = column(0.5, 1.0, 1.5, 2.5, 1.0)
    terminated = flags(False, True, False, False, False)
    truncated = flags(False, False, False, True, False)
    bootstrap = column(0.0, 0.0, 0.0, 5.0, 0.0)
    last = torch.tensor([2.0], dtype=torch.float64)
    advantages, returns = gae(
        rewards, values, last, terminated, truncated, bootstrap, GAMMA, LAMBDA
    )
    d4 = 3.0 + 0.9 * 2.0 - 1.0  # 3.8
    d3 = 1.0 + 0.9 * 5.0 - 2.5  # 3.0, bootstrapped from the truncated state's value
    d2 = 0.0 + 0.9 * 2.5 - 1.5  # 0.75
    d1 = 2.0 + 0.0 - 1.0  # 1.0, terminated: no future
    d0 = 1.0 + 0.9 * 1.0 - 0.5  # 1.4
    a4 = d4
    a3 = d3  # nothing flows back from the next episode
    a2 = d2 + 0.72 * a3
    a1 = d1
    a0 = d0 + 0.72 * a1
    expected = column(a0, a1, a2, a3, a4)
    assert torch.allclose(advantages, expected)
    assert torch.allclose(returns, expected + values)


def slow_vtrace(mu, pi, rewards, values, last, terminated, truncated, bootstrap, rho_bar, c_bar):
    """Espeholt et al. eq. 1 written out as sums of products, one env, one step at a time."""
    steps = len(rewards)
    rho = [min(rho_bar, math.exp(pi[t] - mu[t])) for t in range(steps)]
    c = [min(c_bar, math.exp(pi[t] - mu[t])) for t in range(steps)]

    def next_value(t):
        if terminated[t]:
            return 0.0
        if truncated[t]:
            return bootstrap[t]
        return values[t + 1] if t + 1 < steps else last

    def episode_end(t):  # the last step of the episode that contains step s
        while t < steps - 1 and not (terminated[t] or truncated[t]):
            t += 1
        return t

    vs = []
    for s in range(steps):
        total = values[s]
        for t in range(s, episode_end(s) + 1):
            product = math.prod(c[s:t])
            delta = rho[t] * (rewards[t] + GAMMA * next_value(t) - values[t])
            total += GAMMA ** (t - s) * product * delta
        vs.append(total)
    advantages = []
    for s in range(steps):
        ended = terminated[s] or truncated[s]
        v_next = next_value(s) if ended else (vs[s + 1] if s + 1 < steps else last)
        advantages.append(rho[s] * (rewards[s] + GAMMA * v_next - values[s]))
    return vs, advantages


@pytest.mark.parametrize("seed", range(5))
def test_vtrace_matches_the_papers_formula(seed):
    generator = torch.Generator().manual_seed(seed)
    steps, envs_ = 12, 3
    shape = (steps, envs_)
    mu = -torch.rand(shape, generator=generator, dtype=torch.float64) * 2
    pi = -torch.rand(shape, generator=generator, dtype=torch.float64) * 2
    rewards = torch.randn(shape, generator=generator, dtype=torch.float64)
    values = torch.randn(shape, generator=generator, dtype=torch.float64)
    bootstrap = torch.randn(shape, generator=generator, dtype=torch.float64)
    last = torch.randn(envs_, generator=generator, dtype=torch.float64)
    ends = torch.rand(shape, generator=generator)
    terminated, truncated = ends < 0.15, (ends >= 0.15) & (ends < 0.25)
    out = vtrace(
        mu,
        pi,
        rewards,
        values,
        last,
        terminated,
        truncated,
        bootstrap,
        GAMMA,
        rho_clip=1.0,
        c_clip=0.9,
    )
    for b in range(envs_):
        vs, advantages = slow_vtrace(
            mu[:, b].tolist(),
            pi[:, b].tolist(),
            rewards[:, b].tolist(),
            values[:, b].tolist(),
            float(last[b]),
            terminated[:, b].tolist(),
            truncated[:, b].tolist(),
            bootstrap[:, b].tolist(),
            1.0,
            0.9,
        )
        assert torch.allclose(out.vs[:, b], torch.tensor(vs, dtype=torch.float64))
        assert torch.allclose(
            out.pg_advantages[:, b], torch.tensor(advantages, dtype=torch.float64)
        )


def test_on_policy_vtrace_is_the_n_step_return():
    # With π = μ and no clipping in effect, v_s is the discounted return bootstrapped at the end.
    rewards = column(1.0, 0.0, 2.0)
    values = column(0.3, -0.2, 0.7)
    log_probs = column(-0.5, -1.0, -0.1)
    no = flags(False, False, False)
    last = torch.tensor([4.0], dtype=torch.float64)
    out = vtrace(
        log_probs, log_probs, rewards, values, last, no, no, torch.zeros_like(values), GAMMA
    )
    expected_v0 = 1.0 + 0.9 * 0.0 + 0.81 * 2.0 + 0.729 * 4.0
    assert math.isclose(float(out.vs[0, 0]), expected_v0)
    # ... and the advantages of GAE with λ = 1.
    advantages, _ = gae(rewards, values, last, no, no, torch.zeros_like(values), GAMMA, 1.0)
    assert torch.allclose(out.pg_advantages[0], rewards[0] + GAMMA * out.vs[1] - values[0])
    assert torch.allclose(out.vs - values, advantages)


def test_time_outs_can_count_as_episode_ends():
    from types import SimpleNamespace

    from agents.learner import Learner

    rollout = SimpleNamespace(
        terminated=flags(False, True, False), truncated=flags(True, False, False)
    )
    learner = SimpleNamespace(config=SimpleNamespace(bootstrap_truncated=False))
    terminated, truncated = Learner.episode_ends(learner, rollout)
    assert terminated[:, 0].tolist() == [True, True, False] and not truncated.any()
    learner.config.bootstrap_truncated = True
    terminated, truncated = Learner.episode_ends(learner, rollout)
    assert terminated[:, 0].tolist() == [False, True, False]
    assert truncated[:, 0].tolist() == [True, False, False]
