"""The training loop: collect, update, log, checkpoint; resumable at any checkpoint.

One seed gives the same run on CPU, and a run resumed from a checkpoint goes
on exactly as the uninterrupted run would have: the checkpoint holds the
weights, the optimiser, the schedule position, every random state, the envs'
state and the policy's memory.

Under torchrun (`agents.distributed`) every rank runs this loop on its own
share of the envs, seeded ``seed + rank``, from rank 0's initial weights. The
metrics of an interval are reduced over the ranks before anything reads them,
so the curriculum and the stop rule take the same decision on every rank; the
greedy check of the stop runs on rank 0 and its answer is broadcast. Rank 0
alone writes the run directory; its checkpoints hold every rank's envs,
memories and random states, so a resume with as many ranks goes on exactly.

Ctrl-C (SIGINT) or SIGTERM in a single process lets the update under way
finish, writes a checkpoint at it and stops with `Interrupted`, so a resume
loses nothing; a second signal stops at once (the last checkpoint is kept).
Under torchrun the launcher passes the signal on to the ranks, which stop at
once, and a resume goes on from the last periodic checkpoint.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

import torch

from agents.build import build_policy, make_env
from agents.control import Curriculum, Interrupted, SignalStop, StopRule
from agents.distributed import SINGLE, World, to_cpu
from agents.impala import IMPALA
from agents.learner import Learner
from agents.ppo import PPO
from agents.rollout import Collector
from agents.run_config import TrainConfig
from agents.run_dir import TENSORBOARD_PREFIX, RunDir, RunDirError

LEARNERS: dict[str, type[Learner]] = {"ppo": PPO, "impala": IMPALA}

# How an interval's metrics combine over the ranks under torchrun. The episode columns come
# from the ranks' summed episode counts; the rest (steps, update, learning rate, entropy
# coefficient, the gradient norm of the averaged gradient, the stage) are the same on every
# rank, and wall_time is rank 0's.
RANK_MEAN = ("policy_loss", "value_loss", "entropy", "aux_loss", "approx_kl", "clip_fraction",
             "mem_alive_mean", "span_mean")  # fmt: skip
"""Means over equally many envs per rank: their mean is the mean over all envs."""
RANK_MAX = ("mem_alive_max", "rss_mb")
RANK_MIN = ("sps",)
"""The slowest rank's pace is the run's (the ranks wait for each other at every update)."""
RANK_LOCAL = ("collector", "torch_rng", "cuda_rng")
"""The parts of a checkpoint that each rank holds for itself (with its minibatch order)."""


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


def resident_mb() -> float:
    """This process's resident memory in MiB (Linux's /proc; NaN elsewhere)."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
    except (OSError, ValueError, IndexError):
        return math.nan
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


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
                 progress: bool = True, checkpoint: dict[str, Any] | None = None,
                 world: World = SINGLE):  # fmt: skip
        """``resume``: go on from the run's latest checkpoint (``checkpoint``, if already
        loaded). ``world``: this process's rank among the run's processes (torchrun)."""
        self.config, self.run_dir, self.world = config, run_dir, world
        self.reached_targets = False
        """Whether the last run stopped because an interval met the run's targets."""
        run = config.run
        if run.threads:
            torch.set_num_threads(run.threads)
        seed = run.seed + world.rank  # what each rank draws for itself: sampling, envs
        torch.manual_seed(seed)
        device = world.device(run.device)
        self.device = torch.device(device)
        self.env = make_env(config, num_envs=config.learner.num_envs // world.size,
                            device=device, seed=seed)  # fmt: skip
        self.curriculum: Curriculum | None = None
        if config.learner.curriculum_start is not None:
            full = config.env_kwargs[self.env.curriculum_parameter]
            self.curriculum = Curriculum(config.learner, full)
            # Before the collector's reset draws the first episodes.
            self.env.set_curriculum_stage(self.curriculum.stage, self.curriculum.full_fraction)
        self.stop_rule = StopRule(run)
        self.policy = build_policy(config, self.env, self.device)
        world.broadcast_module(self.policy)  # every rank starts from rank 0's weights
        self.learner = LEARNERS[config.learner.algo](self.policy, config.learner, seed, world)
        self.collector = Collector(
            self.env, self.policy, config.learner.num_steps, config.learner.chunk_length, seed,
        )  # fmt: skip
        self.steps_per_update = config.learner.num_envs * config.learner.num_steps  # all ranks
        self.global_step, self.wall_offset = 0, 0.0
        if resume:
            if checkpoint is None:
                checkpoint = run_dir.load_checkpoint(device=str(self.device))
            self._restore(checkpoint)
        self._apply_stage_settings()  # the (restored) curriculum stage's
        self.progress_enabled = progress and world.is_main

    # -- checkpoints ---------------------------------------------------------
    def _rank_state(self) -> dict[str, Any]:
        """What this rank alone holds: its envs, memories, random states, minibatch order."""
        return {
            "collector": self.collector.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "generator": self.learner.generator.get_state(),
        }

    def _payload(self, wall_time: float, other_ranks: list[dict[str, Any]]) -> dict[str, Any]:
        """The checkpoint: rank 0's state where a single process keeps its own, and under
        torchrun every other rank's (`_rank_state`) in ``other_ranks``."""
        return {
            "config": self.config.to_dict(),
            "world_size": self.world.size,
            "other_ranks": other_ranks,
            "global_step": self.global_step,
            "update": self.learner.update_count,
            "wall_time": wall_time,
            "policy": self.policy.state_dict(),
            "learner": self.learner.state_dict(),
            "collector": self.collector.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "stop_rule": self.stop_rule.state_dict(),
            "stopped_at_targets": self.reached_targets,
            "curriculum": self.curriculum.state_dict() if self.curriculum else None,
        }

    def _restore(self, payload: dict[str, Any]) -> None:
        """Go on from a checkpoint; one that does not fit this run (another policy, another
        env, another number of ranks) is a RunDirError naming the part that does not fit."""
        payload = self._rank_payload(payload)
        parts = (("policy", self.policy), ("learner", self.learner),
                 ("collector", self.collector))  # fmt: skip
        for name, part in parts:
            try:
                part.load_state_dict(payload[name])
            except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as error:
                text = str(error).strip().splitlines()
                raise RunDirError(
                    f"the checkpoint of {self.run_dir.path} does not fit the run's {name} "
                    f"({self.config.policy} on {self.config.env}): "
                    f"{text[0] if text else type(error).__name__}"
                ) from None
        torch.set_rng_state(payload["torch_rng"])
        if payload.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(payload["cuda_rng"])
        self.global_step = payload["global_step"]
        self.wall_offset = payload["wall_time"]
        self.stop_rule.load_state_dict(payload["stop_rule"])
        if self.curriculum is not None:
            # A version 1 checkpoint kept the stage only in the envs' state.
            stage = payload["curriculum"] or {"stage": self.env.curriculum_stage}
            self.curriculum.load_state_dict(stage)
        if self.world.is_main:
            self.run_dir.truncate_metrics(self.global_step)

    def _rank_payload(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A checkpoint as this rank restores it: with its own envs, memories and random
        states in place of rank 0's (checkpoints without ``world_size`` are one process's)."""
        size = payload.get("world_size", 1)
        if size != self.world.size:
            raise RunDirError(
                f"the checkpoint of {self.run_dir.path} was written by {size} processes, not "
                f"{self.world.size}: resume it with torchrun --nproc-per-node {size} "
                "(or python train_rl.py for 1)"
            )
        if self.world.is_main:
            return payload
        own = payload["other_ranks"][self.world.rank - 1]
        learner = {**payload["learner"], "generator": own["generator"]}
        return {**payload, **{key: own[key] for key in RANK_LOCAL}, "learner": learner}

    def save(self, wall_time: float) -> None:
        """Write a checkpoint (rank 0), with every rank's own state gathered to it."""
        other_ranks: list[dict[str, Any]] = []
        if self.world.distributed:
            gathered = self.world.gather_objects(to_cpu(self._rank_state()))
            other_ranks = (gathered or [])[1:]  # rank 0's own state is the payload's
        if self.world.is_main:
            self.run_dir.save_checkpoint(
                self._payload(wall_time, other_ranks), self.learner.update_count,
                self.config.run.keep_checkpoints,
            )  # fmt: skip

    # -- the loop --------------------------------------------------------------
    def run(self) -> dict[str, float]:
        """Train until ``total_steps`` (or the run's targets); return the last metrics row."""
        from torch.utils.tensorboard import SummaryWriter

        config, learner = self.config, self.learner
        writer = None
        if self.world.is_main:
            # TensorBoard drops what an interrupted attempt logged after the checkpoint (the row at
            # the checkpoint's own step stays, as in metrics.csv).
            writer = SummaryWriter(str(self.run_dir.path), purge_step=self.global_step + 1)
        progress = Progress(config.learner.total_steps, self.global_step, self.progress_enabled)
        start = time.perf_counter()
        interval_start, interval_steps = start, 0
        last_row: dict[str, float] = {}
        try:
            with SignalStop(enabled=not self.world.distributed) as signals:
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
                        sps = interval_steps / max(now - interval_start, 1e-9)
                        row = self._interval_row(metrics, wall, sps)
                        interval_start, interval_steps = now, 0
                        self._log(row, writer)
                        progress.log(row)
                        last_row = row
                        full_task = self._advance_curriculum(row["success_rate"])
                        stop = full_task and self.stop_rule.interval_meets(row)
                        if stop and config.run.confirm_episodes:
                            stop = self.stop_rule.check_due(update) and self._greedy_check(progress)
                        self.reached_targets = stop
                    asked = signals.signum is not None
                    if update % config.run.checkpoint_interval == 0 or last or stop or asked:
                        self.save(wall)
                    if stop:
                        break
                    if asked and not last:
                        raise Interrupted(signals.signum, update)
        finally:
            progress.close()
            if writer is not None:
                writer.close()
        return last_row

    def _interval_row(self, metrics: dict[str, torch.Tensor], wall: float,
                      sps: float) -> dict[str, float]:  # fmt: skip
        """The metrics row of the interval that ends now (over every rank's envs)."""
        self.world.sum_(self.collector.stats.sums)  # every rank's finished episodes
        row = {
            "global_step": self.global_step,
            "update": self.learner.update_count,
            "wall_time": wall,
            "sps": sps,
            **self.collector.stats.read(),
            **{key: value.item() for key, value in metrics.items()},
            **_memory_stats(self.collector),
            "task_longest": self._stage(),
            "rss_mb": resident_mb(),
        }
        return self.world.reduce_floats(row, RANK_MEAN, RANK_MAX, RANK_MIN)

    def _greedy_check(self, progress: Progress) -> bool:
        """Whether greedy episodes of the full task meet the targets too (what `evaluate.py`
        measures, not the training interval's sampled, random-length episodes); each check is
        logged in ``target_checks.jsonl``.

        Under torchrun rank 0 plays the episodes and every rank takes its answer: the same
        episodes a single process would play, and no way for ranks whose arithmetic differs
        in the last bit (other CPUs, other GPUs) to disagree about stopping."""
        passed = self._play_greedy_check(progress) if self.world.is_main else False
        return self.world.broadcast_flag(passed)

    def _play_greedy_check(self, progress: Progress) -> bool:
        from agents.evaluate import PolicyAgent, evaluate, evaluate_with_oracle
        from agents.load_run import resolve_task

        run, update = self.config.run, self.learner.update_count
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
        passed = self.stop_rule.meets(result.success_rate, result.mem_alive_mean, share)
        check = {"global_step": self.global_step, "update": update, "episodes": episodes,
                 "success_rate": result.success_rate, "mem_alive_mean": result.mem_alive_mean,
                 "passed": passed}  # fmt: skip
        scored = f"success {result.success_rate:.3f}"
        if share is not None:
            check["oracle_share"] = share
            scored += f", {share:.1%} of the oracle's score"
        self.run_dir.append_target_check(check)
        progress.note(
            f"target check at step {self.global_step}: {episodes} greedy episodes of the full "
            f"task, {scored}, {result.mem_alive_mean:.1f} alive: "
            + ("met, stopping" if passed else "not met, training on")
        )
        return passed

    def _stage(self) -> float:
        """The curriculum's stage: the longest corridor, or the instruction room's size (NaN
        for tasks without a curriculum stage)."""
        stage = getattr(self.env, "curriculum_stage", None)
        return float(stage) if stage is not None else math.nan

    def _advance_curriculum(self, success_rate: float) -> bool:
        """Let the curriculum see an interval's success; on a new stage, start it in the env
        (and restart the memories where it replaces the running episodes) and apply its
        settings. Whether the interval was already on the full task."""
        curriculum = self.curriculum
        if curriculum is None:
            return True
        if not curriculum.advance(success_rate):
            return curriculum.at_full_task
        self.env.set_curriculum_stage(curriculum.stage, curriculum.full_fraction)
        if self.env.stage_restarts_episodes:
            self.collector.restart()
        self._apply_stage_settings()
        return False

    def _apply_stage_settings(self) -> None:
        """The learner's entropy coefficient and span learning rate for the curriculum's
        current stage."""
        if self.curriculum is None:
            return
        self.learner.ent_coef = self.curriculum.ent_coef()
        span_lr_scale = self.curriculum.span_lr_scale()
        if span_lr_scale is not None:
            self.learner.set_span_lr_scale(span_lr_scale)

    def _log(self, row: dict[str, float], writer: Any) -> None:
        if not self.world.is_main:
            return
        self.run_dir.append_metrics(row)
        for key, value in row.items():
            if key in ("global_step", "update") or not math.isfinite(value):
                continue
            prefix = TENSORBOARD_PREFIX.get(key, "losses")
            writer.add_scalar(f"{prefix}/{key}", value, int(row["global_step"]))
        writer.flush()
