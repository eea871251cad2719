"""The results harness: the grid's commands, skip and resume, and the page from the cells.

Every cells.jsonl written here is test data in tmp_path, made by `fake_record`; the
one real cell is a tiny corridor run.
"""

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

import train_rl
from agents.cli import parse_args
from agents.resolve import resolve
from agents.train_args import TrainArgs

ROOT = Path(__file__).resolve().parent.parent


def load(name):
    """A module of benchmarks/, imported as its scripts import each other: by name, with
    their folder on sys.path (as when they run)."""
    folder = str(ROOT / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


results = load("results")
results_grid = load("results_grid")
results_run = load("results_run")
results_page = load("results_page")
sb3_baseline = load("sb3_baseline")

TASK = {task.label: task for task in results_grid.TASKS}
CORE = {core.key: core for core in results_grid.CORES}


def fake_record(task, core, seed, success, steps, wall, alive=None, memory_size=None):
    """A cells.jsonl line shaped as `results_run.make_record` writes it (test data)."""
    cell = results_grid.Cell(task, core, seed)
    return {
        "cell": cell.id, "task": task.env, **task.settings, "core": core.name,
        "variant": core.variant, "algo": core.algo, "seed": seed, "memory_size": memory_size,
        "threads": 2, "threads_given": False, "device": "cpu",
        "command": {"train": f"python train_rl.py --env {task.env} --seed {seed} --run-dir "
                             f"runs/results/{cell.id}",
                    "evaluate": f"python evaluate.py runs/results/{cell.id} --episodes 10"},
        "score_name": "success_rate", "score": success, "oracle_share": success,
        "success_rate": success, "mem_alive_mean": alive, "episodes": 1000, "steps": steps,
        "wall_s": wall, "solved": success >= 0.99, "bar": task.bar.text,
        "budget_steps": 4_000_000, "commit": "0123456789abcdef", "dirty": False,
        "resumed_commits": [], "date": f"2025-01-0{seed}T00:00:00Z",
        "curve": [{"global_step": s, "wall_time": s / 1000, "success_rate": min(1.0, s / steps),
                   "mem_alive_mean": alive} for s in range(0, steps + 1, steps // 4)],
    }  # fmt: skip


def corridor1000_records():
    """Expire-Span seeds 1-5 (4 solved) and Transformer-XL at equal memory (none solved)."""
    task, es, trxl = TASK["corridor1000"], CORE["expire_span-ppo"], CORE["trxl-equal-memory-ppo"]
    successes = [1.0, 1.0, 0.99, 1.0, 0.5]
    records = [fake_record(task, es, seed, success, 1_000_000 * seed, 100.0 * seed, alive=40.2)
               for seed, success in zip(es.seeds, successes, strict=True)]  # fmt: skip
    records += [fake_record(task, trxl, seed, 0.5, 4_000_000, 900.0, alive=41.0, memory_size=41)
                for seed in trxl.seeds]  # fmt: skip
    return records


def write_records(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def report(tmp_path, tasks=results_grid.TASKS, cores=results_grid.CORES):
    cells, page = tmp_path / "results" / "cells.jsonl", tmp_path / "results.md"
    assert results.main(["report", "--results", str(cells), "--page", str(page)],
                        tasks, cores) == 0  # fmt: skip
    return page.read_text()


def test_t_interval_matches_hand_computation():
    # [1, 2, 3, 4]: mean 2.5, sd 1.29099, t(3) = 3.1824 -> half-width 2.05422.
    mean, low, high = results_page.mean_ci([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert low == pytest.approx(0.44578, abs=1e-4) and high == pytest.approx(4.55422, abs=1e-4)
    assert results_page.mean_ci([0.7]) == (0.7, None, None)
    assert results_page.t_quantile_95(40) == pytest.approx(2.02108, abs=2e-4)


def test_report_means_intervals_claim_and_not_run_rows(tmp_path):
    write_records(tmp_path / "results" / "cells.jsonl", corridor1000_records())
    page = report(tmp_path)
    # Seeds 1-5 score 1, 1, 0.99, 1, 0.5: mean 0.898, t-interval (4 df) 0.622 to 1.174.
    start = "| Expire-Span (the task's preset) | 2 (torch's choice)"
    es_row = next(line for line in page.splitlines() if line.startswith(start))
    assert "| 4 / 5 | 0.898 [0.622, 1.174] |" in es_row
    # Steps and wall time to the stop: the solved seeds 1-4, 2.5M steps and 250 s on average.
    assert "| 2.50M (4 solved) | 250 s (4 solved) | 40.2 |" in es_row
    assert "`python train_rl.py --env corridor --seed S --run-dir RUN`, then " in es_row
    assert ("| Transformer-XL, window = Expire-Span's memories alive (M = 41) | 2 (torch's "
            "choice) | 0 / 3 | 0.500 [0.500, 0.500] | not solved at budget (4.00M) |") in page
    assert "| LSTM |  | not run yet (0 of 3 seeds) |" in page
    assert "**Holds.** As typed (torch's default threads), Expire-Span (the preset) meets" in page
    assert "in 4 of 5 runs" in page and "(equal memory) in 0 of 3" in page
    assert "no published figure was found for this task" in page
    assert (tmp_path / "results" / "corridor1000.png").is_file()
    assert not (tmp_path / "results" / "portal.png").exists()  # no cells, no plot


def test_report_is_byte_identical_when_regenerated(tmp_path):
    write_records(tmp_path / "results" / "cells.jsonl", corridor1000_records())
    files = [tmp_path / "results.md", tmp_path / "results" / "corridor1000.png"]
    report(tmp_path)
    first = [path.read_bytes() for path in files]
    report(tmp_path)
    assert [path.read_bytes() for path in files] == first


def test_the_committed_page_is_what_report_writes_from_the_committed_cells(tmp_path):
    # The markdown only: PNG bytes depend on the matplotlib and freetype builds.
    page = ROOT / "docs" / "results.md"
    if not page.exists():
        pytest.skip("docs/results.md has not been generated yet")
    cells = ROOT / "docs" / "results" / "cells.jsonl"
    if cells.exists():
        (tmp_path / "results").mkdir()
        (tmp_path / "results" / "cells.jsonl").write_bytes(cells.read_bytes())
    assert report(tmp_path) == page.read_text()


def test_claim_fails_and_waits_as_the_cells_say(tmp_path):
    records = corridor1000_records()
    trxl = CORE["trxl-equal-memory-ppo"]
    records[-1] = fake_record(TASK["corridor1000"], trxl, 3, 1.0, 3_000_000, 800.0, alive=41.0,
                              memory_size=41)  # fmt: skip
    write_records(tmp_path / "results" / "cells.jsonl", records)
    assert ("**Does not hold**: Transformer-XL at equal memory meets it too."
            in report(tmp_path))  # fmt: skip
    write_records(tmp_path / "results" / "cells.jsonl", records[:4])
    assert "**Not yet measured**: 4 of 5 Expire-Span seeds and 0 of 3" in report(tmp_path)
    # A --threads 1 run of the fifth seed is a variant, not the command as typed.
    variant = {**records[4], "threads": 1, "threads_given": True}
    write_records(tmp_path / "results" / "cells.jsonl", [*records[:4], variant])
    assert "**Not yet measured**: 4 of 5 Expire-Span seeds and 0 of 3" in report(tmp_path)


def test_report_gives_the_declared_reason_of_a_cell_not_run(tmp_path):
    task = TASK["corridor1000"]
    reason = (task.label, "the window does not fit in memory")
    covering = results_grid.Core("trxl-equal-reach", "Transformer-XL, covering window",
                                 not_run=(reason,))  # fmt: skip
    cores = (CORE["expire_span-ppo"], covering)
    write_records(tmp_path / "results" / "cells.jsonl", corridor1000_records()[:5])
    page = report(tmp_path, (task,), cores)
    assert ("| Transformer-XL, covering window |  | not run (0 of 3 seeds): the window does not "
            "fit in memory |") in page  # fmt: skip


def test_every_declared_command_parses_with_its_cli(tmp_path):
    preset = CORE["expire_span-ppo"]
    records = [fake_record(task, preset, seed, 1.0, 1000, 1.0, alive=46.2)
               for task in results_grid.TASKS for seed in preset.seeds]  # fmt: skip
    planner = results_grid.Planner(records, tmp_path / "runs")
    cells = results_grid.grid_cells()
    assert len({cell.id for cell in cells}) == len(cells)
    first: dict[tuple[str, str], list[str]] = {}
    for cell in cells:
        train, evaluate, note = planner.commands(cell)
        assert train is not None, note
        # The other seeds' commands differ from the first seed's in the seed and run dir only
        # (parsing each one would take tyro seconds).
        shown = [cell.task.label if w == cell.id else "S" if w == str(cell.seed) else w
                 for w in (Path(word).name for word in train)]  # fmt: skip
        key = (cell.task.label, cell.core.key)
        if key in first:
            assert shown == first[key]
            continue
        first[key] = shown
        budget = planner.budget(cell.task)
        if cell.core.name == "sb3":
            args = sb3_baseline.build_parser().parse_args(train[1:])
            assert sb3_baseline.check_args(args) == cell.task.settings
            assert args.total_steps == budget and evaluate is None
            continue
        config = resolve(parse_args(TrainArgs, train[1:], "python train_rl.py", ""))
        assert config.learner.total_steps == budget and config.run.seed == cell.seed
        assert evaluate[:2] == ["evaluate.py", train[train.index("--run-dir") + 1]]
        if cell.core.name == "trxl-equal-memory":
            assert config.policy_kwargs["memory_size"] == 47  # 46.2 rounded up
    seed_2 = results_grid.Cell(TASK["corridor1000"], CORE["expire_span-ppo"], 2)
    readme = results_grid.command_text(planner.commands(seed_2)[0])
    assert readme == ("python train_rl.py --env corridor --length 1000 --seed 2 --run-dir "
                      f"{tmp_path}/runs/corridor1000-expire_span-ppo-s2")  # fmt: skip


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path, capsys):
    cells, runs = tmp_path / "results" / "cells.jsonl", tmp_path / "runs"
    write_records(cells, corridor1000_records()[:5])
    argv = ["run", "--dry-run", "--results", str(cells), "--runs-root", str(runs), "--cells",
            "corridor1000-*", "--seeds", "1"]  # fmt: skip
    assert results.main(argv) == 0
    out = capsys.readouterr().out
    assert "corridor1000-expire_span-ppo-s1: done" in out
    assert "corridor1000-lstm-ppo-s1: new\n    python train_rl.py --env corridor --length 1000 " \
           "--seed 1 --policy lstm --total-steps 4000000 --run-dir" in out
    assert "--policy trxl --memory-size 41 --total-steps 4000000" in out  # ceil(40.2)
    assert "corridor100-" not in out and "-s2" not in out
    assert not runs.exists() and len(cells.read_text().splitlines()) == 5


def tiny_run(run_dir):
    """A finished tiny corridor run made in this process."""
    argv = ["--env", "corridor", "--length", "6", "--num-envs", "8", "--num-steps", "16",
            "--total-steps", "256", "--threads", "1", "--run-dir", str(run_dir)]  # fmt: skip
    assert train_rl.main(argv, progress=False) == 0


def test_run_state_skips_resumes_and_refuses_foreign_runs(tmp_path):
    cell = results_grid.Cell(TASK["corridor1000"], CORE["lstm-ppo"], 1)
    command = {"train": "python train_rl.py X", "evaluate": "python evaluate.py Y"}
    run_dir = tmp_path / cell.id
    assert results_run.run_state(cell, run_dir, command) == "new"
    run_dir.mkdir()
    assert results_run.run_state(cell, run_dir, command) == "new"  # empty: nothing started
    tiny_run(run_dir)
    with pytest.raises(results_grid.HarnessError, match="not made by this harness"):
        results_run.run_state(cell, run_dir, command)
    results_run.write_harness(run_dir, {"command": {**command, "train": "python train_rl.py Z"}})
    with pytest.raises(results_grid.HarnessError, match="another command"):
        results_run.run_state(cell, run_dir, command)
    results_run.write_harness(run_dir, {"command": command, "commits": []})
    # The checkpoint reached --total-steps: finished, though the marker was never written.
    assert results_run.run_state(cell, run_dir, command) == "evaluate"
    config = json.loads((run_dir / "config.json").read_text())
    config["learner"]["total_steps"] = 512  # now the checkpoint at 256 is half-way
    (run_dir / "config.json").write_text(json.dumps(config))
    assert results_run.run_state(cell, run_dir, command) == "resume"
    assert results_run.training_argv(cell, "resume", run_dir, ["train_rl.py"]) == \
        ["train_rl.py", "--resume", str(run_dir)]
    results_run.write_harness(run_dir, {"command": command, "commits": [], "trained": True})
    assert results_run.run_state(cell, run_dir, command) == "evaluate"
    results_run.write_harness(run_dir, {"command": command, "commits": [], "trained": True,
                                    "evaluated": True})  # fmt: skip
    assert results_run.run_state(cell, run_dir, command) == "record"
    (run_dir / "checkpoints" / "latest.pt").unlink()
    results_run.write_harness(run_dir, {"command": command, "commits": []})
    assert results_run.run_state(cell, run_dir, command) == "new"  # no checkpoint to resume from


def test_sb3_run_state_follows_its_files(tmp_path):
    cell = results_grid.Cell(TASK["corridor1000"], CORE["sb3-defaults-ppo"], 1)
    command = {"train": "python benchmarks/sb3_baseline.py X", "evaluate": None}
    run_dir = tmp_path / cell.id
    run_dir.mkdir()
    results_run.write_harness(run_dir, {"command": command, "commits": []})
    assert results_run.run_state(cell, run_dir, command) == "new"
    (run_dir / "checkpoint.zip").write_bytes(b"")
    assert results_run.run_state(cell, run_dir, command) == "resume"
    assert results_run.training_argv(cell, "resume", run_dir, ["x.py"]) == ["x.py", "--resume"]
    (run_dir / "summary.json").write_text("{}")
    assert results_run.run_state(cell, run_dir, command) == "record"


def test_a_tiny_cell_end_to_end_then_skipped(tmp_path, capfd):
    task = results_grid.Task("corridor6", "corridor", {"length": 6}, "Corridor, length 6",
                        results_grid.CORRIDOR_BAR, episodes=16, num_envs=8, total_steps=256,
                        train_flags=("--num-envs", "8", "--num-steps", "16"))  # fmt: skip
    cores = (results_grid.Core("expire_span", "Expire-Span", seeds=(1,)),)
    cells, runs = tmp_path / "results" / "cells.jsonl", tmp_path / "runs"
    argv = ["run", "--threads", "1", "--results", str(cells), "--runs-root", str(runs)]
    assert results.main(argv, (task,), cores) == 0
    (record,) = [json.loads(line) for line in cells.read_text().splitlines()]
    assert record["cell"] == "corridor6-expire_span-ppo-s1-threads1"
    assert record["task"] == "corridor" and record["length"] == 6 and record["seed"] == 1
    assert record["threads"] == 1 and record["threads_given"] is True
    assert record["steps"] == record["budget_steps"] == 256
    eval_json = json.loads((runs / record["cell"] / "eval.json").read_text())
    assert record["success_rate"] == eval_json["success_rate"]
    assert record["solved"] == (eval_json["success_rate"] >= 0.99)
    assert record["command"]["train"] == (
        "python train_rl.py --env corridor --length 6 --seed 1 --total-steps 256 --num-envs 8 "
        f"--num-steps 16 --run-dir {runs}/{record['cell']} --threads 1")  # fmt: skip
    assert record["command"]["evaluate"].endswith("--episodes 16 --num-envs 8 --threads 1")
    assert 1 <= len(record["curve"]) <= results_run.CURVE_POINTS
    assert record["curve"][-1]["global_step"] == 256 and record["commit"]
    checkpoint = torch.load(runs / record["cell"] / "checkpoints" / "latest.pt",
                            weights_only=False)  # fmt: skip
    assert checkpoint["global_step"] == 256
    capfd.readouterr()
    assert results.main(argv, (task,), cores) == 0  # the cell is done: nothing runs
    assert "corridor6-expire_span-ppo-s1-threads1: done" in capfd.readouterr().out
    assert len(cells.read_text().splitlines()) == 1
    page = report(tmp_path, (task,), cores)
    assert "| Expire-Span | 1 (--threads 1) | " in page


def test_append_record_starts_a_line_of_its_own_after_a_cut_short_write(tmp_path):
    path = tmp_path / "cells.jsonl"
    path.write_text('{"cell": "a"}\n{"cell": "b", "sc')  # a write cut short
    results_run.append_record(path, {"cell": "c"})
    assert [r["cell"] for r in results_grid.read_records(path)] == ["a", "c"]


def test_sb3_baseline_rejects_bad_flags_in_one_line(tmp_path, capsys):
    run = ["--total-steps", "10", "--run-dir", str(tmp_path / "run")]
    assert sb3_baseline.main(["--env", "MiniGrid-MemoryS13Random-v0", "--length", "5", *run]) == 2
    assert sb3_baseline.main(["--env", "ExpireRL/Corridor-v0", "--length", "0", *run]) == 2
    assert sb3_baseline.main(["--env", "Nope-v0", *run]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors == [
        "error: --length is not a parameter of MiniGrid-MemoryS13Random-v0 (none for this id)",
        "error: length must be an integer >= 1, got 0",
        "error: --env 'Nope-v0' is not a registered gymnasium id",
    ]
    assert not (tmp_path / "run").exists()


def test_sb3_baseline_flattens_minigrid_without_its_text_mission():
    env = sb3_baseline.make_env("MiniGrid-MemoryS13Random-v0", {})
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4 + 7 * 7 * 3,)  # the direction one-hot and the image cells
    env.close()


# -- time_to_solve.py: the preset's seeds as a user runs them, from the grid's cells -------------
time_to_solve = load("time_to_solve")


def test_time_to_solve_summarises_the_preset_seeds_and_the_baselines_at_budget(tmp_path, capfd):
    task = TASK["corridor1000"]
    records = corridor1000_records()  # seeds 1-5 at 100 s x seed; seeds 1-3 solved
    write_records(tmp_path / "cells.jsonl", records)
    argv = ["--summary-only", "--tasks", "corridor1000", "--results", str(tmp_path / "cells.jsonl")]
    assert time_to_solve.main(argv) == 0
    (row,) = json.loads(capfd.readouterr().out)["rows"]
    assert row["task"] == "corridor1000" and row["seeds_run"] == [1, 2, 3] and row["solved"] == 3
    assert row["wall_s"] == {"each": [100.0, 200.0, 300.0], "median": 200.0, "min": 100.0,
                             "max": 300.0}  # fmt: skip
    assert row["steps"]["median"] == 2_000_000
    (trxl,) = row["baselines_at_budget"]
    assert trxl["seeds"] == 3 and trxl["solved"] == 0 and trxl["score_mean"] == 0.5
    # 200 s median: the corridor-1000 bar is not met; with faster seeds it is.
    assert time_to_solve.summary(records, [task], results_grid.CORES, [1, 2, 3], None)["bars"] == {
        "corridor1000_median_120s_none_over_300s": False}
    fast = [dict(r, wall_s=w) for r, w in zip(records[:3], [90.0, 110.0, 290.0], strict=True)]
    assert time_to_solve.summary(fast, [task], results_grid.CORES, [1, 2, 3], None)["bars"] == {
        "corridor1000_median_120s_none_over_300s": True}
    # A seed not run yet: no verdict; another thread count: another row's cells.
    assert time_to_solve.summary(fast[:2], [task], results_grid.CORES, [1, 2, 3],
                                 None)["bars"] == {"corridor1000_median_120s_none_over_300s": None}
    other = time_to_solve.summary(fast, [task], results_grid.CORES, [1, 2, 3], 1)["rows"][0]
    assert other["seeds_run"] == [] and other["wall_s"]["median"] is None


def test_time_to_solve_corridor10000_bar_needs_few_memories_within_the_hour():
    task, es = TASK["corridor10000"], CORE["expire_span-ppo"]
    assert [core.key for core in results_grid.CORES if core.runs_on(task)] == ["expire_span-ppo"]

    def verdict(wall, alive):
        records = [fake_record(task, es, 1, 1.0, 40_000_000, wall, alive=alive)]
        summary = time_to_solve.summary(records, [task], results_grid.CORES, [1], None)
        return summary["bars"]["corridor10000_solved_within_60min"]

    assert verdict(3000.0, 80.0) is True
    assert verdict(3000.0, 150.0) is False  # over 1 % of the length alive
    assert verdict(4000.0, 80.0) is False  # over the hour


def test_time_to_solve_runs_each_task_in_order_with_progress_on_stderr(tmp_path, capfd,
                                                                       monkeypatch):  # fmt: skip
    asked = []

    def fake_run(args, tasks, cores):
        asked.append((args.cells, args.seeds, args.threads))
        print("progress of", args.cells[0], flush=True)  # the harness prints to stdout
        return 0

    monkeypatch.setattr(time_to_solve, "run", fake_run)
    argv = ["--tasks", "corridor1000", "corridor100", "--seeds", "1", "2", "--threads", "1",
            "--results", str(tmp_path / "cells.jsonl")]  # fmt: skip
    assert time_to_solve.main(argv) == 0
    out, err = capfd.readouterr()
    assert asked == [(["corridor1000-expire_span-ppo-s*"], [1, 2], 1),
                     (["corridor100-expire_span-ppo-s*"], [1, 2], 1)]  # fmt: skip
    assert "progress of corridor1000" in err and "progress" not in out
    line = json.loads(out)  # stdout: the JSON line alone
    assert [row["task"] for row in line["rows"]] == ["corridor1000", "corridor100"]


def test_time_to_solve_refuses_seeds_the_grid_does_not_declare(capsys):
    assert time_to_solve.main(["--summary-only", "--seeds", "9"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --seeds 9: the grid's Expire-Span cells have seeds 1 2 3 4 5"]
