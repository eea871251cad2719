"""Rollouts: batched env and memory policy stepping together on one device.

Shape legend: T rollout steps (``num_steps``), B envs, C chunks per rollout
(T / ``chunk_length``), A actions.

Everything stays on the device as tensors and nothing is read back to the
host while stepping: episode statistics are summed into tensors that the
logger reads once per logging interval.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch.distributions import Categorical

from policies.state import State

Tensor = torch.Tensor


class Rollout(NamedTuple):
    """One rollout, time-first. ``start_states[c]`` is the policy state at step c·chunk_length."""

    obs: dict[str, Tensor]  # each [T, B, ...]
    episode_starts: Tensor  # [T, B] bool: obs[t] begins an episode
    actions: Tensor  # [T, B]
    log_probs: Tensor  # [T, B] of the behaviour policy
    values: Tensor  # [T, B] V(s_t) of the behaviour policy
    rewards: Tensor  # [T, B]
    terminated: Tensor  # [T, B]
    truncated: Tensor  # [T, B]
    last_values: Tensor  # [B] V(s_T), the state after the rollout
    start_states: list[State]  # C states
    chunk_length: int


class EpisodeStats:
    """Sums over finished episodes, kept as device tensors until ``read``."""

    KEYS = ("episodes", "successes", "return_sum", "length_sum")

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(len(self.KEYS), dtype=torch.float64, device=device)

    def add(self, done: Tensor, info: dict[str, Tensor]) -> None:
        done_f = done.to(torch.float64)
        self.sums += torch.stack([
            done_f.sum(),
            (info["success"].to(torch.float64) * done_f).sum(),
            (info["episode_return"].to(torch.float64) * done_f).sum(),
            (info["episode_length"].to(torch.float64) * done_f).sum(),
        ])  # fmt: skip

    def read(self) -> dict[str, float]:
        """Episode count, success rate, mean return and length since the last read; resets."""
        episodes, successes, returns, lengths = self.sums.tolist()
        self.sums.zero_()
        if episodes == 0:
            nan = float("nan")
            return {"episodes": 0, "success_rate": nan, "episode_return": nan,
                    "episode_length": nan}  # fmt: skip
        return {
            "episodes": int(episodes),
            "success_rate": successes / episodes,
            "episode_return": returns / episodes,
            "episode_length": lengths / episodes,
        }


class Collector:
    """Steps the env with the policy, carrying observations and memory across rollouts."""

    def __init__(self, env: Any, policy: torch.nn.Module, num_steps: int, chunk_length: int,
                 seed: int):  # fmt: skip
        self.env, self.policy = env, policy
        self.num_steps, self.chunk_length = num_steps, chunk_length
        self.device = env.device
        # Envs start at random points of their time limits so that they desynchronise.
        self.obs = env.reset(seed=seed, desync=True)
        self.episode_starts = torch.ones(env.num_envs, dtype=torch.bool, device=self.device)
        self.state = policy.initial_state(env.num_envs, self.device)
        self.stats = EpisodeStats(self.device)

    def restart(self) -> None:
        """Start every env and memory afresh (after the task changed under the running
        episodes), at desynchronised points of the time limits as at the start."""
        self.obs = self.env.reset(desync=True)
        self.episode_starts = torch.ones_like(self.episode_starts)
        self.state = self.policy.initial_state(self.env.num_envs, self.device)

    @torch.no_grad()
    def collect(self) -> Rollout:
        """Run ``num_steps`` steps of every env; return them as a :class:`Rollout`."""
        steps, num_envs = self.num_steps, self.env.num_envs

        def buffer(like: Tensor) -> Tensor:
            return torch.empty((steps, *like.shape), dtype=like.dtype, device=self.device)

        obs_buffer = {key: buffer(value) for key, value in self.obs.items()}
        flags = torch.empty((4, steps, num_envs), dtype=torch.bool, device=self.device)
        floats = torch.empty((3, steps, num_envs), device=self.device)
        actions = torch.empty((steps, num_envs), dtype=torch.long, device=self.device)
        start_states = []
        self.state = self.state.fresh()  # caches made with the parameters before the update
        for t in range(steps):
            if t % self.chunk_length == 0:
                # States are values (no copy needed); the learner replays from this one with
                # other parameters, so it carries no caches.
                start_states.append(self.state.fresh())
            for key, value in self.obs.items():
                obs_buffer[key][t] = value
            flags[0, t] = self.episode_starts
            one_step = {key: value[None] for key, value in self.obs.items()}  # [1, B, ...]
            output, self.state = self.policy(one_step, self.state, self.episode_starts[None])
            # No argument validation: its checks wait on the device at every step.
            distribution = Categorical(logits=output.logits[0], validate_args=False)
            action = distribution.sample()
            actions[t] = action
            floats[0, t] = distribution.log_prob(action)
            floats[1, t] = output.values[0]
            self.obs, reward, terminated, truncated, info = self.env.step(action)
            floats[2, t] = reward
            flags[1, t], flags[2, t] = terminated, truncated
            self.episode_starts = terminated | truncated
            self.stats.add(self.episode_starts, info)
        self.last_output, _ = self.policy(
            {key: value[None] for key, value in self.obs.items()},
            self.state,
            self.episode_starts[None],
        )  # the state after s_T is not kept: the next rollout steps s_T itself
        return Rollout(
            obs=obs_buffer,
            episode_starts=flags[0],
            actions=actions,
            log_probs=floats[0],
            values=floats[1],
            rewards=floats[2],
            terminated=flags[1],
            truncated=flags[2],
            last_values=self.last_output.values[0],
            start_states=start_states,
            chunk_length=self.chunk_length,
        )

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to go on stepping exactly where this collector stands."""
        return {
            "env": self.env.state_dict(),
            "obs": self.obs,
            "episode_starts": self.episode_starts,
            "policy_state": self.state.fresh().state_dict(),
            "stats": self.stats.sums,
        }

    def load_state_dict(self, data: dict[str, Any]) -> None:
        self.env.load_state_dict(data["env"])
        self.stats.sums = data["stats"].to(self.device)
        if not getattr(self.env, "resumes_exactly", True):
            # A python env cannot be restored mid-episode: it restarted, so does the memory.
            self.obs = self.env.obs
            self.episode_starts = torch.ones_like(self.episode_starts)
            self.state = self.policy.initial_state(self.env.num_envs, self.device)
            return
        self.obs = {key: value.to(self.device) for key, value in data["obs"].items()}
        self.episode_starts = data["episode_starts"].to(self.device)
        self.state = State.from_state_dict(data["policy_state"]).to(self.device)


def chunk_columns(tensor: Tensor, rollout: Rollout, columns: Tensor) -> Tensor:
    """One [T, B, ...] rollout field's env ``columns`` cut into chunks laid side by side.

    [T, B, ...] -> [L, C·b, ...], chunk-major: column ``c·b + j`` is chunk c of env
    ``columns[j]``. ``unchunk`` undoes it.
    """
    length, num_chunks = rollout.chunk_length, len(rollout.start_states)
    picked = tensor[:, columns]  # [T, b, ...]
    parts = picked.reshape(num_chunks, length, *picked.shape[1:])  # [C, L, b, ...]
    parts = parts.transpose(0, 1)  # [L, C, b, ...]
    return parts.reshape(length, num_chunks * len(columns), *picked.shape[2:])  # [L, C·b, ...]


def chunked(rollout: Rollout, columns: Tensor) -> tuple[dict[str, Tensor], Tensor, State]:
    """The rollout's env ``columns`` ready for one policy forward over all their chunks.

    Returns obs [L, C·b, ...], episode_starts [L, C·b] (see :func:`chunk_columns`) and
    the C chunks' start states concatenated in the same chunk-major order.
    """
    obs = {key: chunk_columns(value, rollout, columns) for key, value in rollout.obs.items()}
    state = State.cat([s[columns] for s in rollout.start_states])
    return obs, chunk_columns(rollout.episode_starts, rollout, columns), state


def unchunk(tensor: Tensor, num_chunks: int) -> Tensor:
    """[L, C·b, ...] back to [T, b, ...] (inverse of ``chunked`` for one field)."""
    length, width = tensor.shape[:2]
    parts = tensor.reshape(length, num_chunks, width // num_chunks, *tensor.shape[2:])
    return parts.transpose(0, 1).reshape(length * num_chunks, width // num_chunks,
                                         *tensor.shape[2:])  # fmt: skip
