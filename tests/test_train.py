"""The training CLI end to end: run directories, determinism, resume after a kill, errors."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train_rl
from agents.run_dir import METRIC_COLUMNS, RunDir
from agents.trainer import Trainer

TINY = ["--env", "corridor", "--length", "4", "--num-envs", "8", "--num-steps", "16",
        "--num-minibatches", "2", "--update-epochs", "2", "--log-interval", "1",
        "--threads", "1"]  # fmt: skip
TIMING = ("wall_time", "sps", "rss_mb")  # measurements of the machine, not of the run


def train(tmp_path: Path, *extra: str, name: str = "run") -> Path:
    run_dir = tmp_path / name
    status = train_rl.main([*TINY, "--run-dir", str(run_dir), *extra], progress=False)
    assert status == 0
    return run_dir


def rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def without_timing(table: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in table]


@pytest.mark.parametrize("policy", ["expire_span", "trxl", "lstm"])
@pytest.mark.parametrize("algo", ["ppo", "impala"])
def test_every_policy_and_learner_trains_and_writes_a_run_directory(tmp_path, policy, algo):
    run_dir = train(tmp_path, "--policy", policy, "--algo", algo, "--total-steps", "384")
    config = json.loads((run_dir / "config.json").read_text())
    assert config["policy"] == policy and config["learner"]["algo"] == algo
    assert config["env_kwargs"]["length"] == 4
    table = rows(run_dir)
    assert list(table[0]) == list(METRIC_COLUMNS)
    assert [int(r["global_step"]) for r in table] == [128, 256, 384]
    assert all(float(r["task_longest"]) == 4 for r in table)  # the corridor's own length
    assert all(float(r["episodes"]) > 0 for r in table)
    assert any(p.name.startswith("events.out.tfevents") for p in run_dir.iterdir())
    checkpoint = RunDir.open(run_dir).load_checkpoint()
    assert checkpoint["global_step"] == 384 and checkpoint["update"] == 3
    if policy == "expire_span":
        assert float(table[-1]["mem_alive_mean"]) > 0 and float(table[-1]["span_mean"]) > 0


def test_same_seed_gives_the_same_run(tmp_path):
    first = train(tmp_path, "--total-steps", "512", "--seed", "3", name="a")
    second = train(tmp_path, "--total-steps", "512", "--seed", "3", name="b")
    other = train(tmp_path, "--total-steps", "512", "--seed", "4", name="c")
    assert without_timing(rows(first)) == without_timing(rows(second))
    assert without_timing(rows(first)) != without_timing(rows(other))


def test_resume_after_sigkill_continues_the_same_run(tmp_path):
    args = [*TINY, "--total-steps", str(128 * 60), "--checkpoint-interval", "3", "--seed", "5"]
    reference = tmp_path / "reference"
    assert train_rl.main([*args, "--run-dir", str(reference)], progress=False) == 0

    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(Path(train_rl.__file__).parent)}
    process = subprocess.Popen(
        [sys.executable, train_rl.__file__, *args, "--run-dir", str(killed)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    deadline = time.time() + 120
    # Once ckpt 12 exists, latest.pt holds update 9 or later (it is written after each ckpt).
    while not (killed / "checkpoints" / "ckpt_00000012.pt").exists():
        assert process.poll() is None and time.time() < deadline, "run ended before the kill"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted_at = RunDir.open(killed).load_checkpoint()["update"]
    assert 9 <= interrupted_at < 60

    assert train_rl.main(["--resume", str(killed)], progress=False) == 0
    resumed = rows(killed)
    steps = [int(r["global_step"]) for r in resumed]
    assert steps == [128 * (i + 1) for i in range(60)]  # none missing, none twice
    assert without_timing(resumed) == without_timing(rows(reference))


def signal_after_update(monkeypatch, at: int, *signums: int) -> None:
    """Send this process ``signums`` as update ``at`` ends (as a user's Ctrl-C or a kill)."""
    from agents import learner

    real_optimise = learner.Learner.optimise
    sent = []

    def optimise(self, loss):
        result = real_optimise(self, loss)
        if self.update_count == at - 1 and not sent:  # in the update's first gradient step
            for signum in signums:
                sent.append(signum)
                os.kill(os.getpid(), signum)
        return result

    monkeypatch.setattr(learner.Learner, "optimise", optimise)


# A checkpoint every 10 updates and a metrics row every 4: an interrupt at update 7 falls
# between both, with episodes of an unfinished interval already counted.
BETWEEN = [*TINY, "--total-steps", str(128 * 20), "--log-interval", "4",
           "--checkpoint-interval", "10", "--seed", "11"]  # fmt: skip


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_the_update_under_way_and_the_resume_is_the_uninterrupted_run(
    tmp_path, monkeypatch, capfd, weights_hash, signum
):
    reference = tmp_path / "reference"
    assert train_rl.main([*BETWEEN, "--run-dir", str(reference)], progress=False) == 0
    stopped = tmp_path / "stopped"
    with monkeypatch.context() as patch:
        signal_after_update(patch, 7, signum)
        status = train_rl.main([*BETWEEN, "--run-dir", str(stopped)], progress=False)
    assert status == 128 + signum
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1] == f"interrupted at update 7, checkpoint saved; resume with --resume {stopped}"
    assert err[-2].startswith("stopping after this update with a checkpoint")
    assert RunDir.open(stopped).load_checkpoint()["update"] == 7
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored

    assert train_rl.main(["--resume", str(stopped)], progress=False) == 0
    assert without_timing(rows(stopped)) == without_timing(rows(reference))
    assert weights_hash(stopped) == weights_hash(reference)


def test_a_second_ctrl_c_stops_at_once_with_the_last_checkpoint_kept(
    tmp_path, monkeypatch, capfd
):
    run_dir = tmp_path / "run"
    signal_after_update(monkeypatch, 12, signal.SIGINT, signal.SIGINT)
    status = train_rl.main([*BETWEEN, "--run-dir", str(run_dir)], progress=False)
    assert status == 130
    assert capfd.readouterr().err.strip().splitlines()[-1] == (
        f"interrupted; resume with --resume {run_dir}")
    assert RunDir.open(run_dir).load_checkpoint()["update"] == 10  # the last periodic one


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch, capsys
):
    from agents import learner

    real_optimise = learner.Learner.optimise

    def poisoned(self, loss):
        if self.update_count >= 2:
            loss = loss * float("nan")
        return real_optimise(self, loss)

    monkeypatch.setattr(learner.Learner, "optimise", poisoned)
    run_dir = tmp_path / "nan"
    argv = [*TINY, "--total-steps", "1280", "--checkpoint-interval", "1", "--run-dir", str(run_dir)]
    assert train_rl.main(argv, progress=False) == 1
    assert "loss is nan" in capsys.readouterr().err
    checkpoint = RunDir.open(run_dir).load_checkpoint()
    assert checkpoint["update"] == 2
    assert all(torch.isfinite(v).all() for v in checkpoint["policy"].values())


def test_full_length_stage_settings_follow_the_curriculum(tmp_path):
    """--curriculum-full-fraction and --span-lr-scale-final take effect when the curriculum
    reaches the full length, not before, and a resumed run keeps them."""
    from agents.resolve import resolve
    from agents.train_args import TrainArgs

    config = resolve(TrainArgs(env="corridor", length=24, min_length=5, curriculum_start=6,
                          curriculum_full_fraction=0.25, span_lr_scale=0.03,
                          span_lr_scale_final=0.1, num_envs=16, num_steps=16,
                          total_steps=4096, threads=1))  # fmt: skip
    trainer = Trainer(config, RunDir.create(tmp_path / "run", config), progress=False)

    def stage(t: Trainer) -> tuple[int, float, float]:
        span_rate = t.learner.base_lrs[1] / t.learner.base_lrs[0]
        return int(t.env.longest), float(t.env.full_fraction), round(span_rate, 6)

    stages = [stage(trainer)]
    for success in (0.5, 0.95, 0.95, 0.95):
        trainer._advance_curriculum(success)
        stages.append(stage(trainer))
    assert stages == [(6, 0.0, 0.03), (6, 0.0, 0.03), (12, 0.0, 0.03), (24, 0.25, 0.1),
                      (24, 0.25, 0.1)]  # fmt: skip
    trainer.save(0.0)
    resumed = Trainer(RunDir.open(tmp_path / "run").config(), RunDir.open(tmp_path / "run"),
                      resume=True, progress=False)  # fmt: skip
    assert stage(resumed) == (24, 0.25, 0.1)


def test_length_curriculum_doubles_the_corridor_up_to_its_length(tmp_path):
    # A random policy succeeds half of the time, so a bar of 0.3 moves on at every row.
    run_dir = train(tmp_path, "--length", "24", "--min-length", "24", "--curriculum-start", "3",
                    "--curriculum-success", "0.3", "--total-steps", "768",
                    "--ent-coef", "0.03", "--ent-coef-final", "0.003")  # fmt: skip
    table = rows(run_dir)
    assert [float(r["task_longest"]) for r in table] == [3, 6, 12, 24, 24, 24]
    # The entropy coefficient goes from 0.03 to 0.003 by the same factor at each doubling.
    coefs = [float(r["ent_coef"]) for r in table]
    assert coefs == pytest.approx([0.03, 0.03 * 0.1 ** (1 / 3), 0.03 * 0.1 ** (2 / 3), 0.003,
                                   0.003, 0.003], rel=1e-5)  # fmt: skip
    checkpoint = RunDir.open(run_dir).load_checkpoint()
    assert int(checkpoint["collector"]["env"]["tensors"]["longest"]) == 24  # resumes there
    resumed = Trainer(RunDir.open(run_dir).config(), RunDir.open(run_dir), resume=True,
                      progress=False)  # fmt: skip
    assert resumed.learner.ent_coef == pytest.approx(0.003)  # and at that stage's entropy
    config = json.loads((run_dir / "config.json").read_text())
    assert config["env_kwargs"]["length"] == 24  # what evaluation uses


def test_instruction_curriculum_moves_from_a_small_room_to_the_task(tmp_path):
    # Short episodes in a 3 x 3 room with 2 balls: a random policy carries out every
    # instruction of some of them, so a bar of 0.01 moves on at the first row with episodes.
    run_dir = tmp_path / "run"
    argv = ["--env", "instruction", "--max-steps", "24", "--delay-min", "14",
            "--curriculum-start", "3", "--curriculum-success", "0.01", "--anneal-lr", "True",
            *TINY[4:], "--total-steps", "1280", "--run-dir", str(run_dir)]  # fmt: skip
    assert train_rl.main(argv, progress=False) == 0
    stages = [float(r["task_longest"]) for r in rows(run_dir)]
    assert stages[0] == 3 and stages[-1] == 5 and stages == sorted(stages)
    assert set(stages) == {3, 5}
    run = RunDir.open(run_dir)
    assert int(run.load_checkpoint()["collector"]["env"]["tensors"]["room_size"]) == 5
    resumed = Trainer(run.config(), run, resume=True, progress=False)
    assert resumed.env.size == 5 and resumed.env.object_slots.shape[1] == 4


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--env", "maze"], "unknown gymnasium env id 'maze'"),
        (["--length", "0"], "corridor: length must be an integer >= 1, got 0"),
        (["--num-rooms", "3"], "--num-rooms is not a parameter of corridor"),
        (["--policy", "lstm", "--max-span", "10"], "--max-span does not apply to --policy lstm"),
        (["--num-envs", "6", "--num-minibatches", "4"], "--num-minibatches 4 must divide"),
        (["--learning-rate", "-1"], "--learning-rate must be in (0.0, 1.0], got -1.0"),
        (["--resume", "/nonexistent/run"], "run directory /nonexistent/run does not exist"),
        (["--curriculum-start", "2"], "--curriculum-start must be in [5, 1000]"),
        (["--env", "portal", "--curriculum-start", "5"],
         "applies only to the corridor and instruction, not portal"),
        (["--env", "instruction", "--curriculum-start", "6"],
         "--curriculum-start must be in [2, 5] (a room size up to --size), got 6"),
        (["--length", "50", "--min-length", "20", "--curriculum-start", "10"],
         "--curriculum-start must be in [20, 50]"),
        (["--ent-coef", "0", "--ent-coef-final", "0.01"], "--ent-coef-final needs --ent-coef"),
        (["--length", "10", "--span-lr-scale-final", "0.1"],
         "--span-lr-scale-final needs a length curriculum"),
        (["--length", "50", "--min-length", "50", "--curriculum-full-fraction", "0.25"],
         "--curriculum-full-fraction needs a length curriculum with random lengths"),
        (["--curriculum-full-fraction", "2"], "--curriculum-full-fraction must be in"),
    ],
)
def test_user_mistakes_are_one_line_errors(argv, message, capsys):
    assert train_rl.main(argv, progress=False) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_resume_refuses_corrupt_checkpoints_and_mismatched_flags(tmp_path, capsys):
    run_dir = train(tmp_path, "--total-steps", "256", "--seed", "3")
    assert train_rl.main(["--resume", str(run_dir), "--length", "9"], progress=False) == 2
    assert "mismatched run directory" in capsys.readouterr().err
    # Flags the run's config fixes are refused, not silently ignored, even when the value
    # given is the flag's default (the run has seed 3, the default is 1).
    argv = ["--resume", str(run_dir), "--learning-rate", "0.1", "--seed", "1"]
    assert train_rl.main(argv, progress=False) == 2
    assert ("mismatched run directory " + str(run_dir) + ": --learning-rate 0.1 (the run has "
            "0.0005); --seed 1 (the run has 3)") in capsys.readouterr().err
    assert train_rl.main(["--resume", str(run_dir), "--run-dir", "x"], progress=False) == 2
    assert "--run-dir cannot be given with --resume" in capsys.readouterr().err
    # Repeating the run's own values is fine: the run is finished, and the resume says so.
    argv = ["--resume", str(run_dir), "--seed", "3", "--length", "4"]
    assert train_rl.main(argv, progress=False) == 0
    assert (f"{run_dir} is finished: it has trained all its 256 steps; train it on with "
            f"--resume {run_dir} --total-steps N (N > 256)") in capsys.readouterr().out
    assert train_rl.main(["--resume", str(run_dir), "--total-steps", "128"], progress=False) == 2
    assert "--total-steps 128 with --resume must be above the 256 steps" in capsys.readouterr().err
    # The flags a resume may change are checked as for a new run.
    assert train_rl.main(["--resume", str(run_dir), "--threads", "0"], progress=False) == 2
    assert "--threads must be >= 1, got 0" in capsys.readouterr().err
    for checkpoint in (run_dir / "checkpoints").glob("*.pt"):
        checkpoint.write_bytes(b"not a checkpoint")
    assert train_rl.main(["--resume", str(run_dir)], progress=False) == 2
    assert "is corrupt" in capsys.readouterr().err
    assert train_rl.main(["--resume", str(tmp_path)], progress=False) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_resume_may_change_the_stop_and_the_threads_and_records_them(tmp_path):
    run_dir = train(tmp_path, "--total-steps", "256", "--target-success", "0.5")
    assert RunDir.open(run_dir).config().run.target_success == 0.5
    argv = ["--resume", str(run_dir), "--target-success", "0.9", "--target-alive", "5",
            "--threads", "1", "--total-steps", "512"]  # fmt: skip
    assert train_rl.main(argv, progress=False) == 0
    config = RunDir.open(run_dir).config()
    run = config.run
    assert (run.target_success, run.target_alive, run.threads) == (0.9, 5, 1)
    assert config.learner.total_steps == 512 and rows(run_dir)[-1]["global_step"] == "512"
    argv = ["--resume", str(run_dir), "--target-success", "0", "--target-alive", "0",
            "--total-steps", "768"]  # fmt: skip
    assert train_rl.main(argv, progress=False) == 0
    run = RunDir.open(run_dir).config().run
    assert (run.target_success, run.target_alive) == (None, None)


def test_the_stop_waits_for_the_success_and_the_alive_memories_targets(tmp_path, capsys):
    # On this 4-cell corridor about half the episodes of the first interval succeed and a
    # few memories are alive: both targets below are met at once, and the run stops there.
    both = ["--total-steps", "1280", "--target-success", "0.01", "--target-alive", "1000"]
    assert len(rows(train(tmp_path, *both, name="both"))) == 1
    assert ("stopped at step 128: success >= 0.01 with at most 1000 memories alive"
            in capsys.readouterr().out)  # fmt: skip
    # Fewer than one memory alive is never reached (a step always sees itself), so the run
    # trains on to --total-steps although its success target is met, and says so.
    never = ["--total-steps", "1280", "--target-success", "0.01", "--target-alive", "0.5"]
    table = rows(train(tmp_path, *never, name="never"))
    assert len(table) == 10
    assert float(table[0]["success_rate"]) >= 0.01
    assert ("note: used all 1280 steps without reaching success >= 0.01 with at most 0.5 "
            "memories alive" in capsys.readouterr().out)  # fmt: skip


def test_a_new_run_never_overwrites_an_existing_one(tmp_path, capsys):
    run_dir = train(tmp_path, "--total-steps", "128")
    argv = [*TINY, "--total-steps", "128", "--run-dir", str(run_dir)]
    assert train_rl.main(argv, progress=False) == 2
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.slow
def test_expire_span_solves_corridor_50(tmp_path):
    import evaluate

    run_dir = tmp_path / "c50"
    # The preset: random lengths from 5, a curriculum from 10, and a stop once the training
    # success over all lengths reaches 0.99 on the full range; then evaluated at length 50.
    argv = ["--env", "corridor", "--length", "50", "--threads", "1", "--run-dir", str(run_dir)]
    assert train_rl.main(argv, progress=False) == 0
    assert float(rows(run_dir)[-1]["task_longest"]) == 50
    assert evaluate.main([str(run_dir), "--episodes", "500", "--threads", "1"]) == 0
    summary = json.loads((run_dir / "eval.json").read_text())
    assert summary["task"]["settings"]["min_length"] == 50
    assert summary["success_rate"] >= 0.95


def test_the_corridor_preset_stops_once_solved_unless_told_to_train_on():
    from agents.resolve import resolve
    from agents.run_config import ConfigError
    from agents.train_args import TrainArgs

    def target(**flags) -> float | None:
        return resolve(TrainArgs(**flags)).run.target_success

    assert target(env="corridor", length=100) == 0.99
    assert target(env="corridor", length=100, target_success=0.9) == 0.9
    assert target(env="corridor", length=100, target_success=0.0) is None
    # Flags that only act after the full length is reached turn the preset's stop off.
    assert target(env="corridor", length=100, span_lr_scale_final=0.1) is None
    assert target(env="corridor", length=100, curriculum_full_fraction=0.25) is None
    assert target(env="portal") is None
    with pytest.raises(ConfigError, match=r"--target-success must be in \[0, 1\] \(0: off\), "
                                          r"got 1.5"):
        resolve(TrainArgs(env="corridor", target_success=1.5))


def test_the_alive_memories_target_is_checked_and_off_unless_given():
    from agents.resolve import resolve
    from agents.run_config import ConfigError
    from agents.train_args import TrainArgs

    def alive(**flags) -> float | None:
        return resolve(TrainArgs(**flags)).run.target_alive

    # The preset's stop waits for 5 % of the length alive from length 1000 (Expire-Span, PPO).
    assert alive(env="corridor", length=1000) == 50
    assert alive(env="corridor", length=2000) == 100
    assert alive(env="corridor", length=500) is None
    assert alive(env="corridor", length=1000, algo="impala") is None
    assert alive(env="corridor", length=1000, policy="trxl") is None
    assert alive(env="corridor", length=1000, target_success=0.95) is None  # a stop of one's own
    assert alive(env="corridor", length=1000, target_alive=30.0) == 30
    assert alive(env="corridor", length=1000, target_alive=0.0) is None
    with pytest.raises(ConfigError, match=r"--target-alive must be a number of memories >= 0 "
                                          r"\(0: off\), got -1.0"):
        resolve(TrainArgs(env="corridor", target_alive=-1.0))
    with pytest.raises(ConfigError, match=r"--target-alive 10.0 needs a target to stop at"):
        resolve(TrainArgs(env="corridor", target_success=0.0, target_alive=10.0))
    with pytest.raises(ConfigError, match=r"--target-alive needs a policy with memories"):
        resolve(TrainArgs(env="corridor", policy="lstm", target_alive=10.0))


@pytest.mark.parametrize(("algo", "start", "final", "rate"), [("ppo", 0.03, 0.01, 5e-4),
                                                               ("impala", 0.001, 0.0003, 1e-4)])
def test_corridor_preset_sets_each_learners_entropy_and_flags_override_it(
    algo, start, final, rate
):
    from agents.resolve import resolve
    from agents.train_args import TrainArgs

    learner = resolve(TrainArgs(env="corridor", length=100, algo=algo)).learner
    assert (learner.ent_coef, learner.ent_coef_final) == (start, final)
    assert learner.total_steps == 2_000_000
    # Long corridors: the same budget for both learners.
    assert resolve(TrainArgs(env="corridor", length=1000, algo=algo)).learner.total_steps == (
        4_000_000)  # fmt: skip
    assert learner.learning_rate == rate
    flags = {"ent_coef": 0.02, "learning_rate": 3e-4}
    learner = resolve(TrainArgs(env="corridor", length=100, algo=algo, **flags)).learner
    assert (learner.ent_coef, learner.learning_rate) == (0.02, 3e-4)


def test_a_greedy_check_of_the_full_task_must_confirm_the_stop(tmp_path, capsys, monkeypatch):
    import agents.evaluate

    # Checks whose greedy episodes fail, then succeed: the first interval that meets the
    # targets is checked and training goes on; the next check comes 5 intervals later.
    outcomes = iter([0.0, 1.0])
    real_evaluate = agents.evaluate.evaluate
    played = []

    def scripted(env, agent, episodes, seed=None):
        result = real_evaluate(env, agent, episodes, seed=seed)
        played.append((env.num_envs, episodes, env.config.min_length, env.config.length))
        result.success_rate = next(outcomes)
        return result

    monkeypatch.setattr(agents.evaluate, "evaluate", scripted)
    targets = ["--total-steps", "2560", "--target-success", "0.01", "--target-alive", "1000",
               "--confirm-episodes", "12"]  # fmt: skip
    run_dir = train(tmp_path, *targets)
    lines = (run_dir / "target_checks.jsonl").read_text().splitlines()
    checks = [json.loads(line) for line in lines]
    assert [(c["update"], c["success_rate"], c["passed"]) for c in checks] == [
        (1, 0.0, False), (6, 1.0, True)]  # fmt: skip
    assert all(c["episodes"] == 12 and c["mem_alive_mean"] >= 1 for c in checks)
    # 8 envs (the run's) play the 12 episodes of the full, fixed-length corridor.
    assert played == [(8, 12, 4, 4)] * 2
    assert len(rows(run_dir)) == 6
    out = capsys.readouterr().out
    assert "target check at step 128: 12 greedy episodes of the full task, success 0.000" in out
    assert "not met, training on" in out and "stopped at step 768" in out
    # A resume from before the second check drops it from the log (and repeats it), as it
    # drops a line cut short by a kill.
    with open(run_dir / "target_checks.jsonl", "a") as handle:
        handle.write('{"global_step": 8')
    RunDir(run_dir).truncate_metrics(512)
    assert len((run_dir / "target_checks.jsonl").read_text().splitlines()) == 1


def test_the_greedy_check_is_checked_and_off_unless_given():
    from agents.resolve import resolve
    from agents.run_config import ConfigError
    from agents.train_args import TrainArgs

    def confirm(**flags) -> int | None:
        return resolve(TrainArgs(**flags)).run.confirm_episodes

    assert confirm(env="portal") is None
    assert confirm(env="corridor", length=500) is None
    assert confirm(env="corridor", length=1000) == 100  # with the preset's alive target
    assert confirm(env="corridor", length=1000, confirm_episodes=0) is None
    assert confirm(env="corridor", length=1000, target_success=0.0) is None
    assert confirm(env="corridor", length=1000, target_success=0.9, confirm_episodes=50) == 50
    assert confirm(env="corridor", length=1000, target_success=0.9, confirm_episodes=0) is None
    with pytest.raises(ConfigError, match=r"--confirm-episodes must be >= 0 \(0: off\), got -1"):
        resolve(TrainArgs(env="corridor", confirm_episodes=-1))
    with pytest.raises(ConfigError, match=r"--confirm-episodes 10 needs a target to confirm"):
        resolve(TrainArgs(env="corridor", target_success=0.0, confirm_episodes=10))


def test_the_oracle_share_target_is_checked_and_the_instruction_presets_stop():
    from agents.resolve import resolve
    from agents.run_config import ConfigError
    from agents.train_args import TrainArgs

    def stop(**flags) -> tuple[float | None, int | None]:
        run = resolve(TrainArgs(**flags)).run
        return run.target_oracle_share, run.confirm_episodes

    assert stop(env="instruction") == (0.93, 100)
    assert stop(env="instruction", target_oracle_share=0.0) == (None, None)
    assert stop(env="instruction", confirm_episodes=20) == (0.93, 20)
    assert stop(env="portal") == (None, None)
    assert stop(env="portal", target_oracle_share=0.8) == (0.8, 100)
    with pytest.raises(ConfigError, match=r"--target-oracle-share must be in \[0, 1\]"):
        resolve(TrainArgs(env="portal", target_oracle_share=1.5))
    with pytest.raises(ConfigError, match=r"--confirm-episodes must be >= 1 with it, got 0"):
        resolve(TrainArgs(env="instruction", confirm_episodes=0))
    with pytest.raises(ConfigError, match=r"needs one of the suite's tasks .* not CartPole-v1"):
        resolve(TrainArgs(env="CartPole-v1", target_oracle_share=0.9))


def test_an_oracle_share_check_stops_the_run_and_a_resume_may_set_it(tmp_path, capsys, monkeypatch):
    import agents.evaluate

    # Checks scored 0.5, then 1.0 of the oracle: with no training target every interval
    # on the full task may be checked, one in 5 is.
    shares = iter([0.5, 1.0, 0.25, 0.25])
    real = agents.evaluate.evaluate_with_oracle
    played = []

    def scripted(new_env, agent, episodes, seed):
        result, oracle, _ = real(new_env, agent, episodes, seed)
        played.append((episodes, oracle.success_rate))
        return result, oracle, next(shares)

    monkeypatch.setattr(agents.evaluate, "evaluate_with_oracle", scripted)
    run_dir = train(tmp_path, "--total-steps", "2560", "--target-success", "0",
                    "--target-oracle-share", "0.9", "--confirm-episodes", "6")  # fmt: skip
    checks = [json.loads(line) for line in
              (run_dir / "target_checks.jsonl").read_text().splitlines()]  # fmt: skip
    assert [(c["update"], c["oracle_share"], c["passed"]) for c in checks] == [
        (1, 0.5, False), (6, 1.0, True)]  # fmt: skip
    assert played == [(6, 1.0)] * 2  # the corridor's oracle always succeeds
    out = capsys.readouterr().out
    assert "success" in out and "50.0% of the oracle's score" in out
    assert "stopped at step 768: 90% of the oracle's score on the full task" in out
    run = RunDir.open(run_dir).config().run
    assert (run.target_oracle_share, run.confirm_episodes) == (0.9, 6)
    # A resume may raise it (the checks go on 5 intervals apart: updates 11 and 16), or turn
    # it off (0), as the other stop flags. A run that never meets it says what it last scored.
    argv = ["--resume", str(run_dir), "--target-oracle-share", "0.99"]
    assert train_rl.main(argv, progress=False) == 0
    assert ("note: used all 2560 steps without reaching 99% of the oracle's score on the full "
            "task (last interval: success ") in (out := capsys.readouterr().out)
    assert "last greedy check, at step 2048: success " in out
    assert "25.0% of the oracle's score); evaluate the run before relying on it" in out
    # The run has used its steps: a resume says so, and trains on only with more of them.
    argv = ["--resume", str(run_dir), "--target-oracle-share", "0"]
    assert train_rl.main(argv, progress=False) == 0
    assert "is finished: it has trained all its 2560 steps" in capsys.readouterr().out
    argv = ["--resume", str(run_dir), "--target-oracle-share", "0", "--total-steps", "2688"]
    assert train_rl.main(argv, progress=False) == 0
    run = RunDir.open(run_dir).config().run
    assert (run.target_oracle_share, run.confirm_episodes) == (None, 6)
    assert rows(run_dir)[-1]["global_step"] == "2688"
    argv = ["--resume", str(run_dir), "--target-oracle-share", "0.5", "--confirm-episodes", "0"]
    assert train_rl.main(argv, progress=False) == 2
    assert "--confirm-episodes must be >= 1 with it, got 0" in capsys.readouterr().err


def test_presets_for_few_corridor_memories_and_the_instruction_room_curriculum():
    from agents.resolve import resolve
    from agents.train_args import TrainArgs

    long = resolve(TrainArgs(env="corridor", length=1000))
    assert (long.learner.span_lr_scale, long.learner.curriculum_full_fraction) == (0.1, 0.1)
    assert long.policy_kwargs["ramp_length"] == 8
    fixed = resolve(TrainArgs(env="corridor", length=1000, min_length=1000))  # no random lengths
    assert (fixed.learner.span_lr_scale, fixed.learner.curriculum_full_fraction) == (0.1, 0.0)
    for other in (TrainArgs(env="corridor", length=500), TrainArgs(env="corridor", algo="impala")):
        config = resolve(other)
        assert (config.learner.span_lr_scale, config.learner.curriculum_full_fraction) == (
            0.03, 0.0)  # fmt: skip
        assert "ramp_length" not in config.policy_kwargs
    instruction = resolve(TrainArgs(env="instruction"))
    assert (instruction.learner.curriculum_start, instruction.learner.curriculum_success) == (
        3, 0.3)  # fmt: skip
    assert instruction.policy_kwargs["egocentric"] is True
    assert resolve(TrainArgs(env="instruction", size=4)).learner.curriculum_start is None
    egocentric = resolve(TrainArgs(env="instruction", egocentric=False)).policy_kwargs["egocentric"]
    assert egocentric is False


def test_an_expire_span_on_a_gymnasium_task_can_keep_a_memory_for_a_whole_episode(monkeypatch):
    from agents.presets import EXTERNAL_MAX_SPAN
    from agents.resolve import resolve
    from agents.train_args import TrainArgs

    # MiniGrid's memory task declares its time limit (max_steps 5 x 13², 845 steps).
    assert resolve(TrainArgs(env="MiniGrid-MemoryS13Random-v0")).policy_kwargs["max_span"] == 845
    assert resolve(TrainArgs(env="CartPole-v1")).policy_kwargs["max_span"] == 500
    # A task that declares none (the test package's tasks) gets thousands of steps.
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "fixtures"))
    args = TrainArgs(env="tiny_gym_tasks:CueDiscrete-v0")
    assert resolve(args).policy_kwargs["max_span"] == EXTERNAL_MAX_SPAN == 4096
