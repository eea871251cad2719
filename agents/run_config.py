"""What ``config.json`` holds: the complete, validated settings of one run.

`TrainConfig` rebuilds the env, the policy and the learner of a run (a new
one, a resumed one, or one the evaluator loads); it is plain data, written as
JSON and read back with `TrainConfig.from_dict`, which refuses another
version of the format. The command line that produces it lives in
`agents.train_args`, the per-task defaults in `agents.presets`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

CONFIG_VERSION = 1
"""Version of config.json's format (bumped when a field changes meaning or goes away)."""


class ConfigError(ValueError):
    """A user's setting that cannot work; the message names it and what is allowed."""


@dataclass
class LearnerConfig:
    """Hyperparameters of the learner (PPO or IMPALA-style)."""

    algo: str = "ppo"
    num_envs: int = 64
    num_steps: int = 128
    total_steps: int = 2_000_000
    learning_rate: float = 5e-4
    anneal_lr: bool = True
    span_lr_scale: float = 0.1
    gamma: float = 0.99
    gae_lambda: float = 0.95
    update_epochs: int = 4
    num_minibatches: int = 4
    chunk_length: int = 128
    clip_coef: float = 0.2
    ent_coef: float = 0.001
    ent_coef_final: float | None = None
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    adv_std_floor: float = 0.02
    curriculum_start: int | None = None
    curriculum_success: float = 0.9
    curriculum_full_fraction: float = 0.0
    span_lr_scale_final: float | None = None
    rho_clip: float = 1.0
    c_clip: float = 1.0
    bootstrap_truncated: bool = True
    last_action_reward: bool = False
    """The env's observations carry the previous action and reward (envs/last_step.py)."""


@dataclass
class RunConfig:
    """Where and how a run goes: seed, device, logging and checkpoints."""

    seed: int = 1
    device: str = "cpu"
    log_interval: int = 10
    checkpoint_interval: int = 50
    keep_checkpoints: int = 3
    target_success: float | None = None
    target_alive: float | None = None
    confirm_episodes: int | None = None
    threads: int | None = None
    target_oracle_share: float | None = None
    world_size: int = 1
    """Processes that train the run together (torchrun's ranks; 1: a plain process)."""
    num_envs_per_rank: int | None = None
    """Envs each process steps: ``learner.num_envs`` (all processes together) / world_size
    (None in configs written before it was recorded)."""


@dataclass
class TrainConfig:
    """Everything needed to rebuild env, policy and learner: the content of config.json."""

    env: str
    env_kwargs: dict[str, Any]
    policy: str
    policy_kwargs: dict[str, Any]
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    run: RunConfig = field(default_factory=RunConfig)
    version: int = CONFIG_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        if data.get("version") != CONFIG_VERSION:
            raise ConfigError(
                f"config version {data.get('version')!r} is not supported (this is version "
                f"{CONFIG_VERSION})"
            )
        return cls(
            env=data["env"],
            env_kwargs=dict(data["env_kwargs"]),
            policy=data["policy"],
            policy_kwargs=dict(data["policy_kwargs"]),
            learner=LearnerConfig(**data["learner"]),
            run=RunConfig(**data["run"]),
        )


