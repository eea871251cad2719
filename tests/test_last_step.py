"""The previous action and reward as observation fields (--last-action-reward; Portal preset)."""

import json

import gymnasium as gym
import pytest
import torch

import envs
import train_rl
from agents.load_run import load_run
from agents.resolve import resolve
from agents.rollout import Collector
from agents.train_args import TrainArgs
from envs.last_step import LAST_ACTION, LAST_REWARD, LastStepEnv, with_last_step_space

TINY_PORTAL = ["--env", "portal", "--num-rooms", "2", "--room-length", "3", "--max-steps", "40",
               "--num-envs", "4", "--num-steps", "16", "--num-minibatches", "2",
               "--update-epochs", "1", "--log-interval", "1", "--threads", "1"]  # fmt: skip


def test_the_fields_hold_the_previous_step_and_zero_at_each_episode_start():
    # One room one cell long: a goal every few steps, and an episode end every 9.
    env = LastStepEnv(envs.make_batched("portal", 6, seed=0, num_rooms=1, room_length=1,
                                        max_steps=9))
    assert env.single_observation_space[LAST_ACTION] == gym.spaces.Discrete(4)
    obs = env.reset(seed=0)
    assert obs[LAST_ACTION].tolist() == [0] * 6 and obs[LAST_REWARD].tolist() == [[0.0]] * 6
    generator = torch.Generator().manual_seed(0)
    ends, rewards = 0, 0.0
    for _ in range(40):
        actions = torch.randint(0, 3, (6,), generator=generator)
        obs, reward, terminated, truncated, _ = env.step(actions)
        done = terminated | truncated
        ends += int(done.sum())
        rewards += float(obs[LAST_REWARD].sum())
        assert torch.equal(obs[LAST_ACTION], torch.where(done, 0, actions + 1))
        assert torch.equal(obs[LAST_REWARD][:, 0], torch.where(done, 0.0, reward))
    assert ends >= 24 and rewards > 10  # goals inside episodes, and episode ends
    # Everything else is the wrapped env's.
    assert env.num_envs == 6 and env.oracle_actions().shape == (6,)
    assert set(obs) == {*env.env.single_observation_space.spaces, LAST_ACTION, LAST_REWARD}


def test_a_space_that_already_has_a_field_is_refused():
    space = gym.spaces.Dict({LAST_ACTION: gym.spaces.Discrete(2)})
    with pytest.raises(ValueError, match="already has a field 'last_action'"):
        with_last_step_space(space, 3)


def test_the_fields_are_part_of_the_state_a_run_resumes_from():
    def make() -> LastStepEnv:
        return LastStepEnv(envs.make_batched("portal", 3, seed=1, num_rooms=2, room_length=2))

    first, second = make(), make()
    first.reset(seed=1)
    second.reset(seed=7)
    for action in (2, 2, 0, 1, 2):
        first.step(torch.full((3,), action))
    second.load_state_dict(first.state_dict())
    for action in (1, 2, 0):
        a = first.step(torch.full((3,), action))[0]
        b = second.step(torch.full((3,), action))[0]
        assert all(torch.equal(a[key], b[key]) for key in a)


def test_portal_preset_shows_the_last_step_and_a_flag_turns_it_off():
    def shown(**flags) -> bool:
        return resolve(TrainArgs(**flags)).learner.last_action_reward

    assert shown(env="portal") and not shown(env="portal", last_action_reward=False)
    assert not shown(env="corridor") and shown(env="corridor", length=50, last_action_reward=True)


def test_a_portal_run_trains_and_evaluates_with_the_fields(tmp_path):
    run_dir = tmp_path / "run"
    argv = [*TINY_PORTAL, "--run-dir", str(run_dir), "--seed", "2"]
    assert train_rl.main([*argv, "--total-steps", "128"], progress=False) == 0
    assert json.loads((run_dir / "config.json").read_text())["learner"]["last_action_reward"]
    run = load_run(str(run_dir))
    env = run.make_env(num_envs=2, seed=0)
    assert {LAST_ACTION, LAST_REWARD} <= set(env.reset(seed=0))
    # The rollout stores the field, so the learner replays what the policy saw.
    rollout = Collector(env, run.policy, num_steps=8, chunk_length=8, seed=0).collect()
    assert rollout.obs[LAST_ACTION].shape == (8, 2)
    starts = rollout.episode_starts[1:]
    assert torch.equal(rollout.obs[LAST_ACTION][1:], torch.where(starts, 0,
                                                                 rollout.actions[:-1] + 1))
    assert torch.equal(rollout.obs[LAST_REWARD][1:, :, 0], torch.where(starts, 0.0,
                                                                       rollout.rewards[:-1]))
