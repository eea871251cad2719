"""Policy configurations: one frozen dataclass per core kind, validated on construction.

The defaults here are the single source of truth for policy settings; `make_policy`
builds a config from keyword arguments and `dataclasses.asdict(policy.config)` gives
them back (JSON-friendly) for a run's ``config.json``. The Expire-Span defaults are the
recipe that learnt the corridor in early measurements (p = 0.75, R = 16, α = 0.01, span
learning rate ×0.1, a detached non-affine LayerNorm in front of the span predictor; see
``docs/experiments.md``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

POLICY_KINDS = ("expire_span", "trxl", "lstm")

SPAN_LR_SCALE = 0.1
"""Default learning-rate multiplier of the span predictors (``MemoryPolicy.param_groups``)."""


def _check_int(config: Any, name: str, low: int, high: int | None = None) -> None:
    """Check that ``config.name`` is an integer in [low, high] and store it as a plain int."""
    value = getattr(config, name)
    allowed = f"[{low}, {high}]" if high is not None else f">= {low}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be an integer {allowed}, got {value}")
    object.__setattr__(config, name, int(value))


def _check_float(
    config: Any, name: str, low: float, high: float = math.inf, *, open_low: bool = False,
    open_high: bool = False,
) -> None:
    """Check that ``config.name`` is a finite number in the range and store it as a float."""
    value = getattr(config, name)
    left, right = "(" if open_low else "[", ")" if open_high or high == math.inf else "]"
    allowed = f"a number in {left}{low}, {high}{right}" if low > -math.inf else "a finite number"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    too_low = value <= low if open_low else value < low
    too_high = value >= high if open_high else value > high
    if not math.isfinite(value) or too_low or too_high:
        raise ValueError(f"{name} must be {allowed}, got {value}")
    object.__setattr__(config, name, float(value))


def _check_bool(config: Any, name: str) -> None:
    value = getattr(config, name)
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


@dataclass(frozen=True)
class PolicyConfig:
    """Settings shared by every policy: the observation encoder and the actor-critic heads."""

    d_model: int = 64
    """Width D of the observation embedding, the memory core and the heads (LSTM hidden size)."""
    encoder_hidden: int = 128
    """Hidden width of the encoder's MLP."""
    cell_embed_dim: int = 16
    """Embedding size of a minigrid cell (object, colour and state embeddings are summed)."""
    token_embed_dim: int = 16
    """Embedding size of each ``Discrete`` observation field."""
    actor_init_gain: float = 1.0
    """Orthogonal-init gain of the actor head. CleanRL's 0.01 (a near-uniform first policy)
    starves the memory core of gradient: measured here, an LSTM policy could not learn to
    carry the corridor cue 2 steps by behaviour cloning in 120 Adam steps with gain 0.01
    (loss stuck at ln 2), while gain 1.0 reached 0.003."""
    actor_bias_init: tuple[float, ...] | None = None
    """Initial bias of the action logits, one number per action (e.g. ``(0, 0, 1)`` makes the
    initial policy prefer action 2, "forward"); None means zeros (uniform initial policy)."""
    egocentric: bool = False
    """Turn each square minigrid window so that the agent's heading (the state channel of its
    centre cell, as the suite's top-down windows hold it) always points the same way: the
    cell in front of the agent is then always the same cell of the embedded view."""
    reconstruction_coef: float = 0.0
    """Coefficient of an auxiliary loss that reconstructs each step's observation from the
    core's output (`policies.encoder.ObservationDecoder`); 0 builds no decoder."""

    def __post_init__(self) -> None:
        _check_int(self, "d_model", 1)
        _check_int(self, "encoder_hidden", 1)
        _check_int(self, "cell_embed_dim", 1)
        _check_int(self, "token_embed_dim", 1)
        _check_float(self, "actor_init_gain", 0.0, open_low=True)
        _check_bool(self, "egocentric")
        _check_float(self, "reconstruction_coef", 0.0)
        if self.actor_bias_init is not None:
            bias = self.actor_bias_init
            if not isinstance(bias, (list, tuple)) or not all(
                isinstance(b, numbers.Real) and not isinstance(b, bool) and math.isfinite(b)
                for b in bias
            ):
                raise ValueError(
                    f"actor_bias_init must be None or a list of finite numbers (one per action), "
                    f"got {bias!r}"
                )
            object.__setattr__(self, "actor_bias_init", tuple(float(b) for b in bias))


@dataclass(frozen=True)
class TransformerConfig(PolicyConfig):
    """Settings shared by the transformer cores (Expire-Span and Transformer-XL)."""

    num_layers: int = 1
    """Number of pre-norm residual blocks; each keeps its own memory of layer inputs."""
    num_heads: int = 4
    """Attention heads H per block; ``d_model`` must be divisible by it."""
    ff_mult: int = 4
    """Width of the feed-forward sublayer as a multiple of ``d_model``."""
    gating: bool = False
    """GTrXL-style GRU gates instead of plain residual additions (Parisotto et al., 2020)."""
    gate_bias: float = 2.0
    """GTrXL gate bias b_g; larger starts each block closer to the identity."""
    position_buckets: int = 64
    """Learned relative-position biases per head: exact distances below half of this,
    log-spaced buckets above, up to the core's maximum distance. Measured on corridor 10
    with L_max 3016 (0.7M steps, seeds 2 and 3): 32 buckets solved neither (0.75, 0.50),
    64 solved both."""
    compact_interval: int = 16
    """The memory slot buffer is compacted (expired slots removed) whenever its width has
    grown past a multiple of this many slots: one host synchronisation per that many
    streamed steps, at most that many dead slots per env in between."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int(self, "num_layers", 1, 64)
        _check_int(self, "num_heads", 1)
        if self.d_model % self.num_heads != 0:
            raise ValueError(
                f"d_model must be divisible by num_heads, got d_model={self.d_model}, "
                f"num_heads={self.num_heads}"
            )
        _check_int(self, "ff_mult", 1)
        _check_bool(self, "gating")
        _check_float(self, "gate_bias", -math.inf)
        _check_int(self, "position_buckets", 2)
        _check_int(self, "compact_interval", 1)


@dataclass(frozen=True)
class ExpireSpanConfig(TransformerConfig):
    """Expire-Span core (Sukhbaatar et al., 2021); symbols as in the paper."""

    max_span: int = 1024
    """L_max: the largest span a memory can get, in steps."""
    ramp_length: int = 16
    """R: length of the soft mask's linear ramp from 1 to 0 past a memory's span."""
    ramp_growth: float = 0.0
    """ρ: the ramp also grows with the span, to R + ρ·e (0: the paper's fixed R). A ramp in
    proportion to the span gives a long memory's span a gradient from distances within a share
    of it, not only within R steps (docs/experiments.md#corridor)."""
    span_init: float = 0.75
    """p: initial span as a fraction of L_max (predictor bias b = logit(p), weights w = 0)."""
    span_loss_coef: float = 0.01
    """α: coefficient of the span loss α · Σ_layers mean_{t,b} e_{t,b} (see expire_span.py)."""
    span_pre_div: float = 1.0
    """K: the predictor's input is divided by K before the linear map, for very large L_max."""
    span_shortening: bool = False
    """In training mode, clamp every span of a forward pass to u·L_max, u ~ U(0, 1) drawn once
    per forward and shared by all layers (the official code's ``expire_span_noisy``)."""
    detach_span_input: bool = True
    """Span predictors read a detached copy of the layer input (``docs/experiments.md``): the
    span loss and the span gradient then move only the predictor, not the representation."""
    prune: bool = True
    """Drop memories whose mask is 0 for every future query. Only switch off to check that
    dropping is exact: without it the cache grows by T slots per forward, forever."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int(self, "max_span", 1)
        _check_int(self, "ramp_length", 1)
        _check_float(self, "ramp_growth", 0.0)
        _check_float(self, "span_init", 0.0, 1.0, open_low=True, open_high=True)
        _check_float(self, "span_loss_coef", 0.0)
        _check_float(self, "span_pre_div", 0.0, open_low=True)
        _check_bool(self, "span_shortening")
        _check_bool(self, "detach_span_input")
        _check_bool(self, "prune")


@dataclass(frozen=True)
class TransformerXLConfig(TransformerConfig):
    """Transformer-XL baseline: the same blocks with a fixed window of the last M memories."""

    memory_size: int = 256
    """M: each query attends to itself and the M steps before it (within its episode)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int(self, "memory_size", 1)


@dataclass(frozen=True)
class LSTMConfig(PolicyConfig):
    """LSTM baseline (``torch.nn.LSTM``, hidden size ``d_model``)."""

    num_layers: int = 1
    """Stacked LSTM layers."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int(self, "num_layers", 1, 64)


CONFIG_CLASSES: dict[str, type[PolicyConfig]] = {
    "expire_span": ExpireSpanConfig,
    "trxl": TransformerXLConfig,
    "lstm": LSTMConfig,
}


def build_config(kind: str, config: dict[str, Any]) -> PolicyConfig:
    """The validated config of a policy ``kind``; unknown kinds and keys raise ValueError."""
    if kind not in CONFIG_CLASSES:
        raise ValueError(f"unknown policy kind {kind!r}; allowed: {', '.join(POLICY_KINDS)}")
    cls = CONFIG_CLASSES[kind]
    allowed = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown config key {unknown[0]!r} for policy kind {kind!r}; "
            f"allowed: {', '.join(allowed)}"
        )
    return cls(**config)
