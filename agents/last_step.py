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


def last_step_fields(
    action: int | None, reward: float, device: torch.device | str
) -> dict[str, Tensor]:
    """The two fields for one env ([1, ...]), after ``action`` (None: an episode's start)."""
    token = 0 if action is None else int(action) + 1
    return {
        LAST_ACTION: torch.tensor([token], device=device),
        LAST_REWARD: torch.tensor([[0.0 if action is None else float(reward)]], device=device),
    }


class LastStepEnv:
    """A batched env whose observations also hold the previous action and reward (see the
    module). Everything else (``layout``, ``oracle_actions``, ``num_envs``, ...) is the
    wrapped env's."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.single_observation_space = with_last_step_space(
            env.single_observation_space, int(env.single_action_space.n))
        self.last_action = torch.zeros(env.num_envs, dtype=torch.long, device=env.device)
        self.last_reward = torch.zeros(env.num_envs, 1, device=env.device)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["env"], name)

    def _with_fields(self, obs: dict[str, Tensor]) -> dict[str, Tensor]:
        return {**obs, LAST_ACTION: self.last_action.clone(),
                LAST_REWARD: self.last_reward.clone()}  # fmt: skip

    @property
    def obs(self) -> dict[str, Tensor]:
        """The wrapped env's current observation (an env that keeps one), with the fields."""
        return self._with_fields(self.env.obs)

    def reset(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        obs = self.env.reset(*args, **kwargs)
        self.last_action.zero_()
        self.last_reward.zero_()
        return self._with_fields(obs)

    def step(self, actions: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor, dict]:
        actions = torch.as_tensor(actions, device=self.last_action.device)
        obs, reward, terminated, truncated, info = self.env.step(actions)
        # A finished env's observation is the next episode's first: nothing done yet there.
        done = terminated | truncated
        self.last_action = torch.where(done, 0, actions.long() + 1)
        self.last_reward = torch.where(done, 0.0, reward.float())[:, None]
        return self._with_fields(obs), reward, terminated, truncated, info

    def state_dict(self) -> dict[str, Any]:
        return {"env": self.env.state_dict(), LAST_ACTION: self.last_action.clone(),
                LAST_REWARD: self.last_reward.clone()}  # fmt: skip

    def load_state_dict(self, data: dict[str, Any]) -> None:
        self.env.load_state_dict(data["env"])
        if getattr(self.env, "resumes_exactly", True):
            self.last_action = data[LAST_ACTION].to(self.last_action.device)
            self.last_reward = data[LAST_REWARD].to(self.last_reward.device)
        else:  # the wrapped env restarted its episodes
            self.last_action.zero_()
            self.last_reward.zero_()
