"""Show the agent its own previous action and reward, as two more observation fields.

Shape legend: B num_envs, A actions.

A memory policy reads only observations, so where an action's outcome is not
visible the policy cannot remember it. On Portal both portals look alike, the
next room does not show which one was taken, and a trip through the last room's
right portal looks like a wrong portal (both lead back to the first room) but
for the reward. With ``--last-action-reward`` the batched env's observation
gains ``last_action`` (``Discrete(A + 1)``: 0 on an episode's first step,
``a + 1`` after action ``a``) and ``last_reward`` (``float32[1]``: 0 on an
episode's first step), as in RL² (Duan et al., 2016). They are observation fields
like any other: stored in the rollout, embedded, replayed by the learner,
rebuilt for evaluation.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

Tensor = torch.Tensor

LAST_ACTION = "last_action"
LAST_REWARD = "last_reward"


def with_last_step_space(space: gym.spaces.Dict, num_actions: int) -> gym.spaces.Dict:
    """``space`` plus the two fields (raises ValueError if it already has one of them)."""
    for name in (LAST_ACTION, LAST_REWARD):
        if name in space.spaces:
            raise ValueError(f"the observation already has a field {name!r}")
    return gym.spaces.Dict({
        **space.spaces,
        LAST_ACTION: gym.spaces.Discrete(num_actions + 1),
        LAST_REWARD: gym.spaces.Box(-np.inf, np.inf, (1,), dtype=np.float32),
    })  # fmt: skip


def last_step_fields(actions: Tensor, rewards: Tensor, starts: Tensor) -> dict[str, Tensor]:
    """The two fields of B envs from their previous ``actions`` and ``rewards`` [B]; where
    ``starts`` [B] is true an episode begins, with nothing done yet (both fields 0)."""
    return {
        LAST_ACTION: torch.where(starts, 0, actions.long() + 1),
        LAST_REWARD: torch.where(starts, 0.0, rewards.float())[:, None],
    }


class LastStepEnv:
    """A batched env whose observations also hold the previous action and reward (see the
    module). Everything else (``layout``, ``oracle_actions``, ``num_envs``, ...) is the
    wrapped env's."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.single_observation_space = with_last_step_space(
            env.single_observation_space, int(env.single_action_space.n))
        self.fields = self._episode_starts()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["env"], name)

    def _episode_starts(self) -> dict[str, Tensor]:
        zeros = torch.zeros(self.env.num_envs, device=self.env.device)
        return last_step_fields(zeros, zeros, torch.ones_like(zeros, dtype=torch.bool))

    @property
    def obs(self) -> dict[str, Tensor]:
        """The wrapped env's current observation (an env that keeps one), with the fields."""
        return {**self.env.obs, **self.fields}

    def reset(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        obs = self.env.reset(*args, **kwargs)
        self.fields = self._episode_starts()
        return {**obs, **self.fields}

    def step(self, actions: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor, dict]:
        actions = torch.as_tensor(actions, device=self.env.device)
        obs, reward, terminated, truncated, info = self.env.step(actions)
        # A finished env's observation is the next episode's first: nothing done yet there.
        # The fields are new tensors each step, never changed in place, so they are shared.
        self.fields = last_step_fields(actions, reward, terminated | truncated)
        return {**obs, **self.fields}, reward, terminated, truncated, info

    def state_dict(self) -> dict[str, Any]:
        return {"env": self.env.state_dict(), **self.fields}

    def load_state_dict(self, data: dict[str, Any]) -> None:
        self.env.load_state_dict(data["env"])
        if getattr(self.env, "resumes_exactly", True):
            self.fields = {name: data[name].to(self.env.device)
                           for name in (LAST_ACTION, LAST_REWARD)}  # fmt: skip
        else:  # the wrapped env restarted its episodes
            self.fields = self._episode_starts()
