"""The batched and reference implementations of every task behave the same."""

import numpy as np
import pytest
import torch

import envs

# Small settings so that episodes end often inside a test.
SMALL = {
    "corridor": {"length": 6, "num_colors": 3, "view_size": 3},
    "corridor_wide_view": {"length": 3, "num_colors": 6, "view_size": 7, "max_steps": 16},
    "corridor_random_length": {"length": 12, "min_length": 3, "num_colors": 2, "max_steps": 40},
    "corridor_random_wide_view": {"length": 9, "min_length": 5, "view_size": 5, "max_steps": 30},
    "portal": {"num_rooms": 3, "room_length": 2, "max_steps": 40},
    "portal_wide_view": {"num_rooms": 2, "room_length": 4, "max_steps": 30, "view_size": 7},
    "instruction": {
        "size": 3,
        "num_objects": 3,
        "delay_min": 10,
        "delay_max": 14,
        "max_steps": 50,
        "view_size": 5,
    },
    "instruction_big": {
        "size": 6,
        "num_objects": 6,
        "delay_min": 16,
        "delay_max": 30,
        "max_steps": 70,
        "view_size": 9,
    },
}


def assert_same_obs(batched_obs, index, reference_obs, where):
    for key, value in reference_obs.items():
        expected = np.asarray(value)
        actual = batched_obs[key][index].cpu().numpy()
        assert np.array_equal(actual, expected), f"{where}: obs[{key!r}] differs"


@pytest.mark.parametrize("case", sorted(SMALL))
@pytest.mark.parametrize("seed", range(4))
def test_replay_matches_reference(case, seed):
    replay(case, seed, sync_free=False)


@pytest.mark.parametrize("case", sorted(SMALL))
def test_replay_matches_reference_on_the_accelerator_path(case):
    # The restart path used on CUDA (draw for every env, keep the running
    # ones with torch.where), exercised here on the CPU.
    replay(case, seed=11, sync_free=True)


def replay(case, seed, sync_free):
    name = case.split("_")[0]
    kwargs = SMALL[case]
    num_envs, num_steps = 6, 160
    batched = envs.make_batched(name, num_envs, seed=seed, **kwargs)
    batched.keep_final_obs = True
    batched.sync_free = sync_free
    obs = batched.reset(seed=seed)
    references = [envs.make_reference(name, **kwargs) for _ in range(num_envs)]
    for i, reference in enumerate(references):
        reference_obs, _ = reference.reset(options={"layout": batched.layout(i)})
        assert_same_obs(obs, i, reference_obs, f"env {i} reset")
    generator = torch.Generator().manual_seed(seed)
    episodes_ended = 0
    for t in range(num_steps):
        # Half random actions, half the oracle's, so that episodes also reach their goals.
        random_actions = torch.randint(0, envs.NUM_ACTIONS, (num_envs,), generator=generator)
        use_oracle = torch.rand(num_envs, generator=generator) < 0.5
        actions = torch.where(use_oracle, batched.oracle_actions(), random_actions)
        obs, reward, terminated, truncated, info = batched.step(actions)
        for i, reference in enumerate(references):
            where = f"env {i} step {t}"
            reference_obs, r, term, trunc, ref_info = reference.step(int(actions[i]))
            assert float(reward[i]) == r, where
            assert bool(terminated[i]) == term, where
            assert bool(truncated[i]) == trunc, where
            if term or trunc:
                episodes_ended += 1
                final = {key: value for key, value in info["final_obs"].items()}
                assert_same_obs(final, i, reference_obs, where + " final")
                assert bool(info["success"][i]) == ref_info["success"], where
                assert int(info["episode_length"][i]) == ref_info["episode_length"], where
                assert float(info["episode_return"][i]) == ref_info["episode_return"], where
                reference_obs, _ = reference.reset(options={"layout": batched.layout(i)})
            assert_same_obs(obs, i, reference_obs, where)
    assert episodes_ended >= num_envs, "the test should cover several whole episodes"
