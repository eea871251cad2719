"""Expire-Span: the mask maths against the paper's formulas, exact pruning, span gradients."""

from __future__ import annotations

import math

import pytest
import torch
from test_policies_interface import build, random_obs, random_starts, run_chunks, take

from policies import MemoryPolicy, expire_span_mask
from policies.expire_span import expire_span_log_mask
from policies.transformer import relative_position_bucket

TOLERANCE = {"rtol": 0, "atol": 1e-10}


def paper_reference(
    policy: MemoryPolicy, obs: dict, starts: torch.Tensor, span_limit: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [T, B, A] and spans [T, B] of a one-layer Expire-Span policy, written like the
    paper: every step t of env b attends to all steps i of its episode with i <= t, with
    e_i = L_max σ(w·LN(h_i)/K + b), m_ti = clamp(1 + (e_i - (t - i))/R, 0, 1), and attention
    weights multiplied by m and renormalised. No cache, no pruning, no chunks."""
    core, config = policy.core, policy.config
    block, predictor = core.blocks[0], core.span_predictors[0]
    heads, head_dim = config.num_heads, config.d_model // config.num_heads
    h = policy.encoder(obs)  # [T, B, D] layer inputs
    centred = h - h.mean(-1, keepdim=True)
    normed = centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + 1e-5)
    w, bias = predictor.linear.weight[0], predictor.linear.bias[0]
    spans = config.max_span * torch.sigmoid(normed @ w / config.span_pre_div + bias)  # [T, B]
    num_steps, num_envs, _ = h.shape
    logits = torch.empty(num_steps, num_envs, policy.num_actions, dtype=h.dtype)
    for b in range(num_envs):
        episode_start = 0
        for t in range(num_steps):
            if starts[t, b]:
                episode_start = t
            steps = torch.arange(episode_start, t + 1)
            e = spans[steps, b] if span_limit is None else spans[steps, b].clamp(max=span_limit)
            remaining = e - (t - steps)
            mask = torch.clamp(1 + remaining / config.ramp_length, 0, 1)  # [i]
            keys_in = block.norm_attn(h[steps, b])  # [i, D]
            query = block.query(block.norm_attn(h[t, b])).view(heads, head_dim)
            key, value = block.key_value(keys_in).view(len(steps), 2, heads, head_dim).unbind(1)
            buckets = relative_position_bucket(
                t - steps, config.position_buckets, config.max_span + config.ramp_length
            )
            scores = torch.einsum("hd,ihd->hi", query, key) / math.sqrt(head_dim)
            scores = scores + block.position_bias[:, buckets]  # [H, i]
            weights = torch.softmax(scores, dim=-1) * mask
            weights = weights / weights.sum(-1, keepdim=True)
            attended = torch.einsum("hi,ihd->hd", weights, value).reshape(-1)
            x = h[t, b] + block.out(attended)
            x = x + block.ff(block.norm_ff(x))
            logits[t, b] = policy.actor(core.final_norm(x))
    return logits, spans


def test_soft_mask_follows_the_formula() -> None:
    spans = torch.tensor([0.0, 2.5, 7.0])
    for distance in range(12):
        mask = expire_span_mask(spans, torch.tensor(distance), ramp_length=4)
        for i, e in enumerate(spans.tolist()):
            expected = min(max(1 + (e - distance) / 4, 0.0), 1.0)
            assert mask[i].item() == expected


def composed_log_mask(
    spans: torch.Tensor, distance: torch.Tensor, visible: torch.Tensor, ramp_length: int,
    ramp_growth: float = 0.0,
) -> torch.Tensor:  # fmt: skip
    """The log mask as plain autograd ops: m, then log m where visible and m > 0."""
    mask = expire_span_mask(spans[:, None, :], distance, ramp_length, ramp_growth)
    attended = visible & (mask > 0)
    return torch.where(attended, mask.clamp(min=torch.finfo(mask.dtype).tiny).log(), -math.inf)


def test_fused_log_mask_is_the_composed_ops_bit_for_bit() -> None:
    generator = torch.Generator().manual_seed(3)
    batch, steps, keys, ramp = 4, 9, 30, 8
    # Spans around the distances, with exact hits on the ramp's ends (m = 0 and m = 1 exactly)
    # and saturated spans.
    spans = torch.rand(batch, keys, generator=generator) * 40
    spans[:, :6] = torch.tensor([0.0, 8.0, 16.0, 40.0, 7.5, 1.0])
    distance = torch.randint(0, 40, (batch, steps, keys), generator=generator)
    distance[:, :, :6] = torch.tensor([8, 8, 16, 40, 0, 9])
    visible = torch.rand(batch, steps, keys, generator=generator) < 0.8
    upstream = torch.randn(batch, steps, keys, generator=generator)
    results = []
    for log_mask_of in (composed_log_mask,
                        expire_span_log_mask):
        leaf = spans.clone().requires_grad_()
        log_mask = log_mask_of(leaf, distance, visible, ramp)
        # -inf entries take no gradient; elsewhere the upstream gradient
        (torch.where(log_mask.isfinite(), log_mask, 0) * upstream).sum().backward()
        results.append((log_mask.detach(), leaf.grad))
    (composed, composed_grad), (fused, fused_grad) = results
    assert torch.equal(composed, fused)
    assert torch.equal(composed_grad, fused_grad)
    with torch.no_grad():  # the path without autograd
        assert torch.equal(expire_span_log_mask(spans, distance, visible, ramp), composed)
    assert (composed_grad != 0).any() and torch.isinf(composed).any()


def test_growing_ramp_follows_the_formula_and_its_gradient() -> None:
    # r = 1 + (e - d) / (R + ρ·e): the mask, and the fused backward against autograd through it.
    generator = torch.Generator().manual_seed(4)
    batch, steps, keys, ramp, growth = 3, 7, 25, 4, 0.25
    spans = torch.rand(batch, keys, generator=generator) * 60
    distance = torch.randint(0, 80, (batch, steps, keys), generator=generator)
    visible = torch.rand(batch, steps, keys, generator=generator) < 0.8
    mask = expire_span_mask(spans[:, None, :], distance, ramp, growth)
    expected = (1 + (spans[:, None, :] - distance) / (ramp + growth * spans[:, None, :]))
    torch.testing.assert_close(mask, expected.clamp(0, 1))
    upstream = torch.randn(batch, steps, keys, generator=generator)
    results = []
    for fused in (False, True):
        leaf = spans.clone().requires_grad_()
        log_mask_of = expire_span_log_mask if fused else composed_log_mask
        log_mask = log_mask_of(leaf, distance, visible, ramp, growth)
        (torch.where(log_mask.isfinite(), log_mask, 0) * upstream).sum().backward()
        results.append((log_mask.detach(), leaf.grad))
    (composed, composed_grad), (fused, fused_grad) = results
    assert torch.equal(composed.isinf(), fused.isinf())
    torch.testing.assert_close(fused, composed)
    torch.testing.assert_close(fused_grad, composed_grad)
    on_ramp = (mask > 0) & (mask < 1)
    assert on_ramp.any() and (composed_grad != 0).any()


def test_chunked_core_matches_the_paper_formulas() -> None:
    policy = build("expire_span")  # one layer, L_max 10, R 3: most memories expire
    generator = torch.Generator().manual_seed(20)
    obs, starts = random_obs(36, 3, generator), random_starts(36, 3, generator, prob=0.1)
    with torch.no_grad():
        expected_logits, expected_spans = paper_reference(policy, obs, starts)
        state, sizes, begin = policy.initial_state(3), [5, 1, 12, 3, 15], 0
        for size in sizes:
            steps = slice(begin, begin + size)
            output, state = policy(take(obs, steps), state, starts[steps])
            torch.testing.assert_close(output.logits, expected_logits[steps], **TOLERANCE)
            torch.testing.assert_close(output.spans[..., 0], expected_spans[steps], **TOLERANCE)
            alpha = policy.config.span_loss_coef
            torch.testing.assert_close(output.aux_loss, alpha * expected_spans[steps].mean())
            begin += size
    assert expected_spans.min() < 1 and expected_spans.max() > 9  # spans really vary


def test_random_shortening_clamps_spans_to_one_draw_per_forward() -> None:
    policy = build("expire_span", span_shortening=True, max_span=20).train()
    generator = torch.Generator().manual_seed(21)
    obs, starts = random_obs(25, 2, generator), random_starts(25, 2, generator)
    torch.manual_seed(7)
    limit = torch.rand((), dtype=torch.float64).item() * 20
    assert limit < 6  # a draw that clamps many spans
    torch.manual_seed(7)
    with torch.no_grad():
        output, _ = policy(obs, policy.initial_state(2), starts)
        expected, spans = paper_reference(policy, obs, starts, span_limit=limit)
        unshortened, _ = paper_reference(policy, obs, starts)
    torch.testing.assert_close(output.logits, expected, **TOLERANCE)
    torch.testing.assert_close(output.spans[..., 0], spans, **TOLERANCE)  # reported unclamped
    assert not torch.allclose(output.logits, unshortened)
    policy.eval()  # no shortening outside training
    eval_output, _ = policy(obs, policy.initial_state(2), starts)
    torch.testing.assert_close(eval_output.logits, unshortened, **TOLERANCE)


@pytest.mark.parametrize("ramp_growth", [0.0, 0.5])
def test_dropping_expired_memories_is_exact(ramp_growth: float) -> None:
    overrides = {"num_layers": 2, "max_span": 12, "compact_interval": 2,
                 "ramp_growth": ramp_growth}  # fmt: skip
    pruned, kept = build("expire_span", **overrides), build("expire_span", prune=False, **overrides)
    generator = torch.Generator().manual_seed(22)
    obs, starts = random_obs(80, 3, generator), random_starts(80, 3, generator, prob=0.03)
    sizes = [1] * 10 + [9, 20, 1, 1, 1, 17, 1, 20]
    logits, values, pruned_state = run_chunks(pruned, obs, starts, pruned.initial_state(3), sizes)
    kept_logits, kept_values, kept_state = run_chunks(
        kept, obs, starts, kept.initial_state(3), sizes
    )
    torch.testing.assert_close(logits, kept_logits, **TOLERANCE)
    torch.testing.assert_close(values, kept_values, **TOLERANCE)
    for layer in range(2):
        assert kept_state.tensors[f"memory_{layer}"].shape[1] == 80
        live = pruned_state.tensors[f"memory_valid_{layer}"].sum(dim=1)
        width = pruned_state.tensors[f"memory_{layer}"].shape[1]
        # At most e + R + ρ·e alive, e < L_max.
        assert width <= 12 * (1 + ramp_growth) + 3 + 20 + 2
        assert live.max() < 12 * (1 + ramp_growth) + 4


def test_memory_follows_the_spans_not_max_span() -> None:
    # L_max = 1000 but spans are 1 % of it: memories of ages 1 .. e + R - 1 = 12 stay alive.
    policy = build("expire_span", max_span=1000, span_init=0.01, compact_interval=8)
    with torch.no_grad():
        policy.core.span_predictors[0].linear.weight.zero_()
    generator = torch.Generator().manual_seed(23)
    obs, starts = random_obs(200, 2, generator), random_starts(200, 2, generator, prob=0.0)
    state = policy.initial_state(2)
    for begin in range(0, 200, 25):
        output, state = policy(
            take(obs, slice(begin, begin + 25)), state, starts[begin : begin + 25]
        )
        assert state.tensors["memory_0"].shape[1] <= 24
    assert output.memory_alive.tolist() == [[12.0]] * output.memory_alive.shape[0]
    torch.testing.assert_close(output.span_mean, torch.tensor([10.0], dtype=torch.float64))


def _spans_of_one_forward(policy: MemoryPolicy, obs: dict, starts: torch.Tensor):
    captured = []

    def keep_spans(module: torch.nn.Module, args: tuple, spans: torch.Tensor) -> None:
        spans.retain_grad()
        captured.append(spans)

    hook = policy.core.span_predictors[0].register_forward_hook(keep_spans)
    output, _ = policy(obs, policy.initial_state(starts.shape[1]), starts)
    hook.remove()
    return output, captured[0]  # spans [B, N] of the layer's keys


def test_task_gradient_reaches_exactly_the_memories_on_the_ramp() -> None:
    policy = build("expire_span", max_span=30, ramp_length=4)
    generator = torch.Generator().manual_seed(24)
    obs, starts = random_obs(24, 2, generator), random_starts(24, 2, generator, prob=0.0)
    output, spans = _spans_of_one_forward(policy, obs, starts)
    task_loss = (
        output.logits * torch.randn(output.logits.shape, generator=generator, dtype=torch.float64)
    ).sum() + output.values.sum()
    task_loss.backward()
    # Memory i is on the ramp if some query t >= i has 0 < m_ti < 1.
    distance = torch.arange(24)[:, None] - torch.arange(24)[None, :]  # [t, i]
    mask = expire_span_mask(spans.detach()[:, None, :], distance, 4)  # [B, t, i]
    on_ramp = ((mask > 0) & (mask < 1) & (distance >= 0)).any(dim=1)  # [B, i]
    assert on_ramp.any() and (~on_ramp).any()
    assert (spans.grad[on_ramp].abs() > 0).all()
    assert (spans.grad[~on_ramp] == 0).all()
    assert policy.core.span_predictors[0].linear.weight.grad.abs().sum() > 0


def test_an_undetached_span_input_lets_the_span_loss_move_the_representation() -> None:
    """``detach_span_input=False`` is the paper's predictor (it reads h_i itself): there the
    span loss reaches the encoder too; the default keeps it on the predictors alone."""
    generator = torch.Generator().manual_seed(26)
    obs, starts = random_obs(12, 3, generator), random_starts(12, 3, generator)
    for detach in (True, False):
        policy = build("expire_span", max_span=50, detach_span_input=detach)
        output, _ = policy(obs, policy.initial_state(3), starts)
        output.aux_loss.backward()
        encoder_grad = sum(p.grad.abs().sum() for p in policy.encoder.parameters()
                           if p.grad is not None)  # fmt: skip
        assert bool(encoder_grad > 0) is (not detach)


def test_span_loss_pushes_spans_down_and_is_normalised() -> None:
    policy = build("expire_span", num_layers=2, max_span=50)
    generator = torch.Generator().manual_seed(25)
    obs, starts = random_obs(12, 3, generator), random_starts(12, 3, generator)
    output, _ = policy(obs, policy.initial_state(3), starts)
    output.aux_loss.backward()
    span_ids = {id(p) for p in policy.span_parameters()}
    # The span loss moves only the predictors (their input is detached): no other parameter
    # gets a non-zero gradient.
    others = [p for p in policy.parameters() if id(p) not in span_ids]
    assert all(p.grad is None or not p.grad.any() for p in others)
    assert any(p.grad is not None and p.grad.any() for p in policy.span_parameters())
    optimizer = torch.optim.SGD(policy.span_parameters(), lr=0.5)
    optimizer.step()
    with torch.no_grad():
        after, _ = policy(obs, policy.initial_state(3), starts)
    assert (after.spans < output.spans).all()
    # The loss is a mean over steps and envs: for constant spans it is α · e per layer,
    # whatever the chunk length and the number of envs.
    flat = build("expire_span", num_layers=2, max_span=50, span_loss_coef=0.2)
    for layer_predictor in flat.core.span_predictors:
        torch.nn.init.zeros_(layer_predictor.linear.weight)
    for steps, envs in ((4, 1), (20, 5)):
        loss = flat(
            random_obs(steps, envs, generator),
            flat.initial_state(envs),
            random_starts(steps, envs, generator),
        )[0].aux_loss
        torch.testing.assert_close(loss, torch.tensor(2 * 0.2 * 25.0, dtype=torch.float64))
