"""A gymnasium ``VectorEnv`` (numpy in, numpy out) backed by a batched torch task.

``gym.make_vec("ExpireRL/Corridor-v0", num_envs=64,
vectorization_mode="vector_entry_point")`` returns one of these, so gymnasium
and sb3 users get the fast path. It resets finished envs in the same step, as
the batched task does (``metadata["autoreset_mode"]`` is ``SAME_STEP``): the
last observation of a finished episode is in ``info["final_obs"]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.core import BatchedEnv


class NumpyVectorEnv(VectorEnv):
    """Wraps a :class:`~envs.core.BatchedEnv` behind gymnasium's vector API."""

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.SAME_STEP}  # noqa: RUF012

    def __init__(self, batched: BatchedEnv):
        self.batched = batched
        batched.keep_final_obs = True
        self.num_envs = batched.num_envs
        self.single_observation_space = batched.single_observation_space
        self.single_action_space = batched.single_action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)

    @staticmethod
    def _numpy(obs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        return {key: value.cpu().numpy() for key, value in obs.items()}

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        if isinstance(seed, (list, tuple)):
            seed = seed[0]
        return self._numpy(self.batched.reset(seed=seed)), {}

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict]:
        obs, reward, terminated, truncated, info = self.batched.step(
            torch.as_tensor(np.asarray(actions), device=self.batched.device)
        )
        done = (terminated | truncated).cpu().numpy()
        out: dict[str, Any] = {}
        for key, value in info.items():
            out[key] = self._numpy(value) if key == "final_obs" else value.cpu().numpy()
        out["_final_obs"] = done
        return (
            self._numpy(obs),
            reward.cpu().numpy().astype(np.float64),
            terminated.cpu().numpy(),
            truncated.cpu().numpy(),
            out,
        )
