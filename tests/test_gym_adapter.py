"""GymBatchedEnv: registered gymnasium envs (or ``module:EnvId``) behind the batched-env API,
and training on them."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import minigrid  # noqa: F401  (registers the MiniGrid ids)
import numpy as np
import pytest
import torch
from minigrid.wrappers import RGBImgPartialObsWrapper

import envs  # noqa: F401  (registers the ExpireRL ids)
import train_rl
from envs.gym_adapter import GymBatchedEnv, check_gym_env
from policies import make_policy
from policies.encoder import SINGLE_KEY

TOY_ID = "ExpireRLTest/Toy-v0"


class ToyEnv(gym.Env):
    """Episodes of ``episode_length`` steps with reward ``reward`` at the end and, if
    ``success_flag`` is not None, ``info["success"] = success_flag`` at the last step."""

    def __init__(self, observation_space: gym.Space | None = None,
                 action_space: gym.Space | None = None, episode_length: int = 3,
                 reward: float = 0.0, success_flag: bool | None = None):  # fmt: skip
        self.observation_space = observation_space or gym.spaces.Box(-1, 1, (2,), np.float32)
        self.action_space = action_space or gym.spaces.Discrete(2)
        self.episode_length, self.reward, self.success_flag = episode_length, reward, success_flag
        self.actions: list[Any] = []

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.observation_space.seed(int(self.np_random.integers(2**31)))
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self.actions.append(action)
        self.t += 1
        done = self.t >= self.episode_length
        info = {"success": self.success_flag} if done and self.success_flag is not None else {}
        return self.observation_space.sample(), self.reward if done else 0.0, done, False, info


if TOY_ID not in gym.registry:
    gym.register(TOY_ID, entry_point=ToyEnv, disable_env_checker=True)


def random_actions(env: GymBatchedEnv, steps: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, int(env.single_action_space.n), (steps, env.num_envs),
                         generator=generator)  # fmt: skip


def test_minigrid_spaces_shapes_and_episode_info():
    env = GymBatchedEnv("MiniGrid-MemoryS7-v0", 3, seed=0)
    space = env.single_observation_space
    assert set(space.spaces) == {"image", "direction"}  # the text mission is dropped
    assert space["image"] == gym.spaces.Box(0, 255, (7, 7, 3), np.uint8)
    assert space["direction"] == gym.spaces.Discrete(4)
    assert env.single_action_space == gym.spaces.Discrete(7)
    assert env.max_steps == 245
    obs = env.reset(seed=1)
    assert obs["image"].shape == (3, 7, 7, 3) and obs["image"].dtype == torch.uint8
    assert obs["direction"].shape == (3,) and obs["direction"].dtype == torch.int64
    lengths = torch.zeros(3, dtype=torch.long)
    returns = torch.zeros(3)
    finished = 0
    for action in random_actions(env, 250):  # past the time limit: every env ends once
        obs, reward, terminated, truncated, info = env.step(action)
        assert reward.dtype == torch.float32 and reward.shape == (3,)
        assert terminated.dtype == torch.bool and truncated.dtype == torch.bool
        assert obs["image"].device == env.device
        lengths += 1
        returns += reward
        done = terminated | truncated
        for i in done.nonzero().flatten().tolist():
            assert info["episode_length"][i] == lengths[i]
            assert info["episode_return"][i] == pytest.approx(returns[i].item(), abs=1e-5)
            assert info["success"][i] == (returns[i] > 0)  # no success flag of its own
            finished += 1
        assert not info["success"][~done].any()
        lengths[done], returns[done] = 0, 0.0
    assert finished >= 3


def test_flat_vector_env_resets_in_the_same_step():
    env = GymBatchedEnv("CartPole-v1", 4, seed=0)
    env.keep_final_obs = True
    assert env.single_observation_space[SINGLE_KEY].dtype == np.float32
    assert env.single_observation_space[SINGLE_KEY].shape == (4,)
    obs = env.reset(seed=0)
    assert obs[SINGLE_KEY].shape == (4, 4) and obs[SINGLE_KEY].dtype == torch.float32
    ended = 0
    for _ in range(60):
        # Always pushing right topples the pole within ~10 steps.
        obs, reward, terminated, _, info = env.step(torch.ones(4, dtype=torch.long))
        assert torch.all(reward == 1.0)
        if terminated.any():
            new, final = obs[SINGLE_KEY][terminated], info["final_obs"][SINGLE_KEY][terminated]
            assert torch.all(new.abs() <= 0.05)  # CartPole's reset state ...
            assert torch.any(final.abs() > 0.2, dim=1).all()  # ... not the fallen pole
            assert torch.all(info["episode_length"][terminated] >= 8)
            ended += int(terminated.sum())
    assert ended >= 4


def test_same_seed_same_steps_and_state_dict_restarts_episodes():
    def rollout(env: GymBatchedEnv) -> list[torch.Tensor]:
        return [env.step(action)[0]["image"] for action in random_actions(env, 20)]

    first, second = (GymBatchedEnv("MiniGrid-MemoryS7-v0", 2, seed=5) for _ in range(2))
    first.reset(seed=3), second.reset(seed=3)
    for a, b in zip(rollout(first), rollout(second), strict=True):
        assert torch.equal(a, b)
    saved = first.state_dict()
    resumed = [GymBatchedEnv("MiniGrid-MemoryS7-v0", 2, seed=9) for _ in range(2)]
    for env in resumed:
        env.load_state_dict(saved)
        assert env.resumes_exactly is False
        assert (env.state_dict()["step_count"] == 0).all()  # episodes restarted
    assert torch.equal(resumed[0].obs["image"], resumed[1].obs["image"])
    for a, b in zip(rollout(resumed[0]), rollout(resumed[1]), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="does not fit"):
        GymBatchedEnv("MiniGrid-MemoryS7-v0", 3).load_state_dict(saved)


def test_success_flag_of_the_env_wins_over_the_return():
    env = GymBatchedEnv(TOY_ID, 2, seed=0, episode_length=2, reward=1.0, success_flag=False)
    env.step(torch.zeros(2, dtype=torch.long))
    _, _, terminated, _, info = env.step(torch.zeros(2, dtype=torch.long))
    assert terminated.all() and not info["success"].any()
    assert torch.equal(info["episode_return"], torch.ones(2))


def test_other_observation_fields_and_action_start():
    space = gym.spaces.Dict({"vector": gym.spaces.Box(0, 9, (3,), np.int64),
                             "token": gym.spaces.Discrete(5)})  # fmt: skip
    env = GymBatchedEnv(TOY_ID, 2, seed=0, observation_space=space,
                        action_space=gym.spaces.Discrete(3, start=-1))  # fmt: skip
    assert env.single_observation_space["vector"].dtype == np.float32
    assert env.single_action_space == gym.spaces.Discrete(3)
    obs = env.reset()
    assert obs["vector"].dtype == torch.float32 and obs["token"].dtype == torch.int64
    env.step(torch.tensor([0, 2]))
    assert [e.unwrapped.actions[-1] for e in env.vector_env.envs] == [-1, 1]
    discrete = GymBatchedEnv(TOY_ID, 2, observation_space=gym.spaces.Discrete(4))
    assert discrete.reset()[SINGLE_KEY].shape == (2,)


@pytest.mark.parametrize(
    ("env_id", "kwargs", "message"),
    [
        ("NoSuchEnv-v0", {}, "unknown gymnasium env id 'NoSuchEnv-v0'"),
        ("Pendulum-v1", {}, r"Pendulum-v1: action space Box.*Discrete"),
        (
            TOY_ID,
            {"observation_space": gym.spaces.Text(5)},
            f"{TOY_ID}: text observations \\(Text",
        ),
        (
            TOY_ID,
            {"observation_space": gym.spaces.Dict({"a": gym.spaces.Dict({
                "b": gym.spaces.Sequence(gym.spaces.Discrete(2))})})},
            f"{TOY_ID}: observation field 'a.b' of space Sequence.* is not supported",
        ),
        (
            TOY_ID,
            {"observation_space": gym.spaces.Graph(gym.spaces.Discrete(2), None)},
            f"{TOY_ID}: observation space Graph.* is not supported; allowed: Discrete",
        ),
        (
            TOY_ID,
            {"observation_space": gym.spaces.Tuple([gym.spaces.Text(4)])},
            f"{TOY_ID}: observation space Tuple.* has no field the policy can read",
        ),
        ("CartPole-v1", {"no_such_option": 1}, "CartPole-v1: cannot build"),
    ],
)  # fmt: skip
def test_bad_ids_and_spaces_are_clear_errors(env_id: str, kwargs: dict, message: str):
    with pytest.raises(ValueError, match=message) as error:
        GymBatchedEnv(env_id, 2, seed=0, **kwargs)
    assert "\n" not in str(error.value)


def test_no_layout_or_oracle():
    env = GymBatchedEnv("CartPole-v1", 1)
    with pytest.raises(NotImplementedError, match="CartPole-v1"):
        env.layout(0)
    with pytest.raises(NotImplementedError, match="CartPole-v1"):
        env.oracle_actions()
    with pytest.raises(ValueError, match="num_envs"):
        GymBatchedEnv("CartPole-v1", 0)


@pytest.mark.parametrize(
    ("env_id", "policy"), [("CartPole-v1", "lstm"), ("MiniGrid-MemoryS7-v0", "expire_span")]
)
def test_train_rl_on_a_gym_id_and_resume(tmp_path, env_id: str, policy: str):
    run = tmp_path / "run"
    # One thread: tiny models on a busy 2-core machine are much slower with two.
    argv = ["--env", env_id, "--policy", policy, "--num-envs", "4", "--num-steps", "16",
            "--total-steps", "128", "--threads", "1", "--run-dir", str(run)]  # fmt: skip
    assert train_rl.main(argv, progress=False) == 0
    with open(run / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    assert rows and int(rows[-1]["global_step"]) == 128
    assert (run / "checkpoints" / "latest.pt").exists()
    # The python envs restart their episodes on resume; loading must work all the same.
    assert train_rl.main(["--resume", str(run)], progress=False) == 0


# -- tasks from a package named in the env id ("module:EnvId") ---------------------------

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
PACKAGE = "tiny_gym_tasks"
"""tests/fixtures/tiny_gym_tasks: a package that registers one tiny task per space on import."""


@pytest.fixture
def package_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes the fixture package importable by name, as an installed package is."""
    monkeypatch.syspath_prepend(str(FIXTURES))


def test_module_env_id_imports_the_module_first(package_on_path, monkeypatch):
    monkeypatch.delitem(sys.modules, PACKAGE, raising=False)
    assert check_gym_env(f"{PACKAGE}:CueDict-v0").id == "CueDict-v0"
    assert PACKAGE in sys.modules
    assert check_gym_env("CueDict-v0").id == "CueDict-v0"  # registered from now on
    allowed = "allowed: a registered gymnasium id (e.g. CartPole-v1), or 'module:EnvId'"
    for env_id, message in [
        ("no_such_package_xyz:CueDict-v0",
         "env id 'no_such_package_xyz:CueDict-v0': cannot import module 'no_such_package_xyz' "
         "(ModuleNotFoundError"),
        (f"{PACKAGE}:CueNothing-v0",
         f"unknown gymnasium env id '{PACKAGE}:CueNothing-v0' (importing '{PACKAGE}' does not "
         "register it)"),
        (f"a:{PACKAGE}:CueDict-v0", f"malformed env id 'a:{PACKAGE}:CueDict-v0'"),
        ("NoSuchEnv", "unknown gymnasium env id 'NoSuchEnv'"),
    ]:  # fmt: skip
        with pytest.raises(ValueError) as error:
            check_gym_env(env_id)
        text = str(error.value)
        assert text.startswith(message) and allowed in text and "\n" not in text, text


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("CueDiscrete-v0", {SINGLE_KEY: ((), torch.int64)}),
        ("CueMultiDiscrete-v0", {SINGLE_KEY: ((3,), torch.int64)}),
        ("CueMultiBinary-v0", {SINGLE_KEY: ((4,), torch.int8)}),
        ("CueFloatBox-v0", {SINGLE_KEY: ((2, 3, 4), torch.float32)}),
        # H x W x 3 pixels of an env that is not a minigrid env: one axis, not cells.
        ("CuePixels-v0", {SINGLE_KEY: ((6 * 6 * 3,), torch.uint8)}),
        ("CueGrayFrames-v0", {SINGLE_KEY: ((2, 5, 5), torch.uint8)}),
        # Nested keys flattened; float64 becomes float32; the text mission is dropped.
        ("CueDict-v0", {"cue.grid": ((2, 2), torch.int64), "cue.token": ((), torch.int64),
                        "level": ((2,), torch.float32)}),
        ("CueTuple-v0", {"0": ((), torch.int64), "1.0": ((2, 2), torch.float32),
                         "1.1": ((3,), torch.int8)}),
    ],
)  # fmt: skip
def test_each_space_runs_end_to_end_through_the_policy(package_on_path, name: str, fields):
    import tiny_gym_tasks

    env = GymBatchedEnv(f"{PACKAGE}:{name}", 4, seed=0)
    obs = env.reset(seed=0)
    assert {key: (tuple(value.shape[1:]), value.dtype) for key, value in obs.items()} == fields
    policy = make_policy("lstm", env.single_observation_space, 2, d_model=16)
    # The policy can tell the two cues apart, and both from the blank steps after them.
    wrapper = env.vector_env.envs[0]
    encoded = []
    for cue in (0, 1, 2):
        shown = wrapper.observation(tiny_gym_tasks.show(wrapper.original_space, cue))
        encoded.append(policy.encoder({key: torch.as_tensor(value)[None, None]
                                       for key, value in shown.items()}))  # fmt: skip
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert not torch.allclose(encoded[a], encoded[b]), (a, b)
    state, starts = policy.initial_state(4), torch.ones(4, dtype=torch.bool)
    for t in range(1, 7):  # two episodes of delay + 1 = 3 steps
        with torch.no_grad():
            output, state = policy({key: value[None] for key, value in obs.items()}, state,
                                   starts[None])  # fmt: skip
        obs, reward, terminated, truncated, info = env.step(output.logits[0].argmax(-1))
        starts = terminated | truncated
        assert bool(terminated.all()) == (t % 3 == 0) and not truncated.any()
    assert torch.equal(info["episode_length"], torch.full((4,), 3))
    assert torch.equal(info["success"], reward > 0)


class Brighter(gym.ObservationWrapper):
    """A minigrid env whose image is no longer (object, colour, state) cells."""

    def observation(self, observation: dict) -> dict:
        return {**observation, "image": observation["image"] * 20}


def minigrid_with(wrapper: type[gym.Wrapper], **kwargs: Any) -> gym.Env:
    from minigrid.envs import EmptyEnv

    return wrapper(EmptyEnv(size=5), **kwargs)


for _id, _wrapper, _kwargs in [("ExpireRLTest/MiniGridPixels-v0", RGBImgPartialObsWrapper,
                                {"tile_size": 2}),
                               ("ExpireRLTest/MiniGridBright-v0", Brighter, {})]:  # fmt: skip
    if _id not in gym.registry:
        gym.register(_id, entry_point=minigrid_with, kwargs={"wrapper": _wrapper, **_kwargs})


def test_minigrid_pixels_are_features_and_cells_are_checked():
    pixels = GymBatchedEnv("ExpireRLTest/MiniGridPixels-v0", 2, seed=0)
    assert pixels.single_observation_space["image"] == gym.spaces.Box(
        0, 255, (7 * 2 * 7 * 2 * 3,), np.uint8)  # 7 x 7 cells of 2 x 2 pixels, on one axis
    assert pixels.obs["image"].max() > 11  # pixel values, which cells never reach
    policy = make_policy("lstm", pixels.single_observation_space, 7, d_model=16)
    output, _ = policy({key: value[None] for key, value in pixels.obs.items()},
                       policy.initial_state(2), torch.ones(1, 2, dtype=torch.bool))  # fmt: skip
    assert output.logits.shape == (1, 2, 7)
    with pytest.raises(ValueError, match=r"field 'image' holds values up to .* RGBImgObsWrapper"):
        GymBatchedEnv("ExpireRLTest/MiniGridBright-v0", 1, seed=0)


def test_train_and_evaluate_a_module_env_id_from_the_command_line(tmp_path):
    env_id = f"{PACKAGE}:CueDict-v0"
    paths = [str(FIXTURES), os.environ.get("PYTHONPATH", "")]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}

    def python(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *argv], cwd=ROOT, env=environment,
                              capture_output=True, text=True, timeout=300)  # fmt: skip

    run = tmp_path / "run"
    trained = python("train_rl.py", "--env", env_id, "--num-envs", "4", "--num-steps", "8",
                     "--total-steps", "32", "--threads", "1", "--run-dir", str(run))  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert json.loads((run / "config.json").read_text())["env"] == env_id  # as given
    evaluated = python("evaluate.py", str(run), "--episodes", "4")
    assert evaluated.returncode == 0, evaluated.stderr
    summary = json.loads((run / "eval.json").read_text())
    assert summary["task"]["env"] == env_id and summary["episodes"] == 4
    assert summary["mean_length"] == 3.0  # the task's episodes, rebuilt from config.json
