"""Every core: chunked = streamed (with random episode starts), and episodes are isolated."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from test_policies_interface import build, random_obs, random_starts, run_chunks, take

from policies.state import DERIVED_PREFIX

VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("expire_span", {}),
    ("expire_span", {"num_layers": 2, "gating": True, "compact_interval": 1}),
    ("trxl", {}),
    ("trxl", {"num_layers": 2, "gating": True}),
    ("lstm", {}),
    ("lstm", {"num_layers": 2}),
]
IDS = [f"{kind}-{i}" for i, (kind, _) in enumerate(VARIANTS)]
NUM_STEPS, NUM_ENVS = 40, 3
TOLERANCE = {"rtol": 0, "atol": 1e-10}


def one_call(kind: str, overrides: dict, seed: int) -> tuple[Any, ...]:
    """A policy, random inputs, its initial state, and its logits and values from one call
    over all the steps (with autograd)."""
    policy = build(kind, **overrides)
    generator = torch.Generator().manual_seed(seed)
    obs = random_obs(NUM_STEPS, NUM_ENVS, generator)
    starts = random_starts(NUM_STEPS, NUM_ENVS, generator)
    initial = policy.initial_state(NUM_ENVS)
    logits, values, _ = run_chunks(policy, obs, starts, initial, [NUM_STEPS])
    return policy, obs, starts, initial, logits, values


@pytest.mark.parametrize(("kind", "overrides"), VARIANTS, ids=IDS)
def test_one_call_equals_streaming_and_any_chunking(kind: str, overrides: dict) -> None:
    policy, obs, starts, initial, logits, values = one_call(kind, overrides, seed=10)
    for sizes in ([1] * NUM_STEPS, [7, 1, 13, 2, 17]):
        chunk_logits, chunk_values, _ = run_chunks(policy, obs, starts, initial, sizes)
        torch.testing.assert_close(chunk_logits, logits, **TOLERANCE)
        torch.testing.assert_close(chunk_values, values, **TOLERANCE)


@pytest.mark.parametrize(("kind", "overrides"), VARIANTS, ids=IDS)
def test_streaming_without_autograd_reuses_cached_keys_exactly(kind: str, overrides: dict) -> None:
    """Without autograd the transformer cores carry their memories' keys, values and spans
    in the state (``derived_*``) instead of recomputing them: the outputs are the same."""
    policy, obs, starts, initial, logits, values = one_call(kind, overrides, seed=12)
    with torch.no_grad():
        stream_logits, stream_values, state = run_chunks(policy, obs, starts, initial,
                                                         [1] * NUM_STEPS)
    torch.testing.assert_close(stream_logits, logits, **TOLERANCE)
    torch.testing.assert_close(stream_values, values, **TOLERANCE)
    derived = [name for name in state.tensors if name.startswith(DERIVED_PREFIX)]
    assert bool(derived) == (kind != "lstm")
    assert not any(name.startswith(DERIVED_PREFIX) for name in state.fresh().tensors)


@pytest.mark.parametrize("kind", ["expire_span", "trxl"])
def test_fresh_state_recomputes_caches_after_a_parameter_change(kind: str) -> None:
    policy = build(kind)
    generator = torch.Generator().manual_seed(13)
    obs = random_obs(NUM_STEPS, NUM_ENVS, generator)
    starts = random_starts(NUM_STEPS, NUM_ENVS, generator, prob=0.0)
    half = NUM_STEPS // 2
    with torch.no_grad():
        _, _, state = run_chunks(policy, take(obs, slice(0, half)), starts[:half],
                                 policy.initial_state(NUM_ENVS), [1] * half)
        for param in policy.parameters():  # a learner's update
            param.add_(0.05)
        rest = take(obs, slice(half, None))
        fresh, _, _ = run_chunks(policy, rest, starts[half:], state.fresh(), [1] * half)
        stale, _, _ = run_chunks(policy, rest, starts[half:], state, [1] * half)
    expected, _, _ = run_chunks(policy, rest, starts[half:], state.fresh(), [half])  # autograd
    torch.testing.assert_close(fresh, expected, **TOLERANCE)
    assert not torch.allclose(stale, expected)  # what `fresh` is there for


@pytest.mark.parametrize(("kind", "overrides"), VARIANTS, ids=IDS)
def test_nothing_before_an_episode_start_is_seen(kind: str, overrides: dict) -> None:
    policy = build(kind, **overrides)
    generator = torch.Generator().manual_seed(11)
    obs = random_obs(NUM_STEPS, NUM_ENVS, generator)
    starts = torch.zeros(NUM_STEPS, NUM_ENVS, dtype=torch.bool)
    starts[0] = True
    starts[25, 0] = starts[31, 1] = True  # env 2 runs one episode throughout
    initial = policy.initial_state(NUM_ENVS)
    # The start at 25 falls inside the second chunk: the first chunk's memories come in
    # through the state, the second chunk's first steps through the chunk itself.
    logits, values, _ = run_chunks(policy, obs, starts, initial, [20, 20])
    other = random_obs(NUM_STEPS, NUM_ENVS, generator)
    replaced = {key: value.clone() for key, value in obs.items()}
    for key in obs:
        replaced[key][:25, 0] = other[key][:25, 0]
        replaced[key][:31, 1] = other[key][:31, 1]
        replaced[key][:5, 2] = other[key][:5, 2]
    new_logits, new_values, _ = run_chunks(policy, replaced, starts, initial, [20, 20])
    torch.testing.assert_close(new_logits[25:, 0], logits[25:, 0], **TOLERANCE)
    torch.testing.assert_close(new_values[31:, 1], values[31:, 1], **TOLERANCE)
    # The test is not vacuous: the replaced steps themselves did change the outputs.
    assert not torch.allclose(new_logits[:25, 0], logits[:25, 0])
    assert not torch.allclose(new_values[5:8, 2], values[5:8, 2])


def test_trxl_sees_exactly_the_last_memory_size_steps() -> None:
    policy = build("trxl", num_layers=1)  # one layer: the receptive field is the window
    memory_size = policy.config.memory_size
    generator = torch.Generator().manual_seed(12)
    obs = random_obs(20, 1, generator)
    starts = random_starts(20, 1, generator, prob=0.0)
    initial = policy.initial_state(1)
    logits, _, _ = run_chunks(policy, obs, starts, initial, [5, 15])
    changed = {key: value.clone() for key, value in obs.items()}
    changed["instruction"][3] = (obs["instruction"][3] + 1) % 7
    new_logits, _, _ = run_chunks(policy, changed, starts, initial, [5, 15])
    window = slice(3, 3 + memory_size + 1)  # queries t with t - 3 <= M
    assert (new_logits[window] - logits[window]).abs().amax(dim=-1).gt(1e-6).all()
    torch.testing.assert_close(
        new_logits[3 + memory_size + 1 :], logits[3 + memory_size + 1 :], **TOLERANCE
    )


@pytest.mark.parametrize("kind", ["expire_span", "trxl"])
def test_the_slot_buffer_stays_bounded(kind: str) -> None:
    policy = build(kind)
    generator = torch.Generator().manual_seed(13)
    obs, starts = random_obs(60, 2, generator), random_starts(60, 2, generator, prob=0.0)
    state = policy.initial_state(2)
    config = policy.config
    longest = config.max_span + config.ramp_length if kind == "expire_span" else config.memory_size
    for t in range(60):
        output, state = policy(take(obs, slice(t, t + 1)), state, starts[t : t + 1])
        width = state.tensors["memory_0"].shape[1]
        assert width <= longest + 2 * config.compact_interval
        assert output.memory_alive.max().item() <= min(t + 1, longest)
        live = state.tensors["memory_valid_0"].sum(dim=1)  # [B]
        assert live.tolist() == output.memory_alive[:, 0].tolist()
