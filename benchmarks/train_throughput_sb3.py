"""sb3-contrib's side of ``train_throughput.py``: RecurrentPPO with its defaults, or set up to
do our work (``--equal-work``), timed over whole rollout + update cycles.

The equal-work RecurrentPPO is built from our LSTM policy's config:

- the LSTM: ``lstm_hidden_size`` = our ``d_model``, ``n_lstm_layers`` = our ``num_layers``:
  the same ``nn.LSTM(D, D, num_layers)``. ``shared_lstm=True, enable_critic_lstm=False``:
  one LSTM under the actor and the critic, as ours (sb3's default gives the critic a second
  LSTM, twice the recurrent work).
- the encoder: ``features_extractor_class`` runs a copy of our policy's observation encoder
  (cell embeddings, MLP to D) on sb3's flattened observation, reshaped back to the cell
  window; the same encoder, plugged in the way sb3 takes custom feature extractors.
- the heads: ``net_arch=[]``, so sb3's ``action_net`` and ``value_net`` are single linear
  layers on the LSTM's output, as our actor and critic.
- the weights: ``ortho_init=False``, then every weight copied from our freshly built policy
  (same seed), so both start as the same function (the same action probabilities, hence
  episodes of about the same lengths).
- the rollout: ``n_steps`` = our ``num_steps`` (128) per env, with as many envs.
- the update: ``n_epochs`` = our ``update_epochs`` (4); ``batch_size`` = n_envs x n_steps /
  our ``num_minibatches`` (4), the same number of minibatches per epoch; ``learning_rate``,
  ``gamma``, ``gae_lambda``, ``clip_range``, ``ent_coef`` (the preset's at the full length),
  ``vf_coef``, ``max_grad_norm``, Adam's ``eps`` (1e-5) and the seed as ours.
- the sequences: each minibatch sequence starts from the LSTM state stored during the
  rollout at its first step, and the state is reset where an episode starts, on both sides.

What differs beyond the machinery, by sb3's design: (1) sb3's critic reads the shared LSTM's
output detached, so its value loss trains the value head only, ours the whole network; the
backward pass through the LSTM and the encoder runs once per minibatch on both sides. (2)
Ours replays whole env columns (128-step sequences) and runs the LSTM in one call per stretch
between the steps where any of them starts an episode; sb3 takes ``batch_size`` consecutive
steps of its env-major buffer from a random offset, cuts them at env boundaries and episode
starts and zero-pads the pieces to the longest, so a minibatch of b columns' worth spans
b + 1 env segments (up to (b + 1) / b of the work, more where episodes start), and it runs
the LSTM over whole sequences in one call when no episode starts in the minibatch, else one
step at a time. (3) A time-limit truncation costs sb3 one more
value forward (it bootstraps from the final observation); the corridor preset counts a
time-out as the episode's end (rare either way: the limit is 4 L + 20 steps). (4) Ours
anneals the learning rate, sb3 keeps it constant (no cost either way).

Its steps are timed by a ``VecEnvWrapper`` around its ``DummyVecEnv``, its rollouts and
updates by timers around ``collect_rollouts`` and ``train`` (so its GAE, computed at the end
of ``collect_rollouts``, counts as rollout).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnvWrapper
from torch import nn

from agents.build import build_policy, make_env
from agents.control import Curriculum
from agents.run_config import TrainConfig
from policies.policy import MemoryPolicy

# isort: split
# The benchmarks' other modules, beside this file (a script's folder is on sys.path).
import sb3_baseline
from train_throughput_ours import Clock, time_shares


class OurEncoder(BaseFeaturesExtractor):
    """sb3 features extractor running our policy's observation encoder on sb3's flattened
    observations: [N, F] -> [N, D]. ``fields`` are the (key, shape) of each Box of the Dict
    space, in the order ``FlattenObservation`` concatenates them."""

    def __init__(self, observation_space: gym.Space, encoder: nn.Module,
                 fields: list[tuple[str, tuple[int, ...]]], features_dim: int) -> None:  # fmt: skip
        super().__init__(observation_space, features_dim)
        self.encoder = encoder
        self.fields = fields

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        sizes = [math.prod(shape) for _, shape in self.fields]
        parts = observations.split(sizes, dim=-1)
        obs = {key: part.reshape(1, len(part), *shape)  # [N, F_k] -> [1, N, *shape]: T = 1
               for (key, shape), part in zip(self.fields, parts, strict=True)}  # fmt: skip
        return self.encoder(obs)[0]  # [1, N, D] -> [N, D]


class TimedVecEnv(VecEnvWrapper):
    """Adds up the wall time of the wrapped vec env's steps."""

    def __init__(self, venv: Any) -> None:
        super().__init__(venv)
        self.seconds = 0.0

    def reset(self) -> Any:
        return self.venv.reset()

    def step_async(self, actions: np.ndarray) -> None:
        start = time.perf_counter()
        self.venv.step_async(actions)
        self.seconds += time.perf_counter() - start

    def step_wait(self) -> Any:
        start = time.perf_counter()
        result = self.venv.step_wait()
        self.seconds += time.perf_counter() - start
        return result


class TimedRecurrentPPO(RecurrentPPO):
    """RecurrentPPO that times its rollouts and updates and stops at the start of the first
    rollout past ``budget_s`` seconds from the start of its second one (the first is the
    warm-up)."""

    def __init__(self, *args: Any, budget_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.budget_s = budget_s
        self.marks: list[Clock] = []
        self.rollout_s = self.update_s = 0.0

    def collect_rollouts(self, *args: Any, **kwargs: Any) -> bool:
        start = time.perf_counter()
        self.marks.append(Clock(start, self.num_timesteps, self.env.seconds, self.rollout_s,
                                self.update_s))  # fmt: skip
        if len(self.marks) >= 3 and start - self.marks[1].time >= self.budget_s:
            return False
        collected = super().collect_rollouts(*args, **kwargs)
        self.rollout_s += time.perf_counter() - start
        return collected

    def train(self) -> None:
        start = time.perf_counter()
        super().train()
        self.update_s += time.perf_counter() - start


def sb3_env(env_kwargs: dict[str, Any], num_envs: int) -> TimedVecEnv:
    """``num_envs`` reference corridors, flattened as the sb3 baseline flattens them, in a
    timed DummyVecEnv."""

    def make_corridor() -> gym.Env:
        return sb3_baseline.make_env("ExpireRL/Corridor-v0", env_kwargs)

    return TimedVecEnv(DummyVecEnv([make_corridor] * num_envs))


def sb3_default_model(length: int, num_envs: int, seconds: float) -> TimedRecurrentPPO:
    """RecurrentPPO with MlpLstmPolicy and its default hyperparameters."""
    return TimedRecurrentPPO("MlpLstmPolicy", sb3_env({"length": length}, num_envs),
                             device="cpu", seed=0, verbose=0, budget_s=seconds)  # fmt: skip


def sb3_equal_work_model(config: TrainConfig, num_envs: int, seconds: float) -> TimedRecurrentPPO:
    """RecurrentPPO set up to do the work of our ``config`` (an LSTM policy) at ``num_envs``
    envs, starting from the same weights (see the module's docstring)."""
    learner = config.learner
    ent_coef = learner.ent_coef  # as the Trainer sets it: the curriculum's, at the full length
    if learner.curriculum_start is not None:
        ent_coef = Curriculum(learner, config.env_kwargs["length"]).ent_coef()
    torch.manual_seed(config.run.seed)  # as the Trainer does before building the policy
    ours = build_policy(config, make_env(config, num_envs=1, device="cpu"), "cpu")
    vec_env = sb3_env(config.env_kwargs, num_envs)
    space = vec_env.venv.envs[0].unwrapped.observation_space
    fields = [(key, tuple(field.shape)) for key, field in space.spaces.items()]
    policy_kwargs = {
        "features_extractor_class": OurEncoder,
        "features_extractor_kwargs": {"encoder": copy.deepcopy(ours.encoder), "fields": fields,
                                      "features_dim": ours.config.d_model},
        "lstm_hidden_size": ours.config.d_model,
        "n_lstm_layers": ours.core.num_layers,
        "shared_lstm": True,
        "enable_critic_lstm": False,
        "net_arch": [],
        "ortho_init": False,
        "optimizer_kwargs": {"eps": 1e-5},  # agents.learner's Adam
    }  # fmt: skip
    model = TimedRecurrentPPO(
        "MlpLstmPolicy", vec_env, learning_rate=learner.learning_rate, n_steps=learner.num_steps,
        batch_size=num_envs * learner.num_steps // learner.num_minibatches,
        n_epochs=learner.update_epochs, gamma=learner.gamma, gae_lambda=learner.gae_lambda,
        clip_range=learner.clip_coef, ent_coef=ent_coef, vf_coef=learner.vf_coef,
        max_grad_norm=learner.max_grad_norm, policy_kwargs=policy_kwargs, device="cpu",
        seed=config.run.seed, verbose=0, budget_s=seconds,
    )  # fmt: skip
    copy_weights(ours, model.policy)
    return model


def copy_weights(ours: MemoryPolicy, sb3_policy: nn.Module) -> None:
    """Load our LSTM policy's weights into sb3's policy of the same shapes (in place, so its
    optimiser keeps the same parameters)."""
    sb3_policy.features_extractor.encoder.load_state_dict(ours.encoder.state_dict())
    sb3_policy.lstm_actor.load_state_dict(ours.core.lstm.state_dict())
    sb3_policy.action_net.load_state_dict(ours.actor.state_dict())
    sb3_policy.value_net.load_state_dict(ours.critic.state_dict())


def sb3_steps_per_second(model: TimedRecurrentPPO) -> dict[str, Any]:
    """Train ``model`` until its budget is spent; steps/s over whole rollout + update cycles."""
    model.learn(total_timesteps=10**12, log_interval=None)
    span = model.marks[-1].since(model.marks[1])
    return {
        "steps_per_s": round(span.steps / span.time, 1),
        "device": str(model.device),
        "num_envs": model.n_envs,
        "n_steps": model.n_steps,
        "n_epochs": model.n_epochs,
        "batch_size": model.batch_size,
        "warmup_rollouts": 1,
        "measured_rollouts": len(model.marks) - 2,
        "measured_steps": span.steps,
        "seconds": round(span.time, 2),
        "time_shares": time_shares(span),
    }

