"""Build env and policy from a TrainConfig (shared by training, evaluation and benchmarks)."""

from __future__ import annotations

from typing import Any

import torch

import envs
from agents.run_config import TrainConfig
from envs.last_step import LastStepEnv
from policies.policy import MemoryPolicy, make_policy


def make_env(
    config: TrainConfig, num_envs: int | None = None, device: str | None = None,
    seed: int | None = None, **overrides: Any,
) -> Any:  # fmt: skip
    """The batched env of a run (``overrides`` change task parameters, e.g. a longer length)."""
    num_envs = config.learner.num_envs if num_envs is None else num_envs
    device = config.run.device if device is None else device
    seed = config.run.seed if seed is None else seed
    kwargs = {**config.env_kwargs, **overrides}
    if config.env in envs.TASKS:
        env = envs.make_batched(config.env, num_envs, device=device, seed=seed, **kwargs)
    else:
        from envs.gym_adapter import GymBatchedEnv

        env = GymBatchedEnv(config.env, num_envs, device=device, seed=seed, **kwargs)
    return LastStepEnv(env) if config.learner.last_action_reward else env


def build_policy(config: TrainConfig, env: Any, device: str | torch.device) -> MemoryPolicy:
    """The run's policy for ``env``'s spaces, on ``device``."""
    policy = make_policy(
        config.policy, env.single_observation_space, int(env.single_action_space.n),
        **config.policy_kwargs,
    )  # fmt: skip
    return policy.to(device)
