"""Data-parallel training (torchrun, gloo on CPU): one update of 2 ranks is one update of 1
rank on their rollouts together, ranks keep bit-identical weights and take the curriculum's
decisions together, only rank 0 writes the run directory, and a job killed with SIGKILL
resumes to the run that was never interrupted (a resume with another number of processes is
refused).

Two ranks are started once for the module (`torch.multiprocessing`), as torchrun would start
them (its environment variables); the kill test launches torchrun itself.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing

from agents.build import build_policy, make_env
from agents.distributed import SINGLE, World, join
from agents.resolve import resolve
from agents.rollout import Collector, Rollout
from agents.train_args import TrainArgs
from agents.trainer import LEARNERS

ROOT = Path(__file__).resolve().parent.parent
RANKS = 2
CASES = [(algo, core) for algo in ("ppo", "impala") for core in ("expire_span", "trxl", "lstm")]
ENVS, RANK_ENVS = 8, 4  # the one-rank batch and each rank's half of it
RANK_MINIBATCHES = [[0, 1], [2, 3]]  # each rank's local env columns, per minibatch
# The one-rank learner's minibatches are the ranks' minibatches side by side.
JOINT_MINIBATCHES = [[0, 1, 4, 5], [2, 3, 6, 7]]
# The training run: 16 updates of 128 steps, a metrics row each, a checkpoint every 3, a
# length curriculum that moves on at half the episodes won (so it moves in a few updates),
# and no stop before the end.
UPDATES = 16
RUN = ["--env", "corridor", "--length", "24", "--min-length", "5", "--curriculum-start", "6",
       "--curriculum-success", "0.5", "--target-success", "0", "--num-envs", "8",
       "--num-steps", "16", "--num-minibatches", "2", "--update-epochs", "2",
       "--log-interval", "1", "--checkpoint-interval", "3", "--total-steps",
       str(128 * UPDATES), "--seed", "5", "--threads", "1", "--device", "cpu"]  # fmt: skip
TIMING = ("wall_time", "sps", "rss_mb")  # measurements of the machine, not of the run
WRITE_EVENTS = ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.truncate", "os.link",
                "os.symlink", "os.chmod", "os.utime", "shutil.rmtree")  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rollout_columns(rollout: Rollout, columns: torch.Tensor) -> Rollout:
    """The env ``columns`` of a rollout: what a rank holding those envs collects."""
    return Rollout(
        obs={key: value[:, columns] for key, value in rollout.obs.items()},
        episode_starts=rollout.episode_starts[:, columns],
        actions=rollout.actions[:, columns],
        log_probs=rollout.log_probs[:, columns],
        values=rollout.values[:, columns],
        rewards=rollout.rewards[:, columns],
        terminated=rollout.terminated[:, columns],
        truncated=rollout.truncated[:, columns],
        last_values=rollout.last_values[columns],
        start_states=[state[columns] for state in rollout.start_states],
        chunk_length=rollout.chunk_length,
    )


Weights = dict[str, torch.Tensor]


def one_update(algo: str, core: str, world: World) -> tuple[Weights, Weights]:
    """The float64 policy's weights before and after one update (2 epochs of 2 minibatches)
    from a rollout of 8 envs: all of it on one rank, or rank r's 4 columns under 2 ranks."""
    torch.set_default_dtype(torch.float64)
    try:
        args = TrainArgs(env="corridor", length=6, policy=core, algo=algo, num_envs=ENVS,
                         num_steps=16, chunk_length=8, num_minibatches=2, update_epochs=2,
                         d_model=16, total_steps=4096, threads=1)  # fmt: skip
        config = resolve(args, world.size)
        torch.manual_seed(0)
        env = make_env(config, num_envs=ENVS, seed=0)
        policy = build_policy(config, env, "cpu")
        rollout = Collector(env, policy, 16, 8, seed=0).collect()  # the same on every rank
        before = {key: value.clone() for key, value in policy.state_dict().items()}
        if world.distributed:
            own = torch.arange(world.rank * RANK_ENVS, (world.rank + 1) * RANK_ENVS)
            rollout, minibatches = rollout_columns(rollout, own), RANK_MINIBATCHES
        else:
            minibatches = JOINT_MINIBATCHES
        learner = LEARNERS[algo](policy, config.learner, 0, world)
        learner.minibatches = lambda: [torch.tensor(columns) for columns in minibatches]
        learner.update(rollout)
        return before, {key: value.clone() for key, value in policy.state_dict().items()}
    finally:
        torch.set_default_dtype(torch.float32)


def record_writes(root: Path, log: list[str]) -> None:
    """Log every file-system change this process makes under ``root`` (Python's audit
    events: opening for writing, renaming, removing, making directories)."""
    prefix = str(root)

    def under_root(path: object) -> bool:
        return isinstance(path, (str, bytes, os.PathLike)) and os.fsdecode(path).startswith(prefix)

    def hook(event: str, args: tuple) -> None:
        if event == "open" and under_root(args[0]):
            mode, flags = args[1], args[2]
            writing = (any(c in mode for c in "wax+") if isinstance(mode, str)
                       else bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)))  # fmt: skip
            if writing:
                log.append(f"open {os.fsdecode(args[0])}")
        elif event in WRITE_EVENTS and any(under_root(arg) for arg in args):
            log.append(f"{event} {args[0]}")

    sys.addaudithook(hook)


def rank_main(rank: int, ports: tuple[int, int], out: Path) -> None:
    """One rank, started as torchrun starts it: the one-update cases, then a training run
    through the CLI that records this rank's final weights, its curriculum stage at each
    logging interval and its writes to the run."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(RANKS),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[0]))  # fmt: skip
    torch.set_num_threads(1)
    with join() as world:
        for algo, core in CASES:
            _, after = one_update(algo, core, world)
            torch.save(after, out / f"{algo}-{core}-rank{rank}.pt")

    import train_rl
    from agents.trainer import Trainer

    run_to_end = Trainer.run

    def run_and_keep_weights(self: Trainer) -> dict[str, float]:
        row = run_to_end(self)
        torch.save(self.policy.state_dict(), out / f"weights-rank{rank}.pt")
        return row

    advance = Trainer._advance_curriculum
    stages: list[int] = []

    def advance_and_note(self: Trainer, success_rate: float) -> bool:
        full_task = advance(self, success_rate)
        stages.append(self.env.curriculum_stage)
        return full_task

    Trainer.run = run_and_keep_weights
    Trainer._advance_curriculum = advance_and_note
    writes: list[str] = []
    record_writes(out / "run", writes)
    os.environ["MASTER_PORT"] = str(ports[1])  # a process group of its own for the run
    status = train_rl.main([*RUN, "--run-dir", str(out / "run")], progress=False)
    report = {"status": status, "writes": writes, "stages": stages}
    (out / f"report-rank{rank}.json").write_text(json.dumps(report))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What two ranks left: the one-update weights, the training run, each rank's writes."""
    out = tmp_path_factory.mktemp("ranks")
    ports = (free_port(), free_port())
    torch.multiprocessing.spawn(rank_main, args=(ports, out), nprocs=RANKS, join=True)
    return out


@pytest.mark.parametrize(("algo", "core"), CASES)
def test_two_ranks_update_as_one_rank_on_their_rollouts_together(two_ranks, algo, core):
    """Gradients and PPO's advantage statistics are averaged over the ranks, nothing else is
    rank-local: 2 ranks x 4 envs end one update where 1 rank x 8 envs does (float64)."""
    before, joint = one_update(algo, core, SINGLE)
    assert all(value.dtype == torch.float64 for value in joint.values())
    moved = max((joint[key] - before[key]).abs().max().item() for key in joint)
    assert moved > 1e-4  # the update did something to compare
    for rank in range(RANKS):
        ranked = torch.load(two_ranks / f"{algo}-{core}-rank{rank}.pt", weights_only=True)
        assert ranked.keys() == joint.keys()
        apart = max((joint[key] - ranked[key]).abs().max().item() for key in joint)
        assert apart <= 1e-10, f"rank {rank} is {apart} away from the one-rank update"


def test_every_rank_holds_the_same_weights_after_training(two_ranks):
    weights = [torch.load(two_ranks / f"weights-rank{rank}.pt", weights_only=True)
               for rank in range(RANKS)]  # fmt: skip
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    saved = torch.load(two_ranks / "run" / "checkpoints" / "latest.pt", weights_only=True)
    assert all(torch.equal(saved["policy"][key], weights[0][key]) for key in weights[0])
    assert saved["world_size"] == RANKS and len(saved["other_ranks"]) == RANKS - 1


def rank_reports(two_ranks: Path) -> list[dict]:
    return [json.loads((two_ranks / f"report-rank{rank}.json").read_text())
            for rank in range(RANKS)]  # fmt: skip


def test_every_rank_takes_the_curriculums_decisions_together(two_ranks):
    """The curriculum reads the interval's success over all ranks' episodes: no rank moves
    on alone."""
    stages = [report["stages"] for report in rank_reports(two_ranks)]
    assert len(stages[0]) == UPDATES and stages[0] == stages[1]
    assert max(stages[0]) > 6  # it moved on during the run
    logged = [float(row["task_longest"]) for row in metric_rows(two_ranks / "run")]
    assert logged == [6, *stages[0][:-1]]  # an interval logs the stage it trained at


def test_only_rank_0_writes_the_run_directory(two_ranks):
    reports = rank_reports(two_ranks)
    assert [report["status"] for report in reports] == [0] * RANKS
    assert reports[0]["writes"], "rank 0 wrote nothing: the audit missed its writes"
    assert reports[1]["writes"] == []
    run = two_ranks / "run"
    config = json.loads((run / "config.json").read_text())
    assert (config["run"]["world_size"], config["run"]["num_envs_per_rank"]) == (RANKS, 4)
    assert config["learner"]["num_envs"] == 8  # all ranks together
    assert metric_steps(run) == [128 * (i + 1) for i in range(UPDATES)]
    assert len(list(run.glob("events.out.tfevents*"))) == 1


def metric_steps(run_dir: Path) -> list[int]:
    return [int(row["global_step"]) for row in metric_rows(run_dir)]


def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k not in TIMING}
                for row in csv.DictReader(handle)]  # fmt: skip


def torchrun(*argv: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(RANKS), "train_rl.py", *argv]  # fmt: skip


def descendants(pid: int) -> list[int]:
    """The processes ``pid`` started, and theirs (torchrun starts its ranks in sessions of
    their own, so killing its process group would spare them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_job_killed_with_sigkill_resumes_to_the_uninterrupted_run(two_ranks, tmp_path):
    killed = tmp_path / "killed"
    job = subprocess.Popen(torchrun(*RUN, "--run-dir", str(killed)), cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 120
        while not (killed / "checkpoints" / "ckpt_00000006.pt").exists():
            assert job.poll() is None and time.time() < deadline, "the job ended before the kill"
            time.sleep(0.05)
        for pid in [*descendants(job.pid), job.pid]:  # the ranks first, then torchrun
            os.kill(pid, signal.SIGKILL)
    finally:
        job.kill()
        job.wait()
    # Once ckpt 6 exists, latest.pt holds update 3 or later (it is written after each ckpt).
    interrupted_at = torch.load(killed / "checkpoints" / "latest.pt", weights_only=True)["update"]
    assert 3 <= interrupted_at < UPDATES
    resumed = subprocess.run(torchrun("--resume", str(killed)), cwd=ROOT, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    steps = [128 * (i + 1) for i in range(UPDATES)]
    assert metric_steps(killed) == steps  # none missing, none twice
    reference = two_ranks / "run"  # the same run, never interrupted
    assert metric_rows(killed) == metric_rows(reference)
    final = torch.load(killed / "checkpoints" / "latest.pt", weights_only=True)["policy"]
    uninterrupted = torch.load(reference / "checkpoints" / "latest.pt", weights_only=True)
    assert all(torch.equal(final[key], uninterrupted["policy"][key]) for key in final)


def test_a_resume_with_another_number_of_processes_is_one_line_naming_both(two_ranks, capsys):
    import train_rl

    assert train_rl.main(["--resume", str(two_ranks / "run")], progress=False) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "trained by 2 processes and this launch has 1" in err[0]
    assert "torchrun --nproc-per-node 2 train_rl.py" in err[0]


def test_envs_that_do_not_split_over_the_processes_are_one_line_naming_them(capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import scale_out
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert scale_out.main(["--world-sizes", "1", "3", "--num-envs", "64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --num-envs 64 counts the envs of all 3 processes: it must be a "
                   "multiple of 3 x --num-minibatches 4 = 12"]  # fmt: skip
