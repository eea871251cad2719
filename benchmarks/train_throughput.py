"""Training steps per second: this project's PPO against sb3-contrib's RecurrentPPO.

Both sides train on the corridor of one length, side by side in one process with the same
torch CPU threads (``--threads``, recorded in ``torch_threads``), and each is timed over its
whole training loop (collecting rollouts *and* learning updates) for ``--seconds`` after a
warm-up. Each timed side also reports the share of its time in env stepping (``env_step``),
the rest of the rollout (``policy_forward``: the policy's forward, action sampling and
storing the step) and the learning update (``update``); ``other`` is what is left. Ours is
timed with a wrapper around its batched env's ``step``; sb3-contrib with a ``VecEnvWrapper``
around its ``DummyVecEnv`` and timers around ``collect_rollouts`` and ``train`` (so its GAE,
computed at the end of ``collect_rollouts``, counts as rollout; ours counts as update).

Default: each side with its own settings.

- **ours**: what ``python train_rl.py --env corridor --length L`` builds (the corridor
  preset: Expire-Span policy, PPO, 64 envs x 128 steps, 4 epochs; ``--policy`` picks
  another core), but on the full-length corridor throughout (no random lengths, no
  curriculum: the task the baseline gets), on the batched torch corridor, driven update by
  update through the trainer's collector and learner (the metric rows and checkpoints that
  ``Trainer.run`` writes are left out). The warm-up (``--warmup-updates``) lets the agent's
  memory fill up: by default long enough for one random-walk episode with Expire-Span
  (about 1.7 L steps with the preset's forward bias; early in training nearly every past
  step is alive, so the first updates are cheaper than the ones after them), one window
  with Transformer-XL, one update with the LSTM.
- **sb3-contrib**: ``RecurrentPPO("MlpLstmPolicy", DummyVecEnv(n envs))`` with its default
  hyperparameters (128 steps per env, 10 epochs, batch 128, LSTM 256) on the reference env,
  ``gym.make("ExpireRL/Corridor-v0", length=L)`` flattened by ``FlattenObservation``; by
  default with as many envs as ours. Timed from the start of its second rollout to the
  start of the first rollout that would begin past the budget (whole rollout + update
  cycles only; its logging is left out, as ours is).

``--from-run RUN_DIR`` starts ours (Expire-Span) from a trained agent's weights instead
(the run's latest checkpoint; e.g. the quick-start command's run at this length): the
steps/s of training once the spans are learnt and few memories are alive. Ours also reports
its matrix-multiply FLOPs per env step (rollout and update, counted by torch over one more
update), set against what ``TARGET_RATIO`` x sb3's steps/s would ask of the matrix work
alone and this CPU's float32 matrix-multiply rate on large matrices. Where CUDA is
available, ours is also measured on it, once for each of the ``--cuda-num-envs`` env counts
(``--cuda-only`` skips the CPU runs).

``--equal-work``: the same network and the same PPO work; only the machinery differs (our
batched torch env and device-resident rollout and update against sb3's ``DummyVecEnv`` and
per-step Python). Ours is the corridor preset with ``--policy lstm`` on the full-length
corridor, at each of ``--ours-env-counts`` (64, 256, 1024); sb3-contrib's RecurrentPPO is
built from that config, at each of ``--sb3-env-counts`` (1, 8, 64), as follows:

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
Ours replays whole env columns (128-step sequences) and always steps the LSTM one step at a
time; sb3 takes ``batch_size`` consecutive steps of its env-major buffer from a random
offset, cuts them at env boundaries and episode starts and zero-pads the pieces to the
longest, so a minibatch of b columns' worth spans b + 1 env segments (up to (b + 1) / b of
the work, more where episodes start), and it runs the LSTM over whole sequences in one call
when no episode starts in the minibatch. (3) A time-limit truncation costs sb3 one more
value forward (it bootstraps from the final observation); the corridor preset counts a
time-out as the episode's end (rare either way: the limit is 4 L + 20 steps). (4) Ours
anneals the learning rate, sb3 keeps it constant (no cost either way).

The JSON line carries both sides' steps/s at each env count, ``equal_work_ratio`` (ours ÷
sb3-contrib steps/s at the largest env count both measure, 64 by default) and
``ratio_to_sb3_best`` (ours at each count ÷ sb3-contrib at its fastest count).

``--trxl-window N`` (either mode) also times ours with the Expire-Span preset (from
``--from-run``'s weights if given) and with Transformer-XL of window N, at ``--num-envs``
envs: ``equal_memory`` in the JSON line, with ``expire_span_cost_vs_trxl`` (Expire-Span's
time per step ÷ Transformer-XL's). Set N to the Expire-Span run's final alive count to
compare them at equal memory.

The file holds both sides of each comparison, and how sb3-contrib is set up to do our work,
so that they read against each other; hence its length.

    python benchmarks/train_throughput.py [--length 1000] [--seconds 60] [--threads N]
    python benchmarks/train_throughput.py --from-run runs/corridor-expire_span-ppo-s1-...
    python benchmarks/train_throughput.py --equal-work --threads 2
    python benchmarks/train_throughput.py --from-run RUN_DIR --trxl-window 40
    python benchmarks/train_throughput.py --cuda-only --cuda-num-envs 64 1024 4096
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import gymnasium as gym
import numpy as np
import torch
import tyro
from gymnasium.wrappers import FlattenObservation
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnvWrapper
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import envs  # noqa: F401  (registers ExpireRL/Corridor-v0)
from agents.build import build_policy, make_env
from agents.cli import USAGE_ERROR, flag_name, parse_args
from agents.control import Curriculum
from agents.load_run import load_run
from agents.resolve import resolve
from agents.run_config import ConfigError, TrainConfig
from agents.run_dir import RunDir, RunDirError
from agents.train_args import ThreadCount, TrainArgs
from agents.trainer import Trainer
from envs.core import check_int
from policies.policy import MemoryPolicy

TARGET_RATIO = 100.0
"""Ours ÷ sb3-contrib's default steps/s that the matrix-work estimate is set against."""

EQUAL_WORK_OURS = (64, 256, 1024)
"""Our env counts of --equal-work by default."""
EQUAL_WORK_SB3 = (1, 8, 64)
"""sb3-contrib's env counts of --equal-work by default."""


def _flag(metavar: str, default: str) -> Any:
    """A flag's metavar and what its unset value means, for --help."""
    return tyro.conf.arg(metavar=metavar, help_behavior_hint=f"(default: {default})")


def _counts(counts: tuple[int, ...]) -> Any:
    return _flag("INT...", " ".join(map(str, counts)))


@dataclass
class TrainThroughputArgs:
    """Training steps per second: this project's PPO against sb3-contrib's RecurrentPPO."""

    length: int = 1000
    """Corridor length L."""
    seconds: float = 60.0
    """Wall-clock budget of each measurement, after its warm-up."""
    warmup_updates: Annotated[int | None, _flag("INT", "by core")] = None
    """Our updates before timing: ceil(2 L / num_steps) + 1 with Expire-Span (one random-walk
    episode), ceil(M / num_steps) + 1 with a Transformer-XL window M, 1 with the LSTM."""
    policy: Annotated[
        Literal["expire_span", "trxl", "lstm"] | None,
        _flag("{expire_span,trxl,lstm}", "expire_span; lstm with --equal-work"),
    ] = None
    """Our memory core (--equal-work allows lstm only)."""
    num_envs: Annotated[int | None, _flag("INT", "preset")] = None
    """Our envs on CPU, and those of --trxl-window's measurements."""
    sb3_num_envs: Annotated[int | None, _flag("INT", "as many as ours")] = None
    """sb3-contrib's DummyVecEnv envs (not with --equal-work)."""
    cuda_num_envs: Annotated[tuple[int, ...], tyro.conf.arg(metavar="INT...")] = (4096,)
    """Our envs on CUDA, measured when CUDA is available (several: one run each)."""
    threads: ThreadCount = None
    """CPU threads for torch, both sides."""
    from_run: Annotated[str | None, _flag("RUN_DIR", "fresh weights")] = None
    """Start our Expire-Span policy from this run's latest weights (a trained corridor agent of
    the same length, e.g. the quick-start's) to time training once the spans are learnt."""
    skip_sb3: bool = False
    """Measure ours only (not with --equal-work)."""
    cuda_only: bool = False
    """Measure ours on CUDA only: no CPU runs (not with --equal-work)."""
    equal_work: bool = False
    """Time our LSTM policy against RecurrentPPO configured alike (how: the script's
    docstring) instead of against RecurrentPPO's defaults."""
    ours_env_counts: Annotated[tuple[int, ...] | None, _counts(EQUAL_WORK_OURS)] = None
    """With --equal-work: our env counts, one measurement each (multiples of the preset's
    minibatch count)."""
    sb3_env_counts: Annotated[tuple[int, ...] | None, _counts(EQUAL_WORK_SB3)] = None
    """With --equal-work: sb3-contrib's env counts, one measurement each."""
    trxl_window: Annotated[int | None, _flag("INT", "off")] = None
    """Also time ours with Expire-Span and with Transformer-XL of this window M, at --num-envs
    envs (e.g. the Expire-Span run's final alive count: equal memory)."""


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark_config(
    length: int,
    device: str = "cpu",
    num_envs: int | None = None,
    threads: int | None = None,
    policy: str = "expire_span",
    memory_size: int | None = None,
) -> TrainConfig:
    """The corridor preset of ``length`` for ``policy``, on the full-length corridor
    throughout, as sb3-contrib gets it: the preset's random lengths and curriculum would time
    shorter episodes than the baseline's. Raises ConfigError for settings that cannot work."""
    return resolve(TrainArgs(env="corridor", length=length, device=device, num_envs=num_envs,
                             threads=threads, min_length=length, curriculum_start=length,
                             policy=policy, memory_size=memory_size))  # fmt: skip


def default_warmup_updates(config: TrainConfig) -> int:
    """Updates that let the policy's memory fill up before timing (see ``--warmup-updates``)."""
    num_steps = config.learner.num_steps
    if config.policy == "expire_span":
        return math.ceil(2 * config.env_kwargs["length"] / num_steps) + 1
    if config.policy == "trxl":
        return math.ceil(config.policy_kwargs.get("memory_size", 0) / num_steps) + 1
    return 1


class Clock(NamedTuple):
    """A moment of a training loop: wall time, and the env steps and the seconds of env
    stepping, rollouts and updates counted up to it. ``later.since(earlier)`` is the span."""

    time: float
    steps: int
    env_s: float
    rollout_s: float
    update_s: float

    def since(self, earlier: Clock) -> Clock:
        return Clock(*(now - then for now, then in zip(self, earlier, strict=True)))


def time_shares(span: Clock) -> dict[str, float]:
    """Shares of a span's time: env stepping, the rest of the rollout, the update, the rest."""
    shares = {"env_step": span.env_s, "policy_forward": span.rollout_s - span.env_s,
              "update": span.update_s, "other": span.time - span.rollout_s - span.update_s}
    return {key: round(value / span.time, 3) for key, value in shares.items()}


class StepTimer:
    """Wraps a batched env and adds up the wall time of its ``step`` calls (CPU only: on
    CUDA the step returns before its work is done)."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.seconds = 0.0

    def step(self, actions: torch.Tensor) -> Any:
        start = time.perf_counter()
        result = self.env.step(actions)
        self.seconds += time.perf_counter() - start
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)


class OursLoop:
    """The trainer's collector and learner driven update by update, timed (the env's steps
    too, on CPU)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.timer = None
        if trainer.device.type == "cpu":
            self.timer = trainer.collector.env = StepTimer(trainer.collector.env)
        self.steps_per_update = trainer.steps_per_update
        self.steps, self.rollout_s, self.update_s = 0, 0.0, 0.0

    def update(self) -> None:
        """One rollout and its update, with one device sync between them to split the time."""
        start = time.perf_counter()
        rollout = self.trainer.collector.collect()
        _synchronize(self.trainer.device)
        middle = time.perf_counter()
        self.trainer.learner.update(rollout)
        _synchronize(self.trainer.device)
        self.rollout_s += middle - start
        self.update_s += time.perf_counter() - middle
        self.steps += self.steps_per_update

    def clock(self) -> Clock:
        env_s = self.timer.seconds if self.timer else math.nan
        return Clock(time.perf_counter(), self.steps, env_s, self.rollout_s, self.update_s)

    def measure(self, warmup_updates: int, seconds: float) -> Clock:
        """Warm-up updates, then updates until ``seconds`` have passed: the timed span."""
        for _ in range(warmup_updates):
            self.update()
        start = self.clock()
        while True:
            self.update()
            end = self.clock()
            if end.time - start.time >= seconds:
                return end.since(start)


def ours_steps_per_second(
    config: TrainConfig,
    seconds: float,
    warmup_updates: int | None = None,
    weights: dict[str, Any] | None = None,
    count_flops: bool = True,
) -> dict[str, Any]:
    """Train ``config`` for ``seconds`` after a warm-up; steps/s of the whole loop. With
    ``weights`` (see `trained_weights`) the policy starts from a trained agent."""
    config = copy.deepcopy(config)
    learner_config = config.learner
    steps_per_update = learner_config.num_envs * learner_config.num_steps
    # The preset's total only sets the learning-rate schedule; keep it unless it is too small.
    learner_config.total_steps = max(learner_config.total_steps, 1000 * steps_per_update)
    if warmup_updates is None:
        warmup_updates = default_warmup_updates(config)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, RunDir.create(Path(tmp) / "run", config), progress=False)
        if weights is not None:
            trainer.policy.load_state_dict(weights)
        loop = OursLoop(trainer)
        span = loop.measure(warmup_updates, seconds)
        alive = trainer.collector.last_output.memory_alive.float()  # [B, L]; L = 0 for lstm
        flops = None
        if count_flops:
            with FlopCounterMode(display=False) as counter:  # one more update, untimed
                loop.update()
            flops = round(counter.get_total_flops() / steps_per_update / 1e6, 3)
    return {
        "steps_per_s": round(span.steps / span.time, 1),
        "device": str(trainer.device),
        "num_envs": learner_config.num_envs,
        "num_steps": learner_config.num_steps,
        "update_epochs": learner_config.update_epochs,
        "num_minibatches": learner_config.num_minibatches,
        "policy": config.policy,
        "policy_kwargs": config.policy_kwargs,
        "algo": learner_config.algo,
        "trained_weights": weights is not None,
        "warmup_updates": warmup_updates,
        "measured_updates": span.steps // steps_per_update,
        "measured_steps": span.steps,
        "seconds": round(span.time, 2),
        "rollout_fraction": round(span.rollout_s / span.time, 3),
        "time_shares": time_shares(span) if loop.timer else None,
        "mem_alive_mean": round(alive.mean().item(), 1) if alive.numel() else None,
        "mem_alive_max": int(alive.max().item()) if alive.numel() else None,
        "matmul_mflop_per_step": flops,
    }


def sgemm_gflops(size: int = 2048, repeats: int = 3) -> float:
    """This CPU's matrix-multiply rate (best of ``repeats`` float32 products of two
    ``size`` x ``size`` matrices): a ceiling for any training step's matrix work."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def trained_weights(path: str, length: int) -> dict[str, Any]:
    """The policy weights of run ``path``'s latest checkpoint, which must be the benchmark's
    policy (an Expire-Span corridor run of the same length, e.g. the quick-start command's);
    raises RunDirError or ConfigError otherwise."""
    loaded = load_run(path)  # rejects a checkpoint without weights, or weights that don't fit

    def model(of: TrainConfig) -> str:  # what the weights must fit, as config.json writes it
        return json.dumps([of.env, of.env_kwargs.get("length"), of.policy, of.policy_kwargs],
                          sort_keys=True)

    wanted = benchmark_config(length)
    if model(loaded.config) != model(wanted):
        raise RunDirError(f"--from-run {path}: [env, length, policy, policy settings] are "
                          f"{model(loaded.config)}, not the benchmark's {model(wanted)}")
    return loaded.policy.state_dict()


# --- sb3-contrib ------------------------------------------------------------------------


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
    """``num_envs`` reference corridors, flattened, in a timed DummyVecEnv."""

    def make_env() -> gym.Env:
        return FlattenObservation(gym.make("ExpireRL/Corridor-v0", **env_kwargs))

    return TimedVecEnv(DummyVecEnv([make_env] * num_envs))


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


# --- the measurements -------------------------------------------------------------------


def equal_memory(args: TrainThroughputArgs, weights: dict[str, Any] | None,
                 expire_span: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    """Ours with Expire-Span (``expire_span`` if already measured) and with Transformer-XL
    of window ``--trxl-window``, at ``--num-envs`` envs on CPU."""
    if expire_span is None:
        config = benchmark_config(args.length, "cpu", args.num_envs, args.threads)
        expire_span = ours_steps_per_second(config, args.seconds, args.warmup_updates, weights)
    config = benchmark_config(args.length, "cpu", args.num_envs, args.threads, "trxl",
                              args.trxl_window)  # fmt: skip
    trxl = ours_steps_per_second(config, args.seconds, args.warmup_updates)
    return {
        "trxl_window": args.trxl_window,
        "expire_span": expire_span,
        "trxl": trxl,
        "expire_span_cost_vs_trxl": round(trxl["steps_per_s"] / expire_span["steps_per_s"], 3),
    }


def equal_work(args: TrainThroughputArgs, configs: dict[int, TrainConfig]) -> dict[str, Any]:
    """Our LSTM policy at each of ``configs``' env counts against RecurrentPPO configured
    alike at each of ``--sb3-env-counts``."""
    ours = {count: ours_steps_per_second(config, args.seconds, args.warmup_updates,
                                         count_flops=False)
            for count, config in configs.items()}  # fmt: skip
    some_config = next(iter(configs.values()))
    sb3 = {count: sb3_steps_per_second(sb3_equal_work_model(some_config, count, args.seconds))
           for count in args.sb3_env_counts or EQUAL_WORK_SB3}  # fmt: skip
    pair = max(set(ours) & set(sb3))
    best = max(sb3.values(), key=lambda measured: measured["steps_per_s"])
    learner = some_config.learner
    return {
        "settings": {
            "policy": some_config.policy, "policy_kwargs": some_config.policy_kwargs,
            "num_steps": learner.num_steps, "update_epochs": learner.update_epochs,
            "num_minibatches": learner.num_minibatches, "chunk_length": learner.chunk_length,
        },
        "ours": list(ours.values()),
        "sb3_contrib": list(sb3.values()),
        "sb3_best": {"num_envs": best["num_envs"], "steps_per_s": best["steps_per_s"]},
        "equal_work_num_envs": pair,
        "equal_work_ratio": round(ours[pair]["steps_per_s"] / sb3[pair]["steps_per_s"], 2),
        "ratio_to_sb3_best": {str(count): round(measured["steps_per_s"] / best["steps_per_s"], 2)
                              for count, measured in ours.items()},
    }


def default_mode(args: TrainThroughputArgs, weights: dict[str, Any] | None) -> dict[str, Any]:
    """Ours (the preset) against RecurrentPPO's defaults, and ours on CUDA where available."""
    policy = args.policy or "expire_span"
    ours = sb3 = None
    if not args.cuda_only:
        config = benchmark_config(args.length, "cpu", args.num_envs, args.threads, policy)
        ours = ours_steps_per_second(config, args.seconds, args.warmup_updates,
                                     weights if policy == "expire_span" else None)
        if not args.skip_sb3:
            sb3_num_envs = args.sb3_num_envs or ours["num_envs"]
            sb3 = sb3_steps_per_second(sb3_default_model(args.length, sb3_num_envs,
                                                         args.seconds))  # fmt: skip
    ours_cuda = []
    if torch.cuda.is_available():
        for num_envs in args.cuda_num_envs:
            config = benchmark_config(args.length, "cuda", num_envs, args.threads, policy)
            measured = ours_steps_per_second(config, args.seconds, args.warmup_updates,
                                             weights if policy == "expire_span" else None)
            if sb3:
                ratio_cuda = measured["steps_per_s"] / sb3["steps_per_s"]
                measured["ratio_to_sb3_cpu"] = round(ratio_cuda, 1)
            ours_cuda.append(measured)
            print(json.dumps({"partial": "cuda", **measured}), file=sys.stderr, flush=True)
    ratio = ours["steps_per_s"] / sb3["steps_per_s"] if ours and sb3 else None
    # What the target asks of the matrix work alone: TARGET_RATIO x sb3's steps/s x our
    # FLOPs per step.
    target_needs = (TARGET_RATIO * sb3["steps_per_s"] * ours["matmul_mflop_per_step"] / 1e3
                    if ours and sb3 else None)  # fmt: skip
    return {
        "ours": ours,
        "sb3_contrib": sb3,
        "ratio": round(ratio, 2) if ratio is not None else None,
        "target_ratio": TARGET_RATIO,
        "target_met": ratio >= TARGET_RATIO if ratio is not None else None,
        "target_needs_matmul_gflops": round(target_needs, 1) if target_needs is not None else None,
        "cpu_sgemm_gflops": round(sgemm_gflops(), 1) if not args.cuda_only else None,
        "ours_cuda": ours_cuda,
    }


def check_args(args: TrainThroughputArgs) -> dict[int, TrainConfig]:
    """Raise ConfigError or ValueError naming the first flag that cannot work; with
    --equal-work, return our config at each env count."""
    if not args.seconds > 0:
        raise ConfigError(f"--seconds must be a positive number, got {args.seconds}")
    for name in ("num_envs", "sb3_num_envs", "threads", "trxl_window"):
        value = getattr(args, name)
        if value is not None:
            check_int(flag_name(name), value, 1)
    if args.warmup_updates is not None:
        check_int("--warmup-updates", args.warmup_updates, 0)
    for count in args.cuda_num_envs:
        check_int("--cuda-num-envs", count, 1)
    if args.cuda_only and not torch.cuda.is_available():
        raise ConfigError("--cuda-only: no CUDA device is available")
    uses_expire_span = (args.trxl_window is not None
                        or (not args.equal_work and args.policy in (None, "expire_span")))
    if args.from_run is not None and not uses_expire_span:
        raise ConfigError("--from-run loads Expire-Span weights: time ours with --policy "
                          "expire_span, or give --trxl-window")
    benchmark_config(args.length, num_envs=args.num_envs)  # the length and --num-envs
    if not args.equal_work:
        for name in ("ours_env_counts", "sb3_env_counts"):
            if getattr(args, name) is not None:
                raise ConfigError(f"{flag_name(name)} needs --equal-work")
        return {}
    for name in ("skip_sb3", "cuda_only", "sb3_num_envs"):
        if getattr(args, name):
            raise ConfigError(f"{flag_name(name)} does not apply to --equal-work")
    if args.num_envs is not None and args.trxl_window is None:
        raise ConfigError("--num-envs applies to --equal-work only with --trxl-window (the "
                          "equal-work env counts are --ours-env-counts)")
    if args.policy not in (None, "lstm"):
        raise ConfigError(f"--equal-work times the LSTM policy (as sb3-contrib's), not "
                          f"--policy {args.policy}")
    learner = benchmark_config(args.length, policy="lstm").learner
    configs = {}
    for count in args.ours_env_counts or EQUAL_WORK_OURS:
        check_int("--ours-env-counts", count, 1)
        if count % learner.num_minibatches:
            raise ConfigError(f"--ours-env-counts {count}: not a multiple of the preset's "
                              f"{learner.num_minibatches} minibatches")
        configs[count] = benchmark_config(args.length, "cpu", count, args.threads, "lstm")
    sb3_counts = args.sb3_env_counts or EQUAL_WORK_SB3
    for count in sb3_counts:
        check_int("--sb3-env-counts", count, 1)
        if count * learner.num_steps % learner.num_minibatches:
            raise ConfigError(f"--sb3-env-counts {count}: {count} x {learner.num_steps} steps "
                              f"do not split into {learner.num_minibatches} minibatches")
    if not set(configs) & set(sb3_counts):
        raise ConfigError("--ours-env-counts and --sb3-env-counts need an env count in common "
                          "(the equal-work ratio compares the two there)")
    return configs


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (2 for a bad flag, with one line on stderr)."""
    args = parse_args(TrainThroughputArgs, argv, "python benchmarks/train_throughput.py",
                      __doc__.splitlines()[0])
    weights = None
    try:
        configs = check_args(args)
        if args.from_run is not None:  # once, before anything is timed
            weights = trained_weights(args.from_run, args.length)
    except (ConfigError, RunDirError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = {
        "benchmark": "train_throughput",
        "mode": "equal_work" if args.equal_work else "default",
        "task": "corridor",
        "length": args.length,
        "from_run": args.from_run,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    if args.equal_work:
        result.update(equal_work(args, configs))
    else:
        result.update(default_mode(args, weights))
    result["equal_memory"] = None
    if args.trxl_window is not None:
        ours = result.get("ours")
        reuse = ours if isinstance(ours, dict) and ours["policy"] == "expire_span" else None
        result["equal_memory"] = equal_memory(args, weights, reuse)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
