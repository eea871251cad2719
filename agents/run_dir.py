"""Run directories: config, metrics, TensorBoard events and checkpoints of one run.

Layout (``runs/<env>-<policy>-<algo>-s<seed>-<YYYYmmdd-HHMMSS>/``)::

    config.json          the resolved TrainConfig (rebuilds env, policy and learner)
    metrics.csv          one row per logging interval, columns METRIC_COLUMNS
    events.out.tfevents* TensorBoard events, the same numbers under charts/, losses/, memory/
    checkpoints/         ckpt_<update>.pt (the last few) and latest.pt
    eval.json, videos/, plots/   written by evaluation

Nothing a run wrote is lost to a crash or a kill: files are written to a
temporary name, synced and renamed (atomic on POSIX; the directory entry is
synced too), metrics are appended and flushed row by row, and a resumed run
first cuts ``metrics.csv`` back to the checkpoint it resumes from. A
temporary file a kill left behind is removed when training starts again; a
``latest.pt`` cut short falls back to the newest intact ``ckpt_*.pt``.

Under torchrun rank 0 alone writes the run directory (`agents.distributed`); its
checkpoints hold every rank's envs, memories and random states.

Checkpoints are data, not code: they hold only tensors and plain containers
and are loaded with ``torch.load(..., weights_only=True)``, so opening a run
directory someone sent you never runs what its files hold.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pickle
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from agents.run_config import ConfigError, TrainConfig

CHECKPOINT_VERSION = 2
"""The checkpoint format: 2 holds plain data only, with the state of the run's control rules
(``stop_rule``, ``curriculum``); 1, the first, also held numpy's global random state. Version 1
checkpoints are read and upgraded (`upgrade_v1`)."""

TEMPORARY = re.compile(r"^\..+\.tmp\d+$")
"""Names of the temporary files of `atomic_write_bytes` (``.<name>.tmp<pid>``)."""

# Column -> meaning. The one list of metric names: the CSV header, TensorBoard tags
# and the README's table come from here.
METRIC_COLUMNS: dict[str, str] = {
    "global_step": "env steps so far, all envs together",
    "update": "learner updates so far",
    "wall_time": "seconds since the run started (across resumes)",
    "sps": "env steps per second over the last logging interval",
    "episodes": "episodes finished in the interval",
    "success_rate": "fraction of those episodes that succeeded",
    "episode_return": "their mean return",
    "episode_length": "their mean length",
    "policy_loss": "policy-gradient loss (PPO clipped / V-trace)",
    "value_loss": "value loss",
    "entropy": "policy entropy",
    "aux_loss": "the policy's auxiliary loss (Expire-Span span loss, already times alpha, plus "
                 "the observation reconstruction loss, times its coefficient)",
    "approx_kl": "approximate KL between behaviour and updated policy",
    "clip_fraction": "fraction of ratios clipped (PPO) or above rho-bar (IMPALA)",
    "grad_norm": "gradient norm before clipping",
    "learning_rate": "current learning rate",
    "ent_coef": "current entropy coefficient (moves with a length curriculum)",
    "mem_alive_mean": "memories alive per env after the rollout (mean over envs and layers)",
    "mem_alive_max": "largest alive count of any env and layer",
    "span_mean": "mean predicted span of new memories in the last rollout step",
    "rss_mb": "resident memory of the training process at the end of the interval, in MiB "
    "(empty where the platform does not say)",
    "task_longest": "the curriculum's stage in the interval: the longest corridor drawn (below "
    "the full length while a length curriculum runs), or the Instruction room's size (empty "
    "for the other tasks)",
}
TENSORBOARD_PREFIX = {
    "sps": "charts", "episodes": "charts", "success_rate": "charts", "episode_return": "charts",
    "episode_length": "charts", "learning_rate": "charts", "ent_coef": "charts",
    "mem_alive_mean": "memory", "mem_alive_max": "memory", "span_mean": "memory",
    "task_longest": "charts", "rss_mb": "charts",
}  # fmt: skip


class RunDirError(ValueError):
    """A run directory that cannot be used: missing, not a run, corrupt or mismatched."""


def default_name(config: TrainConfig) -> str:
    """``<env>-<policy>-<algo>-s<seed>-<YYYYmmdd-HHMMSS>`` (gym ids made file-safe)."""
    env = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.env)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{env}-{config.policy}-{config.learner.algo}-s{config.run.seed}-{stamp}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced temporary file and a rename, then sync the
    directory entry; on failure (e.g. a full disk) the temporary file goes and ``path`` keeps
    what it held."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def sync_directory(path: Path) -> None:
    """Make a rename in ``path`` durable (where the platform lets a directory be synced)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def atomic_torch_save(obj: Any, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


class CorruptCheckpointError(RunDirError):
    """A checkpoint file that cannot be read back (cut short, overwritten, not a checkpoint)."""


def _numpy_array_globals() -> list[Any]:
    """What unpickling numpy arrays needs (version 1 checkpoints held numpy's random state):
    array reconstruction, no code."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _unsafe_globals(path: Path) -> list[str]:
    """The globals a checkpoint's pickle names beyond what ``weights_only`` loading allows
    (read from the pickle's opcodes, nothing is executed)."""
    finder = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    return list(finder(path)) if finder is not None else []


def read_checkpoint(path: Path, device: str = "cpu") -> dict[str, Any]:
    """One checkpoint file as plain data (``weights_only`` loading: nothing in the file is
    run); version 1 is upgraded to the current format."""
    try:
        payload = _load_plain(path, device)
    except RunDirError:
        raise
    except Exception as error:  # a file cut short, overwritten, or not a torch file at all
        raise CorruptCheckpointError(
            f"checkpoint {path} is corrupt: {type(error).__name__}") from None
    version = payload.get("format_version") if isinstance(payload, dict) else None
    if version == 1:
        return upgrade_v1(payload)
    if version != CHECKPOINT_VERSION:
        raise RunDirError(
            f"checkpoint {path} has format version {version!r}; this expire-rl reads versions "
            f"1 and {CHECKPOINT_VERSION}"
        )
    return payload


def _load_plain(path: Path, device: str) -> Any:
    """``torch.load`` with ``weights_only``; numpy arrays (version 1's random state) are let
    through, any other global is refused by name."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        unsafe = _unsafe_globals(path)
        allowed = {f"{g.__module__}.{g.__qualname__}" for g in _numpy_array_globals()}
        foreign = [name for name in unsafe if name not in allowed]
        if foreign:
            raise RunDirError(
                f"checkpoint {path} is not plain data (it names {', '.join(foreign)}): refused, "
                "since loading it could run code it carries"
            ) from None
        if not unsafe:
            raise
        with torch.serialization.safe_globals(_numpy_array_globals()):
            return torch.load(path, map_location=device, weights_only=True)


def upgrade_v1(payload: dict[str, Any]) -> dict[str, Any]:
    """A version 1 checkpoint in the current format: numpy's random state (which nothing drew
    from) goes, the greedy check's last update becomes the stop rule's state, and the
    curriculum's stage is left to be read from the envs' state (``curriculum`` None)."""
    upgraded = {key: value for key, value in payload.items()
                if key not in ("numpy_rng", "last_confirm")}  # fmt: skip
    upgraded.update(
        format_version=CHECKPOINT_VERSION,
        stop_rule={"last_check": float(payload.get("last_confirm", -math.inf))},
        curriculum=None,
        stopped_at_targets=False,
    )
    return upgraded


class RunDir:
    """One run's directory: create it for a new run or open it to resume or evaluate."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.metrics_path = self.path / "metrics.csv"
        self.config_path = self.path / "config.json"
        self.target_checks_path = self.path / "target_checks.jsonl"

    @classmethod
    def create(cls, path: str | Path, config: TrainConfig) -> RunDir:
        run = cls(path)
        if run.config_path.exists():
            raise RunDirError(
                f"{run.path} already holds a run; resume it with --resume {run.path} "
                "or choose another --run-dir"
            )
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        run.write_config(config)
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing run; raises RunDirError when ``path`` is not one."""
        run = cls(path)
        if not run.path.is_dir():
            raise RunDirError(f"run directory {run.path} does not exist")
        if not run.config_path.is_file():
            raise RunDirError(f"{run.path} is not a run directory (no config.json)")
        return run

    def write_config(self, config: TrainConfig) -> None:
        """Replace config.json atomically (a resume that changes a flag it may change)."""
        atomic_write_bytes(self.config_path, json.dumps(config.to_dict(), indent=2).encode())

    def config(self) -> TrainConfig:
        try:
            return TrainConfig.from_dict(json.loads(self.config_path.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError, ConfigError) as error:
            raise RunDirError(f"{self.config_path} is not a valid run config: {error}") from None

    # -- checkpoints ---------------------------------------------------------
    def save_checkpoint(self, payload: dict[str, Any], update: int, keep: int) -> Path:
        """Write ``ckpt_<update>.pt`` and ``latest.pt`` atomically; keep the last ``keep``."""
        payload = {"format_version": CHECKPOINT_VERSION, **payload}
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        path = self.checkpoints / f"ckpt_{update:08d}.pt"
        atomic_torch_save(payload, path)
        atomic_torch_save(payload, self.checkpoints / "latest.pt")
        numbered = sorted(self.checkpoints.glob("ckpt_*.pt"))
        for old in numbered[:-keep]:
            old.unlink(missing_ok=True)
        return path

    def checkpoint_path(self, name: str | None = None) -> Path:
        """``latest.pt`` or a named checkpoint (a file name in checkpoints/ or a path)."""
        if name is None:
            path = self.checkpoints / "latest.pt"
        else:
            path = Path(name)
            if not path.is_file():
                path = self.checkpoints / name
        if not path.is_file():
            available = ", ".join(p.name for p in sorted(self.checkpoints.glob("*.pt"))) or "none"
            raise RunDirError(f"checkpoint {path} not found (available: {available})")
        return path

    def load_checkpoint(self, name: str | None = None, device: str = "cpu") -> dict[str, Any]:
        """Load a checkpoint (``latest.pt`` by default) as plain data; a corrupt, foreign or
        code-carrying file is a RunDirError. A corrupt ``latest.pt`` (a kill that cut a write
        short on a file system without atomic renames) falls back, with a warning on stderr,
        to the newest intact ``ckpt_*.pt``."""
        path = self.checkpoint_path(name)
        try:
            return read_checkpoint(path, device)
        except CorruptCheckpointError as error:
            if name is not None:
                raise
            for older in sorted(self.checkpoints.glob("ckpt_*.pt"), reverse=True):
                try:
                    payload = read_checkpoint(older, device)
                except CorruptCheckpointError:
                    continue
                print(f"warning: {error}; using {older.name} (step {payload['global_step']})",
                      file=sys.stderr)  # fmt: skip
                return payload
            raise

    def has_checkpoints(self) -> bool:
        """Whether the run has written a checkpoint (complete: checkpoints are written
        atomically)."""
        return self.checkpoints.is_dir() and any(self.checkpoints.glob("*.pt"))

    def remove_temporaries(self) -> list[Path]:
        """Delete the temporary files a killed run left behind (call only where no other
        process writes this run); the paths removed."""
        removed = []
        for folder in (self.path, self.checkpoints):
            for path in folder.glob(".*.tmp*") if folder.is_dir() else ():
                if TEMPORARY.match(path.name):
                    path.unlink(missing_ok=True)
                    removed.append(path)
        return removed

    # -- metrics ---------------------------------------------------------------
    def append_metrics(self, row: dict[str, float]) -> None:
        """Append one row to metrics.csv (header first if new) and flush it to disk."""
        new = not self.metrics_path.exists() or self.metrics_path.stat().st_size == 0
        with open(self.metrics_path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(METRIC_COLUMNS))
            if new:
                writer.writeheader()
            writer.writerow({k: _format(row.get(k, math.nan)) for k in METRIC_COLUMNS})
            handle.flush()
            os.fsync(handle.fileno())

    def append_target_check(self, check: dict[str, Any]) -> None:
        """Append one greedy check of the targets to target_checks.jsonl and flush it."""
        with open(self.target_checks_path, "a") as handle:
            handle.write(json.dumps(check) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def read_target_checks(self) -> list[dict[str, Any]]:
        """target_checks.jsonl as a list of checks (without a line cut short by a kill)."""
        if not self.target_checks_path.exists():
            return []
        lines = self.target_checks_path.read_text().splitlines()
        return [json.loads(line) for line in lines if math.isfinite(_logged_step(line))]

    def truncate_metrics(self, global_step: int) -> None:
        """Drop metric rows and target checks logged after ``global_step`` (written after the
        checkpoint resumed from)."""
        if self.target_checks_path.exists():
            lines = self.target_checks_path.read_text().splitlines()
            kept = [line for line in lines if _logged_step(line) <= global_step]
            atomic_write_bytes(self.target_checks_path, "".join(f"{k}\n" for k in kept).encode())
        if not self.metrics_path.exists():
            return
        with open(self.metrics_path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        kept = [row for row in rows if int(row.get("global_step") or 0) <= global_step]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(METRIC_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_bytes(self.metrics_path, buffer.getvalue().encode())

    def read_metrics(self) -> list[dict[str, float]]:
        """metrics.csv as a list of rows of floats."""
        if not self.metrics_path.exists():
            return []
        with open(self.metrics_path, newline="") as handle:
            return [{k: float(v) if v != "" else math.nan for k, v in row.items()}
                    for row in csv.DictReader(handle)]  # fmt: skip


def _logged_step(line: str) -> float:
    """The global step of a target_checks.jsonl line; infinite for a line cut short by a kill."""
    try:
        return float(json.loads(line)["global_step"])
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


def _format(value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
