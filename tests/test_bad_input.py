"""Walks docs/bad-input.md: every bad input in its table gets the documented one-line refusal."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import torch

import envs
import evaluate
import train_rl
from agents import plot
from policies import make_policy

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "docs" / "bad-input.md"
MAINS = {"train_rl.py": train_rl.main, "evaluate.py": evaluate.main, "agents.plot": plot.main}
TINY = ["--env", "corridor", "--length", "4", "--num-envs", "8", "--num-steps", "16",
        "--num-minibatches", "2", "--update-epochs", "2", "--seed", "3", "--total-steps", "256",
        "--threads", "1"]  # fmt: skip


def table_rows() -> list[tuple[str, str, str, str]]:
    """(door, input, result, message) of each row of the first table."""
    rows, lines = [], TABLE.read_text().splitlines()
    start = lines.index("| door | input | result | message contains |") + 2
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        rows.append(tuple(cell.strip("`") for cell in cells))
    return rows


class RunsCode:
    def __reduce__(self) -> tuple[Any, ...]:
        return (__import__("os").system, ("true",))


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The run directories and files the table names, by their capitals."""
    root = tmp_path_factory.mktemp("bad_input")
    run = root / "RUN"
    assert train_rl.main([*TINY, "--run-dir", str(run)], progress=False) == 0
    made = {"RUN": run, "MISSING": root / "missing", "NOT_A_RUN": root / "not_a_run"}
    made["NOT_A_RUN"].mkdir()

    def copy(name: str) -> Path:
        made[name] = root / name
        shutil.copytree(run, made[name])
        return made[name]

    (copy("RUN_CORRUPT_CONFIG") / "config.json").write_text('{"env": "corr')
    config = json.loads((run / "config.json").read_text())
    (copy("RUN_NEWER_CONFIG") / "config.json").write_text(json.dumps({**config, "version": 99}))
    shutil.rmtree(copy("RUN_NO_CHECKPOINT") / "checkpoints")
    for path in (copy("RUN_CORRUPT_CHECKPOINT") / "checkpoints").glob("*.pt"):
        path.write_bytes(b"\x00" * 64)
    for path in (copy("RUN_CODE_CHECKPOINT") / "checkpoints").glob("*.pt"):
        payload = torch.load(path, weights_only=True)
        payload["policy"]["trap"] = RunsCode()
        torch.save(payload, path)
    other = {**config, "policy": "lstm", "policy_kwargs": {},
             "learner": {**config["learner"], "total_steps": 512}}  # fmt: skip
    (copy("RUN_OTHER_POLICY") / "config.json").write_text(json.dumps(other))
    return {name: str(path) for name, path in made.items()}


def substitute(text: str, places: dict[str, str]) -> str:
    for name in sorted(places, key=len, reverse=True):  # RUN_CORRUPT_CONFIG before RUN
        text = re.sub(rf"\b{name}\b", places[name], text)
    return text


def run_main(door: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    try:
        status = MAINS[door](argv, progress=False) if door == "train_rl.py" else MAINS[door](argv)
    except SystemExit as exit_:  # the command line's own parsing errors
        status = int(exit_.code)
    return status, capsys.readouterr().err


CLI_ROWS = [row for row in table_rows() if row[0] in MAINS and "Ctrl-C" not in row[1]]
API_ROWS = [row for row in table_rows() if row[0] not in MAINS]


def test_the_table_covers_every_door():
    doors = {row[0] for row in table_rows()}
    assert doors == {*MAINS, "gymnasium.make", "make_batched", "make_policy"}
    assert len(CLI_ROWS) >= 50 and len(API_ROWS) >= 12


@pytest.mark.parametrize(("door", "given", "result", "message"), CLI_ROWS,
                         ids=[f"{row[0]} {row[1]}" for row in CLI_ROWS])  # fmt: skip
def test_a_bad_command_line_is_one_line_and_exit_2(door, given, result, message, places, capsys):
    argv = [] if given.startswith("(") else shlex.split(substitute(given, places))
    status, err = run_main(door, argv, capsys)
    lines = err.strip().splitlines()
    assert status == int(result.removeprefix("exit ")) == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert substitute(message, places) in lines[0]


@pytest.mark.parametrize(("door", "given", "result", "message"), API_ROWS,
                         ids=[row[1] for row in API_ROWS])  # fmt: skip
# gymnasium's own warning before the error for an unknown render mode is not the test's subject
@pytest.mark.filterwarnings("ignore:.*not in the possible render_modes")
def test_a_bad_value_from_python_is_a_one_line_error(door, given, result, message):
    namespace = {"gym": gym, "envs": envs, "make_policy": make_policy,
                 "SPACE": envs.make_batched("corridor", 1).single_observation_space}  # fmt: skip
    with pytest.raises(ValueError) as raised:
        eval(given, namespace)  # the table's own Python, as a user would type it
    assert result == "ValueError"
    text = str(raised.value)
    assert message in text and "\n" not in text


def test_ctrl_c_while_starting_is_one_line_and_exit_130(tmp_path):
    """SIGINT during start-up (the libraries take seconds to load) or the first updates (then
    a line first says the update under way is being saved)."""
    for delay in (0.3, 4.0):
        process = subprocess.Popen(
            [sys.executable, "train_rl.py", "--env", "corridor", "--length", "4", "--threads",
             "1", "--run-dir", str(tmp_path / f"run{delay}")],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
        lines = err.strip().splitlines()
        assert process.returncode == 130, err
        assert lines[-1].startswith("interrupted"), err
        assert len(lines) == 1 or (len(lines) == 2 and lines[0].startswith("stopping after")), err
