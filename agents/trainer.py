"""The training loop: collect, update, log, checkpoint; resumable at any checkpoint.

One seed gives the same run on CPU, and a run resumed from a checkpoint goes
on exactly as the uninterrupted run would have: the checkpoint holds the
weights, the optimiser, the schedule position, every random state, the envs'
state and the policy's memory.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import numpy as np
import torch

from agents.build import build_policy, make_env
from agents.impala import IMPALA
from agents.learner import Learner
from agents.ppo import PPO
from agents.rollout import Collector
from agents.run_config import TrainConfig
from agents.run_dir import TENSORBOARD_PREFIX, RunDir, is_main_process

LEARNERS: dict[str, type[Learner]] = {"ppo": PPO, "impala": IMPALA}

CONFIRM_EVERY = 5
"""Metric intervals between two greedy checks of the targets (`Trainer._confirm_targets`)."""


def _memory_stats(collector: Collector) -> dict[str, float]:
    output = getattr(collector, "last_output", None)
    if output is None or output.memory_alive.numel() == 0:
        return {"mem_alive_mean": math.nan, "mem_alive_max": math.nan, "span_mean": math.nan}
    span = output.span_mean
    alive = output.memory_alive.float()  # [B, L]
    return {
        "mem_alive_mean": alive.mean(dim=0).mean().item(),
        "mem_alive_max": alive.max().item(),
        "span_mean": span.float().mean().item() if span.numel() else math.nan,
    }


class Progress:
    """A live progress bar on a terminal, plain log lines otherwise."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.interactive = enabled and sys.stdout.isatty()
        self.bar = None
        if self.interactive:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", unit_scale=True,
                            dynamic_ncols=True)  # fmt: skip
        self.enabled = enabled

    def advance(self, steps: int) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def log(self, row: dict[str, float]) -> None:
        text = {
            "sps": f"{row['sps']:.0f}",
            "success": f"{row['success_rate']:.3f}",
            "return": f"{row['episode_return']:.3f}",
            "alive": f"{row['mem_alive_mean']:.1f}",
        }
        if self.bar is not None:
            self.bar.set_postfix(text, refresh=True)
        elif self.enabled:
            fields = " ".join(f"{k}={v}" for k, v in text.items())
            print(f"step {int(row['global_step'])} update {int(row['update'])} {fields}",
                  flush=True)  # fmt: skip

    def note(self, text: str) -> None:
        """A line of its own (above the bar on a terminal), printed even without progress."""
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Trainer:
    """Everything of one run, built from its config; ``run()`` trains to the end."""

    def __init__(self, config: TrainConfig, run_dir: RunDir, resume: bool = False,
                 progress: bool = True):  # fmt: skip
        self.config, self.run_dir = config, run_dir
        self.reached_targets = False
        """Whether the last run stopped because an interval met the run's targets."""
        run = config.run
        if run.threads:
            torch.set_num_threads(run.threads)
        torch.manual_seed(run.seed)
        np.random.seed(run.seed)
        self.device = torch.device(run.device)
        self.env = make_env(config)
        self.curriculum = config.learner.curriculum_start is not None
        if self.curriculum:  # before the collector's reset draws the first episodes
            self._set_curriculum(config.learner.curriculum_start, restart=False)
        self.policy = build_policy(config, self.env, self.device)
        self.learner = LEARNERS[config.learner.algo](self.policy, config.learner, run.seed)
        self.collector = Collector(
            self.env, self.policy, config.learner.num_steps, config.learner.chunk_length,
            run.seed,
        )  # fmt: skip
        self.steps_per_update = config.learner.num_envs * config.learner.num_steps
        self.global_step, self.wall_offset = 0, 0.0
        self.last_confirm = -math.inf
        """Update of the last greedy check of the targets."""
        if resume:
            self._restore(run_dir.load_checkpoint(device=str(self.device)))
        self._set_stage_settings()  # the (restored) curriculum stage's
        self.progress_enabled = progress

    # -- checkpoints ---------------------------------------------------------
    def _payload(self, wall_time: float) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "global_step": self.global_step,
            "update": self.learner.update_count,
            "wall_time": wall_time,
            "policy": self.policy.state_dict(),
            "learner": self.learner.state_dict(),
            "collector": self.collector.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "numpy_rng": np.random.get_state(),
            "last_confirm": self.last_confirm,
        }

    def _restore(self, payload: dict[str, Any]) -> None:
        self.policy.load_state_dict(payload["policy"])
        self.learner.load_state_dict(payload["learner"])
        self.collector.load_state_dict(payload["collector"])
        torch.set_rng_state(payload["torch_rng"])
        if payload.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(payload["cuda_rng"])
        np.random.set_state(payload["numpy_rng"])
        self.global_step = payload["global_step"]
        self.wall_offset = payload["wall_time"]
        self.last_confirm = payload.get("last_confirm", -math.inf)
        if is_main_process():
            self.run_dir.truncate_metrics(self.global_step)

    def save(self, wall_time: float) -> None:
        if is_main_process():
            self.run_dir.save_checkpoint(
                self._payload(wall_time), self.learner.update_count,
                self.config.run.keep_checkpoints,
            )  # fmt: skip

    # -- the loop --------------------------------------------------------------
    def run(self) -> dict[str, float]:
        """Train until ``total_steps`` (or the run's targets); return the last metrics row."""
        from torch.utils.tensorboard import SummaryWriter

        config, learner = self.config, self.learner
        writer = None
        if is_main_process():
            writer = SummaryWriter(str(self.run_dir.path), purge_step=self.global_step or None)
        progress = Progress(config.learner.total_steps, self.global_step, self.progress_enabled)
        start = time.perf_counter()
        interval_start, interval_steps = start, 0
        last_row: dict[str, float] = {}
        try:
            while learner.update_count < learner.num_updates:
                rollout = self.collector.collect()
                metrics = learner.update(rollout)
                self.global_step += self.steps_per_update
                interval_steps += self.steps_per_update
                progress.advance(self.steps_per_update)
                update = learner.update_count
                last = update == learner.num_updates
                wall = self.wall_offset + time.perf_counter() - start
                stop = False
                if update % config.run.log_interval == 0 or last:
                    now = time.perf_counter()
                    row = {
                        "global_step": self.global_step,
                        "update": update,
                        "wall_time": wall,
                        "sps": interval_steps / max(now - interval_start, 1e-9),
                        **self.collector.stats.read(),
                        **{key: value.item() for key, value in metrics.items()},
                        **_memory_stats(self.collector),
                        "task_longest": self._longest(),
                    }
                    interval_start, interval_steps = now, 0
                    self._log(row, writer)
                    progress.log(row)
                    last_row = row
                    full_task = self._advance_curriculum(row)
                    stop = full_task and self._reached_targets(row)
                    if stop and config.run.confirm_episodes:
                        stop = self._confirm_targets(progress)
                    self.reached_targets = stop
                if update % config.run.checkpoint_interval == 0 or last or stop:
                    self.save(wall)
                if stop:
                    break
        finally:
            progress.close()
            if writer is not None:
                writer.close()
        return last_row

    def _reached_targets(self, row: dict[str, float]) -> bool:
        """Whether an interval on the full task meets --target-success and --target-alive
        (each when set: a policy without memories logs NaN alive memories and never meets
        it). A --target-oracle-share has no training figure: only the greedy check scores
        it, so with it every such interval goes on to the check."""
        run = self.config.run
        if run.target_success is None and run.target_oracle_share is None:
            return False
        return self._meets_targets(row["success_rate"], row["mem_alive_mean"])

    def _meets_targets(self, success: float, alive: float, share: float | None = None) -> bool:
        """Whether these figures meet each target that is set (the oracle share only where
        it was scored, by a greedy check)."""
        run = self.config.run
        return (
            (run.target_success is None or success >= run.target_success)
            and (run.target_alive is None or alive <= run.target_alive)
            and (share is None or run.target_oracle_share is None
                 or share >= run.target_oracle_share)
        )  # fmt: skip

    def _confirm_targets(self, progress: Progress) -> bool:
        """Whether greedy episodes of the full task meet the targets too (the bar is what
        `evaluate.py` measures, not the training interval's sampled, random-length episodes).
        Checked at most once every `CONFIRM_EVERY` intervals; each check is logged in
        ``target_checks.jsonl``."""
        update, run = self.learner.update_count, self.config.run
        if update - self.last_confirm < CONFIRM_EVERY * run.log_interval:
            return False
        self.last_confirm = update
        from agents.evaluate import PolicyAgent, evaluate, evaluate_with_oracle, resolve_task

        episodes, seed = run.confirm_episodes, run.seed + update
        num_envs = min(episodes, self.config.learner.num_envs)

        def new_env() -> Any:
            return make_env(self.config, num_envs=num_envs, device=str(self.device),
                            seed=seed, **resolve_task(self.config, {}))  # fmt: skip

        agent, share = PolicyAgent(self.policy), None
        was_training = self.policy.training
        self.policy.eval()
        try:
            if run.target_oracle_share is None:
                result = evaluate(new_env(), agent, episodes, seed=seed)
            else:
                result, _, share = evaluate_with_oracle(new_env, agent, episodes, seed)
        finally:
            self.policy.train(was_training)
        passed = self._meets_targets(result.success_rate, result.mem_alive_mean, share)
        check = {"global_step": self.global_step, "update": update, "episodes": episodes,
                 "success_rate": result.success_rate, "mem_alive_mean": result.mem_alive_mean,
                 "passed": passed}  # fmt: skip
        scored = f"success {result.success_rate:.3f}"
        if share is not None:
            check["oracle_share"] = share
            scored += f", {share:.1%} of the oracle's score"
        if is_main_process():
            self.run_dir.append_target_check(check)
        progress.note(
            f"target check at step {self.global_step}: {episodes} greedy episodes of the full "
            f"task, {scored}, {result.mem_alive_mean:.1f} alive: "
            + ("met, stopping" if passed else "not met, training on")
        )
        return passed

    def _longest(self) -> float:
        """The task's curriculum stage: the longest corridor, or the instruction room's size
        (NaN for tasks without one)."""
        stage = getattr(self.env, "curriculum_stage", None)
        return float(stage) if stage is not None else math.nan

    def _set_curriculum(self, stage: int, full_fraction: float = 0.0, restart: bool = True) -> None:
        """Move the curriculum to ``stage``; where that replaces the running episodes, the
        collector ``restart``s its memories too (not needed before it first resets)."""
        self.env.set_curriculum_stage(stage, full_fraction)
        if restart and self.env.stage_restarts_episodes:
            self.collector.restart()

    def _advance_curriculum(self, row: dict[str, float]) -> bool:
        """Double the curriculum's stage (the longest corridor, the instruction room's size) up
        to the task's own once the interval's success reaches the bar; whether the interval
        was already on the full task."""
        if not self.curriculum:
            return True
        stage, full = int(self._longest()), self._full_stage()
        if stage < full and row["success_rate"] >= self.config.learner.curriculum_success:
            stage = min(2 * stage, full)
            full_fraction = self.config.learner.curriculum_full_fraction
            self._set_curriculum(stage, full_fraction if stage == full else 0.0)
            self._set_stage_settings()
            return False
        return stage == full

    def _full_stage(self) -> int:
        return int(self.config.env_kwargs[self.env.curriculum_parameter])

    def _set_stage_settings(self) -> None:
        """The learner's entropy coefficient and span learning rate for the curriculum's
        current stage."""
        if not self.curriculum:
            return
        config = self.config.learner
        stage, full = int(self._longest()), self._full_stage()
        self.learner.ent_coef = config.entropy_coef(stage, full)
        if config.span_lr_scale_final is not None:
            final = stage == full
            self.learner.set_span_lr_scale(
                config.span_lr_scale_final if final else config.span_lr_scale
            )

    def _log(self, row: dict[str, float], writer: Any) -> None:
        if not is_main_process():
            return
        self.run_dir.append_metrics(row)
        for key, value in row.items():
            if key in ("global_step", "update") or not math.isfinite(value):
                continue
            prefix = TENSORBOARD_PREFIX.get(key, "losses")
            writer.add_scalar(f"{prefix}/{key}", value, int(row["global_step"]))
        writer.flush()
