"""MemoryPolicy contract: construction, errors, outputs, State handling, checkpoints.

Also holds the small helpers the other ``test_policies_*`` files import.
"""

from __future__ import annotations

import io
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX

import envs
from policies import POLICY_KINDS, MemoryPolicy, State, make_policy
from policies.encoder import NUM_STATES

VIEW = 3
NUM_ACTIONS = 3
OBS_SPACE = gym.spaces.Dict(
    {
        "image": gym.spaces.Box(0, 255, (VIEW, VIEW, 3), dtype=np.uint8),
        "instruction": gym.spaces.Discrete(7),
    }
)
# Small cores with short spans/windows, so a few dozen steps exercise expiry, pruning and
# compaction.
SMALL = {"d_model": 16, "encoder_hidden": 32, "cell_embed_dim": 4, "token_embed_dim": 4}
TRANSFORMER = {**SMALL, "num_heads": 2, "position_buckets": 8, "compact_interval": 4}
CONFIGS: dict[str, dict[str, Any]] = {
    "expire_span": {**TRANSFORMER, "max_span": 10, "ramp_length": 3, "span_init": 0.5},
    "trxl": {**TRANSFORMER, "memory_size": 6},
    "lstm": dict(SMALL),
}


def random_obs(
    num_steps: int, num_envs: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Observations [T, B, ...] in the tasks' format (minigrid cells, an instruction token)."""
    shape = (num_steps, num_envs, VIEW, VIEW)
    image = torch.stack(
        [
            torch.randint(len(OBJECT_TO_IDX), shape, generator=generator),
            torch.randint(len(COLOR_TO_IDX), shape, generator=generator),
            torch.randint(NUM_STATES, shape, generator=generator),
        ],
        dim=-1,
    ).to(torch.uint8)
    instruction = torch.randint(7, (num_steps, num_envs), generator=generator)
    return {"image": image, "instruction": instruction}


def random_starts(
    num_steps: int, num_envs: int, generator: torch.Generator, prob: float = 0.15
) -> torch.Tensor:
    """[T, B] bool episode starts, with every env starting an episode at t = 0."""
    starts = torch.rand(num_steps, num_envs, generator=generator) < prob
    starts[0] = True
    return starts


def build(kind: str, seed: int = 0, **overrides: Any) -> MemoryPolicy:
    """A small float64 policy with every parameter randomised (zero-initialised position
    biases and span weights included), in eval mode."""
    torch.manual_seed(seed)
    policy = make_policy(kind, OBS_SPACE, NUM_ACTIONS, **{**CONFIGS[kind], **overrides}).double()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
            if "span_predictors" in name and name.endswith("weight"):
                param.copy_(noise * 2.0 / param.shape[-1] ** 0.5)  # spans spread over (0, L_max)
            elif "span_predictors" not in name:
                param.add_(noise * 0.3)
    return policy.eval()


def take(obs: dict[str, torch.Tensor], steps: slice) -> dict[str, torch.Tensor]:
    return {key: value[steps] for key, value in obs.items()}


def run_chunks(
    policy: MemoryPolicy, obs: dict, starts: torch.Tensor, state: State, sizes: list[int]
) -> tuple[torch.Tensor, torch.Tensor, State]:
    """Run consecutive chunks of the given sizes; concatenated logits, values, final state."""
    logits, values, begin = [], [], 0
    for size in sizes:
        steps = slice(begin, begin + size)
        output, state = policy(take(obs, steps), state, starts[steps])
        logits.append(output.logits)
        values.append(output.values)
        begin += size
    return torch.cat(logits), torch.cat(values), state


@pytest.mark.parametrize("kind", POLICY_KINDS)
def test_outputs_have_the_documented_shapes(kind: str) -> None:
    policy = make_policy(kind, OBS_SPACE, NUM_ACTIONS, **CONFIGS[kind])
    generator = torch.Generator().manual_seed(0)
    state = policy.initial_state(4)
    output, new_state = policy(random_obs(5, 4, generator), state, random_starts(5, 4, generator))
    layers = 0 if kind == "lstm" else 1
    spans = 1 if kind == "expire_span" else 0
    assert output.logits.shape == (5, 4, NUM_ACTIONS) and output.values.shape == (5, 4)
    assert output.aux_loss.shape == ()
    assert output.memory_alive.shape == (4, layers)
    assert output.span_mean.shape == (spans,) and output.spans.shape == (5, 4, spans)
    assert not output.span_mean.requires_grad and not output.memory_alive.requires_grad
    assert new_state.kind == kind and new_state.num_envs == 4
    if kind != "expire_span":
        assert output.aux_loss.item() == 0.0


def test_unknown_kind_and_key_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown policy kind 'gru'; allowed: expire_span"):
        make_policy("gru", OBS_SPACE, NUM_ACTIONS)
    with pytest.raises(ValueError, match="unknown config key 'max_span' for policy kind 'trxl'"):
        make_policy("trxl", OBS_SPACE, NUM_ACTIONS, max_span=10)


@pytest.mark.parametrize(
    ("kind", "config", "message"),
    [
        ("expire_span", {"max_span": 0}, r"max_span must be an integer >= 1, got 0"),
        ("expire_span", {"span_init": 1.0}, r"span_init must be a number in \(0.0, 1.0\), got 1.0"),
        ("expire_span", {"span_loss_coef": -0.1}, r"span_loss_coef must be a number in \[0.0, inf"),
        ("expire_span", {"ramp_length": 2.5}, r"ramp_length must be an integer >= 1, got 2.5"),
        ("expire_span", {"prune": 1}, r"prune must be True or False, got 1"),
        ("trxl", {"d_model": 30, "num_heads": 4}, r"d_model must be divisible by num_heads"),
        ("trxl", {"memory_size": -5}, r"memory_size must be an integer >= 1, got -5"),
        ("lstm", {"num_layers": 0}, r"num_layers must be an integer \[1, 64\], got 0"),
        (
            "lstm",
            {"actor_bias_init": [0.0, 1.0]},
            r"actor_bias_init must have one entry per action",
        ),
        ("lstm", {"actor_bias_init": "forward"}, r"actor_bias_init must be None or a list"),
    ],
)
def test_bad_config_values_are_refused(kind: str, config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_policy(kind, OBS_SPACE, NUM_ACTIONS, **config)


def test_unsupported_spaces_are_refused_by_name() -> None:
    for bad in (
        gym.spaces.Text(5),
        gym.spaces.Sequence(gym.spaces.Discrete(2)),
        gym.spaces.Graph(gym.spaces.Discrete(2), None),
    ):
        space = gym.spaces.Dict({"image": OBS_SPACE["image"], "extra": bad})
        with pytest.raises(ValueError, match="observation field 'extra' has unsupported space"):
            make_policy("lstm", space, NUM_ACTIONS)
    with pytest.raises(ValueError, match="num_actions must be an integer >= 1, got 0"):
        make_policy("lstm", OBS_SPACE, 0)


def test_flat_float_observations_are_supported() -> None:
    generator = torch.Generator().manual_seed(0)
    flat = gym.spaces.Box(-1.0, 1.0, (5,), dtype=np.float32)
    policy = make_policy("trxl", flat, 2, **CONFIGS["trxl"])
    output, _ = policy(
        torch.randn(4, 3, 5, generator=generator),
        policy.initial_state(3),
        torch.ones(4, 3, dtype=torch.bool),
    )
    assert output.logits.shape == (4, 3, 2)
    mixed = gym.spaces.Dict({"position": flat, "token": gym.spaces.Discrete(3, start=1)})
    policy = make_policy("lstm", mixed, 2, **CONFIGS["lstm"])
    obs = {
        "position": torch.randn(4, 3, 5, generator=generator),
        "token": torch.randint(1, 4, (4, 3), generator=generator),
    }
    output, _ = policy(obs, policy.initial_state(3), torch.ones(4, 3, dtype=torch.bool))
    assert torch.isfinite(output.values).all()


def test_actor_bias_init_sets_the_initial_policy() -> None:
    policy = make_policy("lstm", OBS_SPACE, NUM_ACTIONS, actor_bias_init=(0, 0, 2.0))
    generator = torch.Generator().manual_seed(0)
    output, _ = policy(
        random_obs(6, 2, generator), policy.initial_state(2), torch.ones(6, 2, dtype=torch.bool)
    )
    probs = output.logits.softmax(-1)
    assert (probs[..., 2] > 0.7).all()  # e^2 / (2 + e^2) = 0.79, give or take the weights


def test_param_groups_give_the_span_predictors_their_own_rate() -> None:
    policy = make_policy("expire_span", OBS_SPACE, NUM_ACTIONS, num_layers=2)
    main, span = policy.param_groups(lr=1e-3, span_lr_scale=0.1)
    assert span["name"] == "span" and span["lr"] == pytest.approx(1e-4)
    assert len(span["params"]) == 4  # a weight and a bias per layer
    grouped = [id(p) for group in (main, span) for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in policy.parameters())
    assert len(make_policy("trxl", OBS_SPACE, NUM_ACTIONS).param_groups(1e-3)) == 1


@pytest.mark.parametrize("kind", POLICY_KINDS)
def test_state_columns_snapshots_and_concatenation(kind: str) -> None:
    policy = build(kind)
    generator = torch.Generator().manual_seed(2)
    obs, starts = random_obs(30, 4, generator), random_starts(30, 4, generator, prob=0.1)
    _, _, state = run_chunks(policy, obs, starts, policy.initial_state(4), [9, 9])
    snapshot = state.clone()
    more_obs, more_starts = random_obs(5, 4, generator), random_starts(5, 4, generator, 0.2)
    more_starts[0] = False
    full, next_state = policy(more_obs, state, more_starts)
    for name, tensor in snapshot.tensors.items():  # forward never modifies its input state
        assert torch.equal(tensor, state.tensors[name])
    assert next_state.tensors is not state.tensors
    # Env columns can be run on their own, in any order, and concatenated back.
    columns = [2, 0]
    part, _ = policy(
        take(more_obs, (slice(None), columns)), state[columns], more_starts[:, columns]
    )
    torch.testing.assert_close(part.logits, full.logits[:, columns], rtol=0, atol=1e-10)
    single, _ = policy(
        take(more_obs, (slice(None), slice(3, 4))), state.select(3), more_starts[:, 3:]
    )
    torch.testing.assert_close(single.values, full.values[:, 3:], rtol=0, atol=1e-10)
    # States of different widths concatenate (padded with empty slots).
    narrow = run_chunks(policy, obs, starts, policy.initial_state(4), [3])[2]
    joined = State.cat([state[[0, 1]], narrow[[2, 3]]])
    assert joined.num_envs == 4
    reference, _ = policy(take(more_obs, (slice(None), [2, 3])), narrow[[2, 3]], more_starts[:, 2:])
    output, _ = policy(more_obs, joined, more_starts)
    torch.testing.assert_close(output.logits[:, 2:], reference.logits, rtol=0, atol=1e-10)
    torch.testing.assert_close(output.logits[:, :2], full.logits[:, :2], rtol=0, atol=1e-10)
    assert state.to("cpu").detach().device.type == "cpu"


def test_a_state_from_another_kind_is_refused() -> None:
    trxl, lstm = build("trxl"), build("lstm")
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="state of a 'lstm' policy given to a 'trxl' policy"):
        trxl(random_obs(2, 3, generator), lstm.initial_state(3), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="state has 2 envs, episode_starts 3"):
        trxl(random_obs(2, 3, generator), trxl.initial_state(2), torch.ones(2, 3, dtype=torch.bool))


@pytest.mark.parametrize("kind", POLICY_KINDS)
def test_save_and_load_give_identical_outputs(kind: str) -> None:
    policy = build(kind, gating=True) if kind != "lstm" else build(kind)
    generator = torch.Generator().manual_seed(3)
    obs, starts = random_obs(30, 3, generator), random_starts(30, 3, generator)
    _, _, state = run_chunks(policy, obs, starts, policy.initial_state(3), [11, 7])
    buffer = io.BytesIO()
    torch.save(
        {"model": policy.state_dict(), "config": policy.config_dict(), "state": state.state_dict()},
        buffer,
    )
    buffer.seek(0)
    checkpoint = torch.load(buffer)
    restored = make_policy(kind, OBS_SPACE, NUM_ACTIONS, **checkpoint["config"]).double().eval()
    restored.load_state_dict(checkpoint["model"])
    restored_state = State.from_state_dict(checkpoint["state"], device="cpu")
    tail = take(obs, slice(18, None))
    expected = policy(tail, state, starts[18:])[0]
    actual = restored(tail, restored_state, starts[18:])[0]
    assert torch.equal(expected.logits, actual.logits)
    assert torch.equal(expected.values, actual.values)


def test_the_egocentric_view_puts_what_the_agent_faces_in_one_fixed_cell() -> None:
    from envs.core import BALL, DIR_TO_VEC, FORWARD
    from policies.encoder import egocentric_view

    # Marked windows: the cell ahead and the cell to the left land in the same place whatever
    # the heading (a turn, never a mirror image).
    ahead, left = set(), set()
    for heading, (dx, dy) in enumerate(DIR_TO_VEC):
        image = torch.zeros(7, 7, 3, dtype=torch.uint8)
        image[3, 3, 2] = heading
        image[3 + dx, 3 + dy, 0] = 9
        image[3 + dy, 3 - dx, 0] = 7  # the heading turned a quarter to the left
        turned = egocentric_view(image[None])[0]
        ahead.add(tuple((turned[..., 0] == 9).nonzero()[0].tolist()))
        left.add(tuple((turned[..., 0] == 7).nonzero()[0].tolist()))
    assert len(ahead) == 1 and len(left) == 1 and ahead != left

    # On the instruction task: whenever stepping forward reaches a ball, that ball is in the
    # fixed cell ahead of the turned view, and only then.
    env = envs.make_batched("instruction", 256, seed=0, view_size=7)
    obs = env.reset(seed=0)
    generator = torch.Generator().manual_seed(0)
    (row, column), = ahead
    for _ in range(30):
        front = env.cell + env.step_offset[env.direction]
        blocker = env.blocker.gather(1, front[:, None]).squeeze(1).long()
        facing_ball = (blocker > 0) & (blocker != env.WALL_CODE)
        turned = egocentric_view(obs["image"])
        assert torch.equal(turned[:, row, column, 0] == BALL, facing_ball)
        actions = torch.randint(0, 3, (256,), generator=generator)
        actions[facing_ball] = FORWARD - 1  # turn away, so that the view keeps changing
        obs = env.step(actions)[0]


def test_an_egocentric_policy_reads_the_turned_view() -> None:
    from policies.encoder import egocentric_view

    space = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (5, 5, 3), dtype=np.uint8)})
    policy = make_policy("lstm", space, 3, egocentric=True)
    plain = make_policy("lstm", space, 3)
    plain.load_state_dict(policy.state_dict())
    image = torch.randint(0, 4, (2, 3, 5, 5, 3), dtype=torch.uint8)
    image[..., 2, 2, 2] = torch.randint(0, 4, (2, 3), dtype=torch.uint8)  # the headings
    starts = torch.ones(2, 3, dtype=torch.bool)
    turned = policy({"image": image}, policy.initial_state(3), starts)[0].logits
    by_hand = plain({"image": egocentric_view(image)}, plain.initial_state(3), starts)[0].logits
    assert torch.equal(turned, by_hand)
    assert not torch.allclose(turned, plain({"image": image}, plain.initial_state(3),
                                            starts)[0].logits)  # fmt: skip
    with pytest.raises(ValueError, match="egocentric must be True or False"):
        make_policy("lstm", space, 3, egocentric="yes")
