"""Each task is a real memory task: the oracle is perfect, memoryless play is not."""

from collections import Counter

import pytest
import torch

import envs
from envs.core import FORWARD, LEFT, RIGHT


def run_until_done(benv, policy, max_steps):
    """Step until every env has finished one episode; return each env's first-episode info."""
    finished = torch.zeros(benv.num_envs, dtype=torch.bool)
    first = {}
    for _ in range(max_steps):
        _, _, terminated, truncated, info = benv.step(policy(benv))
        done = (terminated | truncated) & ~finished
        for key, value in info.items():
            if key != "final_obs":
                first.setdefault(key, torch.zeros_like(value))
                first[key] = torch.where(done, value, first[key])
        finished |= done
        if finished.all():
            return first
    raise AssertionError("episodes did not end within the time limit")


def test_corridor_oracle_solves_length_1000():
    benv = envs.make_batched("corridor", 1000, seed=0, length=1000)
    benv.reset()
    info = run_until_done(benv, lambda e: e.oracle_actions(), benv.max_steps)
    assert info["success"].float().mean() == 1.0
    assert (info["episode_length"] == 1001).all()


def junction_samples(seed, num_envs, length):
    """Walk every env to the junction; return its observation there and the right turn."""
    benv = envs.make_batched("corridor", num_envs, seed=seed, length=length, num_colors=3)
    obs = benv.reset()
    for _ in range(length):
        obs, *_ = benv.step(torch.full((num_envs,), FORWARD))
    right_turn = torch.where(benv.top == benv.cue, LEFT, RIGHT)
    keys = [bytes(image.flatten().tolist()) for image in obs["image"]]
    return keys, right_turn.tolist()


def test_corridor_best_memoryless_policy_is_at_chance():
    # The best reactive policy picks, for each observation it can see at the
    # junction, the turn that is right most often. Fit that table on one set
    # of episodes and score it on fresh ones: it cannot beat a coin.
    keys, turns = junction_samples(seed=1, num_envs=4000, length=200)
    votes: dict[bytes, Counter] = {}
    for key, turn in zip(keys, turns, strict=True):
        votes.setdefault(key, Counter())[turn] += 1
    table = {key: counts.most_common(1)[0][0] for key, counts in votes.items()}
    test_keys, test_turns = junction_samples(seed=2, num_envs=4000, length=200)
    hits = [table.get(key, LEFT) == turn for key, turn in zip(test_keys, test_turns, strict=True)]
    success = sum(hits) / len(hits)
    assert abs(success - 0.5) < 0.04, success


def test_corridor_random_policy_reaches_the_junction():
    # A uniform policy must reach the junction, or no reward is ever seen.
    for length in (10, 200, 1000):
        benv = envs.make_batched("corridor", 500, seed=3, length=length)
        benv.reset()
        generator = torch.Generator().manual_seed(0)

        def uniform(e, generator=generator):
            return torch.randint(0, 3, (e.num_envs,), generator=generator)

        info = run_until_done(benv, uniform, benv.max_steps)
        reached = (info["episode_length"] < benv.max_steps).float().mean()
        assert reached > 0.95, (length, reached)


def test_portal_oracle_never_takes_a_wrong_portal():
    benv = envs.make_batched("portal", 500, seed=0)
    benv.reset()
    info = run_until_done(benv, lambda e: e.oracle_actions(), benv.max_steps)
    trip = benv.config.trip_steps
    assert (info["goals"] == benv.max_steps // trip).all()
    assert (info["wrong_after_first_goal"] == 0).all()
    assert info["success"].all()


def test_portal_memoryless_policy_scores_far_below_the_oracle():
    # A reactive policy sees the room (its wall colour) but not the episode's
    # portals; the best it can do is a fixed portal per room, or a coin flip.
    num_rooms = 4
    fixed = torch.tensor([0, 1, 0, 1])

    def fixed_choice(e):
        turn = torch.where(fixed[e.room] == 0, LEFT, RIGHT)
        return torch.where(e.position == e.config.room_length, turn, FORWARD)

    generator = torch.Generator().manual_seed(0)

    def coin_flip(e):
        turn = torch.where(torch.rand(e.num_envs, generator=generator) < 0.5, LEFT, RIGHT)
        return torch.where(e.position == e.config.room_length, turn, FORWARD)

    oracle_goals = 1000 // (num_rooms * 9)
    for policy in (fixed_choice, coin_flip):
        benv = envs.make_batched("portal", 2000, seed=4, num_rooms=num_rooms)
        benv.reset()
        info = run_until_done(benv, policy, benv.max_steps)
        assert info["goals"].float().mean() < 0.2 * oracle_goals


def test_instruction_oracle_carries_out_every_instruction():
    benv = envs.make_batched("instruction", 500, seed=0)
    benv.reset()
    info = run_until_done(benv, lambda e: e.oracle_actions(), benv.max_steps)
    assert info["success"].all()
    assert (info["instructions_carried"] == info["instructions_resolved"]).all()
    assert (info["instructions_resolved"] >= benv.max_steps // benv.config.delay_max).all()


def test_instruction_room_curriculum_plays_a_smaller_room_with_two_balls():
    from envs.core import BALL, UNSEEN

    benv = envs.make_batched("instruction", 64, seed=0)
    benv.reset()
    benv.set_room(3)
    obs = benv.reset()
    assert benv.object_slots.shape == (64, 2) and int(benv.room_size) == 3
    # Two balls in view in every window; beyond the 5 x 5 room (walls included), unseen.
    image = obs["image"]
    assert ((image[..., 0] == BALL).sum(dim=(1, 2)) == 2).all()
    assert (image[..., 0] == UNSEEN).any()
    info = run_until_done(benv, lambda e: e.oracle_actions(), benv.max_steps)
    assert info["success"].all()
    # A state taken in the small room resumes there, in an env built for the full task.
    for _ in range(7):
        benv.step(benv.oracle_actions())
    other = envs.make_batched("instruction", 64, seed=1)
    other.load_state_dict(benv.state_dict())
    assert other.size == 3 and other.object_slots.shape == (64, 2)
    for _ in range(60):
        expected, got = benv.step(benv.oracle_actions()), other.step(other.oracle_actions())
        assert torch.equal(expected[0]["image"], got[0]["image"])
        assert torch.equal(expected[1], got[1])
    benv.set_room(5)
    assert benv.object_slots.shape == (64, 4) and benv.config.size == 5
    with pytest.raises(ValueError, match=r"room size must be an integer \[2, 5\], got 6"):
        benv.set_room(6)


def test_instruction_memoryless_policy_is_near_one_in_num_objects():
    # Without memory the instruction is gone one step after it is shown: the
    # natural reactive strategy waits in front of one ball and presses on.
    benv = envs.make_batched("instruction", 1000, seed=5, num_objects=4)
    benv.reset()

    def camp_at_first_ball(e):
        target, active = e.target.clone(), e.active.clone()
        e.target.zero_()
        e.active.fill_(True)
        actions = e.oracle_actions()
        e.target, e.active = target, active
        return actions

    info = run_until_done(benv, camp_at_first_ball, benv.max_steps)
    rate = info["instructions_carried"].sum() / info["instructions_resolved"].sum()
    assert abs(float(rate) - 0.25) < 0.04, rate


def test_random_length_corridor_draws_log_uniform_lengths_and_the_oracle_solves_them():
    env = envs.make_batched("corridor", 4000, seed=3, length=1000, min_length=10)
    env.reset(seed=3)
    lengths = env.episode_length.float()
    assert int(lengths.min()) >= 10 and int(lengths.max()) <= 1000
    # Log-uniform over [10, 1000]: a third of the episodes below 46, a third above 215.
    assert abs(float((lengths < 46.4).float().mean()) - 1 / 3) < 0.03
    assert abs(float((lengths >= 215.4).float().mean()) - 1 / 3) < 0.03
    layouts = {env.layout(i)["length"] for i in range(50)}
    assert len(layouts) > 10
    small = envs.make_batched("corridor", 64, seed=4, length=30, min_length=3)
    small.reset(seed=4)
    successes = episodes = 0
    for _ in range(200):
        _, _, terminated, truncated, info = small.step(small.oracle_actions())
        done = terminated | truncated
        episodes += int(done.sum())
        successes += int(info["success"][done].sum())
    assert episodes > 64 and successes == episodes
    reference = envs.make_reference("corridor", length=30, min_length=3)
    drawn = set()
    for seed in range(40):
        reference.reset(seed=seed)
        drawn.add(reference.length)
    assert min(drawn) >= 3 and max(drawn) <= 30 and len(drawn) > 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"length": 100, "min_length": 2}, "min_length"),
        ({"length": 100, "min_length": 101}, "min_length"),
        ({"length": 100, "min_length": 4, "view_size": 5}, "min_length"),
    ],
)
def test_random_length_corridor_rejects_impossible_ranges(kwargs, message):
    with pytest.raises(ValueError, match=message):
        envs.make_batched("corridor", 2, **kwargs)


@pytest.mark.parametrize("min_length", [None, 4])
def test_set_longest_caps_the_next_episodes(min_length):
    env = envs.make_batched("corridor", 32, seed=5, length=100, min_length=min_length)
    env.set_longest(12)
    env.reset(seed=5)
    lengths = set()
    for _ in range(60):
        env.step(env.oracle_actions())
        lengths.update(env.episode_length.tolist())
    assert max(lengths) <= 12
    assert lengths == {12} if min_length is None else len(lengths) > 3
    with pytest.raises(ValueError, match="longest"):
        env.set_longest(101)


def test_full_fraction_turns_the_shortest_draws_into_full_length_episodes():
    """The same seed draws the same layouts; with ``full_fraction`` f the shortest share f
    of the random lengths becomes the full length, and nothing else changes."""
    lengths = {}
    for fraction in (0.0, 0.25):
        env = envs.make_batched("corridor", 4096, seed=6, length=100, min_length=5)
        env.set_longest(100, full_fraction=fraction)
        env.reset(seed=6)
        lengths[fraction] = env.episode_length.clone()
    plain, mixed = lengths[0.0], lengths[0.25]
    replaced = mixed != plain
    assert (mixed[replaced] == 100).all()
    assert 0.2 < (mixed == 100).float().mean() < 0.3
    assert plain[replaced].max() <= plain.float().quantile(0.3)  # the shortest were replaced
    with pytest.raises(ValueError, match="full_fraction"):
        env.set_longest(100, full_fraction=1.5)
