"""ObservationEncoder: the spaces it reads, and the suite's own spaces read as before."""

from __future__ import annotations

import hashlib

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs
from envs.core import image_space
from envs.last_step import LastStepEnv
from policies import ObservationEncoder, make_policy
from policies.encoder import SINGLE_KEY, Embedding, flatten_observation, flatten_space

Tensor = torch.Tensor
T, B = 3, 2
SIZES = {"d_model": 8, "hidden": 16, "cell_embed_dim": 4, "token_embed_dim": 4}

CORRIDOR_SPACE = gym.spaces.Dict({
    "image": image_space(3),  # minigrid cell codes, bounded by the largest code per channel
    "last_action": gym.spaces.Discrete(4),
    "last_reward": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32),
})  # fmt: skip
"""The corridor's observation space with ``--last-action-reward``: cells, a token, a float."""


def weights_hash(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def corridor_obs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    channels = [torch.randint(0, high, (T, B, 3, 3), generator=generator) for high in (11, 6, 4)]
    return {
        "image": torch.stack(channels, -1).to(torch.uint8),
        "last_action": torch.randint(0, 4, (T, B), generator=generator),
        "last_reward": torch.randn(T, B, 1, generator=generator),
    }


def seeded_encoder(space: gym.Space, seed: int = 0, **sizes: int) -> ObservationEncoder:
    torch.manual_seed(seed)
    return ObservationEncoder(space, **{**SIZES, **sizes})


def test_seeded_policies_on_the_suites_spaces_are_unchanged():
    # Recorded before MultiDiscrete, Dict, Tuple and Box-of-any-rank support was added: a
    # seeded policy must keep its parameter names, creation order and initial weights, so
    # runs trained before still load and new runs of the suite's tasks stay reproducible.
    corridor = LastStepEnv(envs.make_batched("corridor", 1, seed=0))
    assert corridor.single_observation_space == CORRIDOR_SPACE
    torch.manual_seed(0)
    policy = make_policy("expire_span", CORRIDOR_SPACE, 3)
    assert [name for name, _ in policy.encoder.named_parameters()] == [
        "fields.0.object.weight", "fields.0.color.weight", "fields.0.state.weight",
        "fields.1.embedding.weight", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias",
    ]  # fmt: skip
    assert weights_hash(policy.encoder) == "591082da62e4f705"
    with torch.no_grad():
        encoded = policy.encoder(corridor_obs())
    expected = [0.22955705225467682, -0.1782037317752838, -0.24687567353248596,
                -0.04434400424361229]  # fmt: skip
    torch.testing.assert_close(encoded[0, 0, :4], torch.tensor(expected))
    assert encoded.sum().item() == pytest.approx(24.154674530029297, rel=1e-5)
    # Building the encoder draws as many random numbers as before, so everything built after
    # it (core, heads) is initialised as before too.
    cases = [
        (CORRIDOR_SPACE, 1, {"egocentric": True}, "8f17b739c79b83bf",
         [0.15784597396850586, 0.8156903386116028, 0.8385005593299866]),
        (gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (7, 7, 3), np.uint8),
                          "instruction": gym.spaces.Discrete(7)}), 1, {}, "11db278ed726e875",
         [0.8652103543281555, 0.1594783067703247, 0.7206587791442871]),
        (gym.spaces.Box(-1, 1, (4,), np.float32), 2, {}, "d924e1cb37548a72",
         [0.5736506581306458, 0.34447067975997925, 0.6369056105613708]),
    ]  # fmt: skip
    for space, seed, options, digest, next_draws in cases:
        encoder = seeded_encoder(space, seed, **options)
        assert weights_hash(encoder) == digest, space
        assert torch.rand(3).tolist() == next_draws, space


def test_nested_spaces_are_flattened_to_dotted_keys():
    inner = gym.spaces.Dict({"c": gym.spaces.Discrete(3)})
    space = gym.spaces.Dict({
        "b": gym.spaces.Tuple((gym.spaces.Discrete(2), inner)),
        "a": gym.spaces.MultiBinary(2),
    })  # fmt: skip
    assert list(flatten_space(space)) == ["a", "b.0", "b.1.c"]
    assert list(flatten_space(gym.spaces.Tuple((gym.spaces.Discrete(2),) * 2))) == ["0", "1"]
    assert list(flatten_space(gym.spaces.Discrete(2))) == [SINGLE_KEY]
    nested = {"a": torch.zeros(T, B, 2), "b": (torch.ones(T, B), {"c": torch.full((T, B), 2)})}
    flat = flatten_observation(space, nested)
    assert list(flat) == ["a", "b.0", "b.1.c"] and torch.equal(flat["b.1.c"], nested["b"][1]["c"])
    encoder = seeded_encoder(space)
    # Nested observations (as the env gives them) and flat ones (as GymBatchedEnv gives them)
    # are the same input.
    torch.testing.assert_close(encoder(nested), encoder(flat), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"missing field 'b\.1\.c'"):
        encoder({"a": nested["a"], "b": (nested["b"][0], {})})
    clash = gym.spaces.Dict({"a": gym.spaces.Dict({"b": gym.spaces.Discrete(2)}),
                             "a.b": gym.spaces.Discrete(2)})  # fmt: skip
    with pytest.raises(ValueError, match=r"two fields named 'a\.b'"):
        flatten_space(clash)


def test_multi_discrete_reads_every_component_from_its_own_rows():
    space = gym.spaces.MultiDiscrete([[2, 3], [4, 2]], start=[[1, 0], [-2, 5]])
    encoder = seeded_encoder(space)
    assert encoder.fields[0].embedding.num_embeddings == 2 + 3 + 4 + 2
    low = torch.as_tensor(space.start).expand(T, B, 2, 2)
    high = low + torch.as_tensor(space.nvec) - 1
    base = encoder(low)
    assert base.shape == (T, B, SIZES["d_model"])
    for index in np.ndindex(2, 2):
        changed = low.clone()
        changed[(..., *index)] = high[(..., *index)]
        assert not torch.allclose(encoder(changed), base), index
    # Equal values in two components are different tokens: each has its own block of rows.
    flat = seeded_encoder(gym.spaces.MultiDiscrete([3, 3]))
    table = flat.fields[0].embedding.weight
    tokens = flat.fields[0](torch.ones(1, 1, 2, dtype=torch.long))
    torch.testing.assert_close(tokens[0, 0], torch.cat([table[1], table[4]]))


def test_boxes_of_any_rank_are_read_as_flat_float_vectors():
    generator = torch.Generator().manual_seed(0)
    vector = gym.spaces.Box(-5, 5, (24,), np.float32)
    cases = [
        # space, observation of it, the same observation as the float vector it stands for
        (gym.spaces.Box(-5, 5, (2, 3, 4), np.float32),
         torch.randn(T, B, 2, 3, 4, generator=generator), lambda x: x.reshape(T, B, 24)),
        (gym.spaces.Box(0, 255, (4, 6), np.uint8),  # pixels: scaled to [0, 1]
         torch.randint(0, 256, (T, B, 4, 6), generator=generator, dtype=torch.uint8),
         lambda x: x.reshape(T, B, 24).float() / 255),
        (gym.spaces.Box(-3, 3, (24,), np.int16),  # other integers: as they are
         torch.randint(-3, 4, (T, B, 24), generator=generator, dtype=torch.int16),
         lambda x: x.float()),
        (gym.spaces.MultiBinary(24), torch.randint(0, 2, (T, B, 24), generator=generator,
                                                   dtype=torch.int8), lambda x: x.float()),
    ]  # fmt: skip
    for space, obs, as_vector in cases:
        # Same seed, same parameter shapes: the encoders differ only in how they read.
        torch.testing.assert_close(seeded_encoder(space)(obs),
                                   seeded_encoder(vector)(as_vector(obs)))  # fmt: skip


@pytest.mark.parametrize(
    ("space", "message"),
    [
        (gym.spaces.Text(5), r"unsupported observation space Text"),
        (gym.spaces.Dict({"a": gym.spaces.Discrete(2), "b": gym.spaces.Sequence(
            gym.spaces.Discrete(2))}), r"observation field 'b' has unsupported space Sequence"),
        (gym.spaces.Tuple((gym.spaces.Graph(gym.spaces.Discrete(2), None),)),
         r"observation field '0' has unsupported space Graph"),
    ],
)  # fmt: skip
def test_unreadable_spaces_are_refused_by_name(space: gym.Space, message: str):
    with pytest.raises(ValueError, match=message) as error:
        seeded_encoder(space)
    assert "; allowed: Discrete(n), MultiDiscrete(nvec)" in str(error.value)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="has no field"):
        seeded_encoder(gym.spaces.Dict({}))


def test_embedding_gradient_is_torch_embeddings_bit_for_bit() -> None:
    # Over 3072 indices: torch's CPU backward then takes its own loop instead of index_add_.
    generator = torch.Generator().manual_seed(4)
    index = torch.randint(0, 11, (64, 16, 3, 3), generator=generator)
    upstream = torch.randn(64, 16, 3, 3, 8, generator=generator)
    ours, reference = Embedding(11, 8), torch.nn.Embedding(11, 8)
    reference.load_state_dict(ours.state_dict())
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            for table in (ours, reference):
                table.zero_grad()
                (table(index) * upstream).sum().backward()
        finally:
            torch.set_num_threads(1)  # the suite's setting (conftest)
        assert torch.equal(ours(index), reference(index))
        assert torch.equal(ours.weight.grad, reference.weight.grad)


EVERY_KIND = gym.spaces.Dict({
    "image": image_space(3),
    "token": gym.spaces.Discrete(5, start=2),
    "tokens": gym.spaces.MultiDiscrete([3, 4], start=[1, 0]),
    "flags": gym.spaces.MultiBinary(3),
    "bounded": gym.spaces.Box(-2.0, 6.0, (2,), np.float32),
    "unbounded": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32),
})  # fmt: skip
"""One field of every kind the decoder reads, and one (an unbounded Box) it leaves out."""


def sample_batch(space: gym.spaces.Dict, steps: int, columns: int, seed: int) -> dict[str, Tensor]:
    """``steps`` x ``columns`` samples of ``space`` as [T, B, ...] tensors."""
    space.seed(seed)
    samples = [space.sample() for _ in range(steps * columns)]
    return {key: torch.as_tensor(np.stack([s[key] for s in samples])).view(
        steps, columns, *space[key].shape) for key in space.spaces}  # fmt: skip


def test_the_decoder_learns_every_field_it_reads_and_skips_unbounded_boxes():
    from policies.encoder import ObservationDecoder

    torch.manual_seed(0)
    decoder = ObservationDecoder(EVERY_KIND, d_model=32, hidden=64)
    assert sorted(decoder.targets) == ["bounded", "flags", "image", "token", "tokens"]
    obs = sample_batch(EVERY_KIND, 16, 1, seed=1)
    # Features that tell the samples apart: the decoder alone must learn to read them back.
    features = torch.eye(32)[:16, None]  # [16, 1, 32]
    optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-2)
    first = decoder.loss(features, obs).item()
    for _ in range(300):
        optimizer.zero_grad()
        loss = decoder.loss(features, obs)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.02 * first  # every field, the chance-level cells included


def test_reconstruction_is_part_of_the_training_loss_only():
    space = envs.make_batched("corridor", 1).single_observation_space
    obs = sample_batch(space, T, B, seed=2)
    starts = torch.zeros(T, B, dtype=torch.bool)
    plain = make_policy("lstm", space, 3, d_model=8)
    assert plain.decoder is None
    policy = make_policy("lstm", space, 3, d_model=8, reconstruction_coef=0.5)
    output, _ = policy(obs, policy.initial_state(B), starts)
    expected = 0.5 * policy.decoder.loss(
        policy.core(policy.encoder(obs), policy.initial_state(B).tensors, starts).features, obs)
    torch.testing.assert_close(output.aux_loss, expected)
    output.aux_loss.backward()
    assert policy.encoder.mlp[0].weight.grad.abs().sum() > 0  # it trains the encoder too
    with torch.no_grad():  # a rollout step: no decoder at all
        assert policy(obs, policy.initial_state(B), starts)[0].aux_loss.item() == 0.0
