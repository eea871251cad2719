"""The tasks' API: gymnasium/sb3 checks, seeding, validation, rendering, vector env."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from gymnasium.wrappers import FlattenObservation
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs

IDS = [env_id for _, _, env_id in envs.TASKS.values()]


@pytest.mark.parametrize("env_id", IDS)
def test_gymnasium_and_sb3_env_checkers_pass_with_warnings_as_errors(env_id, monkeypatch):
    """Gymnasium's checker on the env itself, every render mode included (a window on SDL's
    dummy display); SB3's on the env as SB3's policies take it, flattened (its CNN needs
    images of 36 x 36 pixels or more, and a minigrid window is a few cells)."""
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    monkeypatch.setenv("SDL_AUDIODRIVER", "dummy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = gym.make(env_id, render_mode="rgb_array")
        gym_check_env(env.unwrapped, skip_render_check=False)
        sb3_check_env(FlattenObservation(gym.make(env_id)), warn=True)


@pytest.mark.parametrize("env_id", IDS)
def test_reference_env_renders_a_sensible_frame(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    # A window around the agent, not the whole (possibly 1000-cell) task.
    assert 64 <= frame.shape[0] <= 15 * 32 and 64 <= frame.shape[1] <= 15 * 32
    assert frame.std() > 10  # not a blank picture


def test_long_corridor_renders_a_window():
    env = gym.make("ExpireRL/Corridor-v0", render_mode="rgb_array", length=100_000)
    env.reset(seed=0)
    assert env.render().shape == (5 * 32, 15 * 32, 3)


@pytest.mark.parametrize("name", list(envs.TASKS))
def test_same_seed_same_episodes(name):
    def trajectory(seed):
        benv = envs.make_batched(name, 16, seed=seed)
        observations = [benv.reset()]
        generator = torch.Generator().manual_seed(0)
        for _ in range(50):
            actions = torch.randint(0, 3, (16,), generator=generator)
            observations.append(benv.step(actions)[0])
        return torch.cat([torch.cat([v.flatten() for v in o.values()]) for o in observations])

    assert torch.equal(trajectory(7), trajectory(7))
    assert not torch.equal(trajectory(7), trajectory(8))
    first, second = envs.make_reference(name), envs.make_reference(name)
    for seed in range(3):
        obs_a, _ = first.reset(seed=seed)
        obs_b, _ = second.reset(seed=seed)
        for key in obs_a:
            assert np.array_equal(obs_a[key], obs_b[key])


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("corridor", {"length": 0}, "length must be an integer >= 1, got 0"),
        ("corridor", {"num_colors": 7}, "num_colors must be an integer [2, 6], got 7"),
        ("corridor", {"view_size": 4}, "view_size must be odd"),
        ("corridor", {"length": 10, "max_steps": 5}, "max_steps must be an integer >= 11"),
        ("corridor", {"length": 2.5}, "length must be an integer >= 1, got 2.5"),
        ("portal", {"num_rooms": 7}, "num_rooms must be an integer [1, 6], got 7"),
        ("portal", {"room_length": 0}, "room_length must be an integer >= 1"),
        ("instruction", {"delay_min": 3}, "delay_min must be an integer >= 14, got 3"),
        ("instruction", {"delay_max": 10}, "delay_max must be an integer >= 20, got 10"),
        ("instruction", {"num_objects": 1}, "num_objects must be an integer [2, 6], got 1"),
    ],
)
def test_impossible_parameters_are_clear_errors(name, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        envs.make_batched(name, 2, **kwargs)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        envs.make_reference(name, **kwargs)


def test_unknown_task_and_unknown_parameter_are_errors():
    with pytest.raises(ValueError, match="unknown task 'maze'; choose one of corridor"):
        envs.make_batched("maze", 2)
    with pytest.raises(ValueError, match="'lenght' is not a parameter of the corridor task "
                       r"\(its parameters: length, num_colors"):
        envs.make_batched("corridor", 2, lenght=10)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_that_is_not_there_is_a_one_line_error():
    for device in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match=f"device '{device}': no CUDA device is available"):
            envs.make_batched("corridor", 2, device=device)
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N', got 'tpu'"):
        envs.make_batched("corridor", 2, device="tpu")


def test_layout_from_another_config_is_rejected():
    layout = envs.make_batched("corridor", 1, length=10).layout(0)
    env = envs.make_reference("corridor", length=20)
    with pytest.raises(ValueError, match="layout length 10 does not match the env's length 20"):
        env.reset(options={"layout": layout})


def state_bytes(benv):
    return sum(v.numel() * v.element_size() for v in vars(benv).values() if torch.is_tensor(v))


def test_memory_per_env_does_not_grow_with_length():
    short = envs.make_batched("corridor", 64, length=10)
    long = envs.make_batched("corridor", 64, length=100_000)
    assert state_bytes(short) == state_bytes(long)
    obs, *_ = long.step(long.oracle_actions())
    assert obs["image"].shape == (64, 3, 3, 3)


SHORT = {
    "ExpireRL/Corridor-v0": {"length": 5},
    "ExpireRL/Portal-v0": {"max_steps": 60},
    "ExpireRL/Instruction-v0": {"max_steps": 100},
}


@pytest.mark.parametrize("env_id", IDS)
def test_make_vec_gives_the_batched_fast_path(env_id):
    venv = gym.make_vec(
        env_id, num_envs=8, vectorization_mode="vector_entry_point", **SHORT[env_id]
    )
    assert isinstance(venv, envs.NumpyVectorEnv)
    obs, _ = venv.reset(seed=0)
    assert venv.observation_space.contains(obs)
    ended = False
    for _ in range(500):
        obs, reward, terminated, truncated, info = venv.step(venv.action_space.sample())
        assert isinstance(reward, np.ndarray) and reward.shape == (8,)
        assert venv.observation_space.contains(obs)
        if (terminated | truncated).any():
            ended = True
            assert info["_final_obs"].any() and "final_obs" in info
    assert ended


@pytest.mark.parametrize("name", list(envs.TASKS))
def test_desync_spreads_the_first_episode_ends(name):
    benv = envs.make_batched(name, 256, seed=0)
    benv.reset(desync=True)
    assert benv.step_count.unique().numel() > 100
    assert (benv.step_count < benv.max_steps).all()
