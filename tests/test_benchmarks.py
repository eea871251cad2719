"""The benchmark scripts: their JSON lines, their flags and their set-ups (timings are not
asserted)."""

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

import envs
import train_rl
from agents.build import build_policy, make_env
from agents.run_dir import RunDirError

ROOT = Path(__file__).resolve().parent.parent
SHARE_KEYS = {"env_step", "policy_forward", "update", "other"}


def load_benchmark(name: str):
    """A module of benchmarks/, imported as its scripts import each other: by name, with
    their folder on sys.path (as when they run)."""
    folder = str(ROOT / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def run_main(name: str, argv: list[str]) -> int:
    """The exit status of the benchmark's ``main(argv)``, whether returned or raised."""
    try:
        return load_benchmark(name).main(argv)
    except SystemExit as exit_:
        return exit_.code


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def check_shares(shares: dict) -> None:
    assert shares.keys() == SHARE_KEYS
    assert sum(shares.values()) == pytest.approx(1.0, abs=0.01)
    assert all(value >= -0.01 for value in shares.values())


@pytest.mark.parametrize(
    ("name", "argv", "flag"),
    [
        ("env_throughput", ["--tasks", "nope"], "--tasks"),
        ("env_throughput", ["--threads", "0"], "--threads"),
        ("env_throughput", ["--seconds", "0"], "--seconds"),
        ("memory_cores", ["--contexts", "1"], "--contexts"),
        ("memory_cores", ["--alive-fraction", "0"], "--alive-fraction"),
        ("memory_cores", ["--num-heads", "3"], "--num-heads"),
        ("memory_cores", ["--threads", "x"], "--threads"),
        ("train_throughput", ["--equal-work", "--policy", "trxl"], "--policy"),
        ("train_throughput", ["--sb3-env-counts", "8"], "--sb3-env-counts"),
        ("train_throughput", ["--equal-work", "--sb3-env-counts", "8", "--ours-env-counts", "64"],
         "--ours-env-counts"),
        ("train_throughput", ["--equal-work", "--ours-env-counts", "6"], "--ours-env-counts"),
        ("train_throughput", ["--from-run", "x", "--policy", "lstm"], "--from-run"),
        ("train_throughput", ["--trxl-window", "0"], "--trxl-window"),
        ("train_throughput", ["--bogus"], "--bogus"),
    ],
)
def test_a_bad_flag_exits_2_with_one_line_naming_it(name, argv, flag, capsys):
    assert run_main(name, argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0]


def test_env_throughput_records_the_threads_it_used(capsys):
    argv = ["--seconds", "0.01", "--tasks", "corridor", "--num-envs", "4", "--threads", "1"]
    assert run_main("env_throughput", argv) == 0
    (line,) = json_lines(capsys.readouterr().out)
    assert line["benchmark"] == "env_throughput" and line["task"] == "corridor"
    assert line["torch_threads"] == 1 and line["num_envs"] == 4
    assert line["batched_steps_per_s"] > 0 and line["reference_steps_per_s"] > 0


def test_memory_cores_keeps_at_least_the_ramp_alive_at_small_contexts(capsys):
    benchmark = load_benchmark("memory_cores")
    # 4 % of 256 is 10 memories, but a memory stays on the ramp R - 1 steps past its span.
    assert benchmark.expire_span_setup(256, 0.04, 16) == (16, 1)
    assert benchmark.expire_span_setup(1024, 0.04, 16) == (41, 26)
    argv = ["--contexts", "256", "--num-envs", "1", "--chunk", "8", "--repeats", "1",
            "--d-model", "16", "--num-heads", "2", "--threads", "1"]  # fmt: skip
    assert run_main("memory_cores", argv) == 0
    captured = capsys.readouterr()
    (line,) = json_lines(captured.out)
    assert line["benchmark"] == "memory_cores" and line["torch_threads"] == 1
    assert line["es_alive_target"] == 16 and line["es_alive_mean"] == pytest.approx(16, abs=1)
    assert line["trxl_memories_mean"] == 256
    assert "Expire-Span keeps 16" in captured.err


def test_from_run_times_the_trained_weights_and_rejects_another_task(tmp_path):
    benchmark = load_benchmark("train_throughput_ours")
    run_dir = tmp_path / "run"
    assert train_rl.main(["--env", "corridor", "--length", "6", "--num-envs", "8",
                          "--num-steps", "16", "--total-steps", "256", "--threads", "1",
                          "--run-dir", str(run_dir)], progress=False) == 0  # fmt: skip
    weights = benchmark.trained_weights(str(run_dir), 6)
    saved = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)["policy"]
    assert weights.keys() == saved.keys()
    assert all(torch.equal(weights[name], saved[name]) for name in saved)
    config = benchmark.benchmark_config(6, num_envs=8, threads=1)
    measured = benchmark.ours_steps_per_second(config, 0.01, 1, weights)
    assert measured["trained_weights"] is True and measured["measured_updates"] >= 1
    assert measured["matmul_mflop_per_step"] > 0
    check_shares(measured["time_shares"])
    with pytest.raises(RunDirError, match=r"--from-run .*\"corridor\", 7, "):
        benchmark.trained_weights(str(run_dir), 7)
    with pytest.raises(RunDirError, match="does not exist"):
        benchmark.trained_weights(str(tmp_path / "missing"), 6)


def test_equal_work_sb3_policy_computes_what_ours_does():
    """RecurrentPPO as --equal-work builds it acts and values as our LSTM policy from the same
    seed, step by step through episode starts: the same network, the same weights."""
    ours_side = load_benchmark("train_throughput_ours")
    sb3_side = load_benchmark("train_throughput_sb3")
    config = ours_side.benchmark_config(3, num_envs=4, threads=1, policy="lstm")
    model = sb3_side.sb3_equal_work_model(config, 4, seconds=1.0)
    torch.manual_seed(config.run.seed)
    ours = build_policy(config, make_env(config, num_envs=1, device="cpu"), "cpu")
    env = envs.make_batched("corridor", 4, seed=0, length=3)
    obs, starts = env.reset(seed=0), torch.ones(4, dtype=torch.bool)
    state = ours.initial_state(4)
    zeros = torch.zeros(ours.core.num_layers, 4, ours.config.d_model)
    lstm_state = (zeros, zeros.clone())
    generator = torch.Generator().manual_seed(0)
    resets = 0
    with torch.no_grad():
        for _ in range(30):
            output, state = ours({key: value[None] for key, value in obs.items()}, state,
                                 starts[None])  # fmt: skip
            flat = obs["image"].reshape(4, -1).float()  # as FlattenObservation gives it
            values = model.policy.predict_values(flat, lstm_state, starts.float())
            distribution, lstm_state = model.policy.get_distribution(flat, lstm_state,
                                                                     starts.float())
            torch.testing.assert_close(distribution.distribution.probs,
                                       output.logits[0].softmax(-1))  # fmt: skip
            torch.testing.assert_close(values.squeeze(-1), output.values[0])
            actions = torch.randint(0, envs.NUM_ACTIONS, (4,), generator=generator)
            obs, _, terminated, truncated, _ = env.step(actions)
            starts = terminated | truncated
            resets += int(starts.sum())
    assert resets > 0  # the states were reset along the way
    assert model.n_steps == config.learner.num_steps and model.n_epochs == 4
    # With the preset's entropy schedule (corridors of 20 cells or more), ours' coefficient at
    # the full length.
    long = ours_side.benchmark_config(100, num_envs=4, threads=1, policy="lstm")
    assert long.learner.ent_coef != long.learner.ent_coef_final
    entropy = sb3_side.sb3_equal_work_model(long, 4, seconds=1.0).ent_coef
    assert entropy == long.learner.ent_coef_final
    assert model.batch_size == 4 * config.learner.num_steps // config.learner.num_minibatches


def test_equal_work_line_compares_both_sides_at_each_env_count(capsys):
    argv = ["--equal-work", "--length", "6", "--seconds", "0.01", "--threads", "1",
            "--warmup-updates", "0", "--ours-env-counts", "4", "--sb3-env-counts", "1", "4"]
    assert run_main("train_throughput", argv) == 0
    (line,) = json_lines(capsys.readouterr().out)
    assert line["mode"] == "equal_work" and line["torch_threads"] == 1
    assert [measured["num_envs"] for measured in line["ours"]] == [4]
    assert [measured["num_envs"] for measured in line["sb3_contrib"]] == [1, 4]
    assert line["settings"]["policy"] == "lstm"
    assert {measured["policy"] for measured in line["ours"]} == {"lstm"}
    for measured in line["ours"] + line["sb3_contrib"]:
        assert measured["steps_per_s"] > 0
        check_shares(measured["time_shares"])
    assert line["sb3_best"]["num_envs"] in (1, 4) and line["equal_work_num_envs"] == 4
    ratio = line["ours"][0]["steps_per_s"] / line["sb3_contrib"][1]["steps_per_s"]
    assert line["equal_work_ratio"] == pytest.approx(ratio, abs=0.006)  # rounded to 0.01
    assert line["ratio_to_sb3_best"].keys() == {"4"}
    # The ceiling: ours doing only its matrix work at the measured large-matrix rate.
    mflop, sgemm = line["matmul_mflop_per_step"], line["cpu_sgemm_gflops"]
    assert mflop > 0 and sgemm > 0
    # (from the rounded figures the line carries: within 2 %)
    assert line["sgemm_bound_steps_per_s"] == pytest.approx(sgemm * 1e3 / mflop, rel=0.02)
    bound = line["sgemm_bound_steps_per_s"] / line["sb3_contrib"][1]["steps_per_s"]
    assert line["equal_work_ratio_bound"] == pytest.approx(bound, rel=0.02)
    share = line["ours"][0]["steps_per_s"] * mflop / 1e3 / sgemm
    assert line["ours"][0]["matmul_share_of_sgemm"] == pytest.approx(share, rel=0.02, abs=1e-3)


def test_default_line_sets_ours_against_sb3_defaults_and_trxl_at_equal_memory(capsys):
    argv = ["--length", "6", "--seconds", "0.01", "--threads", "1", "--warmup-updates", "0",
            "--num-envs", "4", "--sb3-num-envs", "1", "--trxl-window", "4"]  # fmt: skip
    assert run_main("train_throughput", argv) == 0
    (line,) = json_lines(capsys.readouterr().out)
    assert line["mode"] == "default" and line["torch_threads"] == 1
    assert line["ours"]["policy"] == "expire_span" and line["ours"]["num_envs"] == 4
    assert line["sb3_contrib"]["n_epochs"] == 10 and line["sb3_contrib"]["num_envs"] == 1
    check_shares(line["ours"]["time_shares"])
    check_shares(line["sb3_contrib"]["time_shares"])
    assert line["ratio"] > 0 and line["cpu_sgemm_gflops"] > 0
    ours = line["ours"]
    share = ours["steps_per_s"] * ours["matmul_mflop_per_step"] / 1e3 / line["cpu_sgemm_gflops"]
    assert ours["matmul_share_of_sgemm"] == pytest.approx(share, rel=0.02, abs=1e-3)
    equal_memory = line["equal_memory"]
    assert equal_memory["trxl_window"] == 4 and equal_memory["interleaved"]
    assert equal_memory["expire_span"]["policy"] == "expire_span"
    assert equal_memory["trxl"]["policy"] == "trxl"
    assert equal_memory["trxl"]["policy_kwargs"]["memory_size"] == 4
    for side in ("expire_span", "trxl"):
        measured = equal_memory[side]
        assert measured["num_envs"] == 4 and measured["measured_updates"] >= 1
        # Each side's time is its own rollouts and updates (nothing else in between).
        assert measured["time_shares"]["other"] == pytest.approx(0, abs=1e-3)
        check_shares(measured["time_shares"])
    cost = equal_memory["trxl"]["steps_per_s"] / equal_memory["expire_span"]["steps_per_s"]
    assert equal_memory["expire_span_cost_vs_trxl"] == pytest.approx(cost, rel=1e-2)
