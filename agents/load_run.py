"""Rebuilding a run for evaluation from its directory alone: config, task settings, weights.

:func:`load_run` reads ``config.json`` and a checkpoint (plain data, see
`agents.run_dir`) and rebuilds the policy; task overrides such as a longer
corridor test generalisation beyond training (`resolve_task`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

import envs
from agents.build import build_policy, make_env
from agents.cli import task_parameters
from agents.run_config import ConfigError, TrainConfig
from agents.run_dir import RunDir, RunDirError
from policies.policy import MemoryPolicy


@dataclass
class LoadedRun:
    """A run rebuilt for evaluation: its config, the task settings to use, the policy."""

    run_dir: RunDir
    config: TrainConfig
    env_kwargs: dict[str, Any]
    """Task settings for evaluation: the run's, with the overrides applied."""
    overrides: dict[str, Any]
    policy: MemoryPolicy
    checkpoint: dict[str, Any]
    """global_step, update, wall_time and path of the checkpoint loaded."""
    device: torch.device

    def make_env(self, num_envs: int, seed: int, device: str | torch.device | None = None) -> Any:
        """A batched env with the evaluation's task settings."""
        device = self.device if device is None else device
        return make_env(self.config, num_envs=num_envs, device=str(device), seed=seed,
                        **self.env_kwargs)  # fmt: skip


def resolve_task(config: TrainConfig, overrides: dict[str, Any]) -> dict[str, Any]:
    """The run's task settings with ``overrides`` applied and validated (raises ConfigError).

    A time limit the run left at the task's default follows the overridden settings (a
    corridor of length 5000 gets the default limit of that length), unless given too.
    """
    overrides = {name: value for name, value in overrides.items() if value is not None}
    if config.env not in envs.TASKS:
        if overrides:
            name = next(iter(overrides))
            raise ConfigError(f"--{name.replace('_', '-')} applies only to the suite's own tasks, "
                              f"not {config.env}")  # fmt: skip
        return dict(config.env_kwargs)
    allowed = task_parameters()[config.env]
    for name, value in overrides.items():
        if name not in allowed:
            flags = ", ".join("--" + n.replace("_", "-") for n in allowed)
            raise ConfigError(f"--{name.replace('_', '-')} {value} is not a parameter of "
                              f"{config.env} (its parameters: {flags})")  # fmt: skip
    view_size = config.env_kwargs.get("view_size")
    if "view_size" in overrides and overrides["view_size"] != view_size:
        raise ConfigError(
            f"--view-size {overrides['view_size']}: the policy was trained with "
            f"view_size {view_size}, and its observations must keep that shape"
        )
    task_class = envs.TASKS[config.env][0].config_class
    kwargs = dict(config.env_kwargs)
    if overrides and "max_steps" not in overrides and "max_steps" in kwargs:
        without_limit = {k: v for k, v in kwargs.items() if k != "max_steps"}
        try:
            if task_class(**without_limit).max_steps == kwargs["max_steps"]:
                kwargs = without_limit  # the run used the default time limit: keep following it
        except ValueError:
            pass
    kwargs.update(overrides)
    if "min_length" in kwargs and "min_length" not in overrides:
        kwargs["min_length"] = kwargs["length"]  # a random-length run is evaluated at full length
    try:
        task = task_class(**kwargs)
    except ValueError as error:
        given = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in overrides.items())
        raise ConfigError(f"{given}: {config.env} rejects it: {error}") from None
    return {name: getattr(task, name) for name in allowed}


def load_run(
    path: str, checkpoint: str | None = None, device: str = "cpu",
    overrides: dict[str, Any] | None = None,
) -> LoadedRun:  # fmt: skip
    """Rebuild a run's policy and weights from its directory (raises RunDirError/ConfigError)."""
    run_dir = RunDir.open(path)
    config = run_dir.config()
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    env_kwargs = resolve_task(config, overrides)
    payload = run_dir.load_checkpoint(checkpoint, device=device)
    if "policy" not in payload:
        raise RunDirError(f"{run_dir.checkpoint_path(checkpoint)} holds no policy weights")
    env = make_env(config, num_envs=1, device=device, seed=0, **env_kwargs)
    try:
        policy = build_policy(config, env, device)
        policy.load_state_dict(payload["policy"])
    except (RuntimeError, ValueError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise RunDirError(
            f"checkpoint {run_dir.checkpoint_path(checkpoint)} does not fit the "
            f"run's policy: {first_line}"
        ) from None
    policy.eval()
    info = {
        "path": str(run_dir.checkpoint_path(checkpoint)),
        "global_step": int(payload.get("global_step", 0)),
        "update": int(payload.get("update", 0)),
        "wall_time": float(payload.get("wall_time", 0.0)),
    }
    return LoadedRun(run_dir, config, env_kwargs, overrides, policy, info, torch.device(device))
