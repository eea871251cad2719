"""Expire-Span core (Sukhbaatar et al., "Not All Memories are Created Equal", ICML 2021).

Shape legend: T time (queries of this chunk), B env columns, M cached memory slots,
N = M + T keys, D model dim, L layers.

Per layer, every memory i (a layer input h_i, cached or of this chunk) gets a span

    e_i = L_max · sigmoid(w · LN(h_i) / K + b),        w = 0, b = logit(p) at init,

where LN is the predictor's own non-affine LayerNorm, read from a detached copy of h_i by
default (the span loss then moves only the predictor, whose parameters
`span_parameters` exposes for a lower learning rate). A query at t sees memory i through

    r_ti = e_i - (t - i),        m_ti = clamp(1 + r_ti / R, 0, 1),

shared by all heads of the layer. The mask is applied by adding log m_ti to the attention
logits, which is the paper's "multiply the attention weights by m and renormalise" exactly:
softmax(a + log m)_i = m_i e^{a_i} / sum_j m_j e^{a_j}. We use the log form because every
other mask (causal, episode, empty slot) is additive too, so one masked softmax does all, with
no renormalisation epsilon; where m = 0 the logit is -inf and no gradient flows, and a row is
never empty because m_tt = 1 (e_t >= 0). The gradient of the task loss reaches e_i only
through memories on the ramp (0 < m_ti < 1).

Span loss. ``aux_loss = α · sum over layers of mean over (t, b) of e_{t,b}``, the spans of
the T·B memories created in this chunk (unshortened). Every memory is penalised exactly once,
when it is created, so α is "loss per step of span, per memory, per layer": the same whatever
the chunk length T and the batch size B (each span gets gradient α / (T·B) from a loss that
is itself a mean over T·B). This is the paper's α·Σ_i e_i / T per sequence, averaged over B.
(The official code charges a memory only while it is on its ramp; in RL a span longer than
the episode never reaches its ramp and would never be charged, so we charge at creation.)

Random span shortening (``span_shortening``, the official code's ``expire_span_noisy``): in
training mode one u ~ U(0, 1) is drawn per forward (on the device, no host sync) and every
layer's spans are clamped to u·L_max for the mask only; the span loss and pruning use e.

The cache. Each layer caches detached layer inputs h_i (not keys and values) in a dense slot
buffer per env column: ``memory`` [B, M, D], ``memory_age`` [B, M], ``memory_valid`` [B, M]
(details in `policies.transformer`). After a forward, memory i is kept only if some future
query can still see it: the next query is at position T and the mask only shrinks with t,
so i is dropped when m_Ti = 0, i.e. e_i + R <= T - i. As m is then 0 for every later query,
dropping is exact (``prune=False`` keeps everything, to check exactly that). Dropped slots
are marked empty at once; every ``compact_interval`` appended steps the buffer is compacted
to the largest live count over the envs (rounded up), so envs with different numbers of live
memories share one dense tensor. Live memories per env are about e + R, so memory and
compute follow the spans, not L_max. Spans, keys and values are recomputed from the cached
h_i with the current parameters at every forward with autograd (stale cached keys put PPO's
first ratios far from 1; without autograd they are cached too, see `policies.transformer`);
a memory dropped under older parameters stays dropped (a learner replaying a rollout starts
each chunk from the state stored during the rollout, so its first epoch sees exactly the
rollout's memories).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from policies.config import ExpireSpanConfig
from policies.transformer import KeyLayout, LayerMask, TransformerCore

Tensor = torch.Tensor


def ramp_width(spans: Tensor, ramp_length: int, ramp_growth: float = 0.0) -> Tensor | int:
    """The ramp's length past each span: R, or R + ρ·e with a ramp that grows with the span."""
    return ramp_length if ramp_growth == 0 else spans * ramp_growth + ramp_length


def expire_span_ramp(
    spans: Tensor, distance: Tensor, ramp_length: int, ramp_growth: float = 0.0
) -> Tensor:
    """r = 1 + (e - (t - i)) / (R + ρ·e) for spans e and distances t - i (broadcast);
    m = clamp(r, 0, 1)."""
    return (spans - distance).div_(ramp_width(spans, ramp_length, ramp_growth)).add_(1)


def expire_span_mask(
    spans: Tensor, distance: Tensor, ramp_length: int, ramp_growth: float = 0.0
) -> Tensor:
    """m = clamp(1 + (e - (t - i)) / (R + ρ·e), 0, 1) for spans e and distances t - i
    (broadcast)."""
    return expire_span_ramp(spans, distance, ramp_length, ramp_growth).clamp(0, 1)


def expire_span_log_mask(
    spans: Tensor, distance: Tensor, visible: Tensor, ramp_length: int, ramp_growth: float = 0.0
) -> Tensor:
    """log m where ``visible`` and m > 0, -inf elsewhere: [B, N] spans, [B, T, N] distances
    and ``visible`` -> [B, T, N]. Differentiable in ``spans`` (see `ExpireSpanLogMask`);
    without a gradient to carry it skips autograd's bookkeeping."""
    if spans.requires_grad:
        return ExpireSpanLogMask.apply(spans, distance, visible, ramp_length, ramp_growth)
    return _log_mask(spans, distance, visible, ramp_length, ramp_growth)[0]


def _log_mask(
    spans: Tensor, distance: Tensor, visible: Tensor, ramp_length: int, ramp_growth: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(log mask, r, attended): r = 1 + (e - d) / (R + ρ·e) is the mask's argument (m =
    clamp(r, 0, 1)); a key is attended where visible and m > 0."""
    ramp = expire_span_ramp(spans[:, None, :], distance, ramp_length, ramp_growth)  # [B, T, N]
    mask = ramp.clamp(0, 1)
    attended = visible & (mask > 0)
    # Clamped so that the log never sees a 0 (on CPU ten times slower than a positive number).
    log_mask = torch.where(attended, mask.clamp_(min=torch.finfo(mask.dtype).tiny).log_(),
                           -math.inf)
    return log_mask, ramp, attended


class ExpireSpanLogMask(torch.autograd.Function):
    """`expire_span_log_mask` with its gradient to the spans, in one step.

    The same numbers, forward and backward, bit for bit, as composing `expire_span_mask`, a
    ``where`` and a clamped log under autograd, whose backward retraces each op (about three
    times this backward's time on a corridor minibatch). The gradient (dL/dlog m) / (R·r)
    flows where the key is attended and r <= 1 (the ramp, its upper edge included; as a
    float32, r is either 0 or at least 2^-24 near 0, so attended keys have m = r >= tiny).
    With a ramp that grows with the span (ρ > 0), dr/de = (1 + ρ·(1 - r)) / (R + ρ·e)."""

    @staticmethod
    def forward(
        ctx: Any, spans: Tensor, distance: Tensor, visible: Tensor, ramp_length: int,
        ramp_growth: float,
    ) -> Tensor:  # fmt: skip
        log_mask, ramp, attended = _log_mask(spans, distance, visible, ramp_length, ramp_growth)
        ctx.save_for_backward(ramp, attended, spans if ramp_growth else None)
        ctx.ramp_length, ctx.ramp_growth = ramp_length, ramp_growth
        return log_mask

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None, None]:
        ramp, attended, spans = ctx.saved_tensors
        on_ramp = attended & (ramp <= 1)
        growth = ctx.ramp_growth
        if growth == 0:
            grad_ramp = torch.where(on_ramp, grad / ramp, 0).div_(ctx.ramp_length)
            return grad_ramp.sum(dim=1), None, None, None, None
        # (dL/dlog m) / r · (1 + ρ(1 - r)), summed over the queries, over R + ρ·e per key.
        grad_ramp = torch.where(on_ramp, grad / ramp * (1 + growth * (1 - ramp)), 0)
        grad_spans = grad_ramp.sum(dim=1) / ramp_width(spans, ctx.ramp_length, growth)
        return grad_spans, None, None, None, None


class SpanPredictor(nn.Module):
    """e = L_max · sigmoid(w · LN(h) / K + b): [B, N, D] layer inputs -> [B, N] spans."""

    def __init__(
        self, d_model: int, max_span: int, span_init: float, pre_div: float, detach_input: bool
    ) -> None:
        super().__init__()
        self.max_span = max_span
        self.pre_div = pre_div
        self.detach_input = detach_input
        self.norm = nn.LayerNorm(d_model, elementwise_affine=False)
        self.linear = nn.Linear(d_model, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.constant_(self.linear.bias, math.log(span_init / (1 - span_init)))

    def forward(self, hidden: Tensor) -> Tensor:
        if self.detach_input:
            hidden = hidden.detach()
        # w·(x / K) + b, with the division done on the [B, N] products rather than on x.
        weighted = nn.functional.linear(self.norm(hidden), self.linear.weight)  # [B, N, 1]
        logit = weighted.squeeze(-1) / self.pre_div + self.linear.bias  # [B, N]
        return self.max_span * torch.sigmoid(logit)


class ExpireSpanCore(TransformerCore):
    """Transformer blocks whose memories expire after their predicted span."""

    def __init__(self, config: ExpireSpanConfig) -> None:
        max_distance = math.ceil(config.max_span * (1 + config.ramp_growth)) + config.ramp_length
        super().__init__(config, max_distance=max_distance)
        self.max_span = config.max_span
        self.ramp_length = config.ramp_length
        self.ramp_growth = config.ramp_growth
        self.span_loss_coef = config.span_loss_coef
        self.span_shortening = config.span_shortening
        self.prune = config.prune
        self.span_predictors = nn.ModuleList(
            SpanPredictor(config.d_model, config.max_span, config.span_init, config.span_pre_div,
                          config.detach_span_input)
            for _ in range(config.num_layers)
        )

    def span_parameters(self) -> list[nn.Parameter]:
        return list(self.span_predictors.parameters())

    def forward_context(self, x: Tensor) -> Tensor | None:
        """The span limit u·L_max of this forward, or None (no shortening)."""
        if self.span_shortening and self.training:
            return torch.rand((), device=x.device, dtype=x.dtype) * self.max_span
        return None

    def key_features(self, layer: int, hidden: Tensor) -> Tensor:
        """Keys, values and, last, the span e of each key: [B, N, D] -> [B, N, 2·D + 1]."""
        spans = self.span_predictors[layer](hidden)  # [B, N]
        return torch.cat([super().key_features(layer, hidden), spans[..., None]], dim=-1)

    def memory_mask(
        self, layer: int, features: Tensor, keys: KeyLayout, span_limit: Tensor | None
    ) -> LayerMask:
        num_steps = keys.distance.shape[1]
        spans = features[..., -1]  # [B, N]
        mask_spans = spans if span_limit is None else torch.minimum(spans, span_limit)
        log_mask = expire_span_log_mask(mask_spans, keys.distance, keys.visible,
                                        self.ramp_length, self.ramp_growth)  # [B, T, N]
        # m at t = T is > 0
        alive_next = spans + ramp_width(spans, self.ramp_length, self.ramp_growth) > (
            num_steps - keys.position)  # fmt: skip
        new_spans = spans[:, -num_steps:]  # [B, T]
        loss = self.span_loss_coef * new_spans.mean()
        return LayerMask(log_mask, alive_next, new_spans, loss)
