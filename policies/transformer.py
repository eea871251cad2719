"""Shared machinery of the transformer cores (Expire-Span and Transformer-XL).

Shape legend: T time (the queries of this chunk), B env columns, M cached memory slots,
N = M + T keys, D model dim, H heads, Dh = D / H head dim, L layers.

Blocks. Every block is a pre-norm residual block (attention, then feed-forward; optional
GTrXL GRU gates in place of the residual additions). Its queries are the T steps of the
chunk; its keys are the N = M + T *layer inputs* of the cached memories and of the chunk.
The cache holds detached layer inputs. Every forward with autograd (the learner's) recomputes
the keys, values (and Expire-Span's spans) of the cached memories with the current
parameters, so a cache filled during a rollout is never stale when the learner replays it
after a parameter update (a stale cache puts PPO's ratios far from 1 at its first epoch);
gradients reach the parameters through them but never the cached inputs. A forward without
autograd (rollouts, evaluation: the parameters cannot change from one step to the next)
also carries these key features in the state, as ``derived_features_{l}`` [B, M_l, 2·D + E],
and computes them only for the new steps: a streamed step then costs O(M·D) instead of
O(M·D²). `policies.State.fresh` drops them; the collector does so at the start of every
rollout, so they never outlive an update.

Masks and positions. Positions are counted from the chunk's first step: step t of the chunk
is at position t, a cached memory of age a (steps from it to the chunk's first step) at -a.
A key is *visible* to a query if it holds a memory, is not in the query's future, and
belongs to the query's episode (its position is at or after the query's latest
``episode_starts``). Each core turns visibility into an additive ``log_mask`` (0 or log m
where attended, -inf elsewhere). Relative position information is a learned bias per head
on the distance t - i, bucketed T5-style: exact below half the buckets, log-spaced above, up
to the core's maximum distance. It is a function of the distance alone, so it stays exact
when memories are dropped from the middle of the cache (the paper's learned key embeddings
only cover the last block for that reason) and costs O(T·N) like the attention itself.

The slot buffer. Per layer the cache is dense: ``memory`` [B, M, D], ``memory_age`` [B, M],
``memory_valid`` [B, M]. Environments keep different numbers of memories, so some slots are
empty (``valid`` false; zero padding is an empty slot too). After each forward the T new
steps are appended, and every slot the core declares dead (expired for every future query,
out of the window, or from a finished episode) is marked empty at once, with no host
synchronisation. Whenever the width grows past a multiple of I = ``compact_interval``, the
buffer is compacted: live slots move to the front (oldest first) and the width shrinks to
the largest live count over the envs, rounded up to a multiple of I. Compaction needs one
host synchronisation (the largest live count), so it happens once per I streamed steps, or
once per forward when T >= I. Between compactions the width stays below the largest live
count at the last compaction + 2·I, so memory and compute follow the number of live
memories, not L_max; empty slots cost attention work but are masked, so they never change
outputs.
"""

from __future__ import annotations

import abc
import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from policies.config import TransformerConfig
from policies.core import CoreOutput, MemoryCore
from policies.state import DERIVED_PREFIX, pad_slots

Tensor = torch.Tensor

NO_START = -(2**62)
"""Episode-start position of a query whose episode began before the chunk."""


def last_episode_start(episode_starts: Tensor) -> Tensor:
    """[T, B] bool -> [B, T] int64: position of the latest episode start at or before t."""
    num_steps = episode_starts.shape[0]
    positions = torch.arange(num_steps, device=episode_starts.device)[:, None]  # [T, 1]
    marked = torch.where(episode_starts, positions, NO_START)  # [T, B]
    return marked.cummax(dim=0).values.t()  # [T, B] -> [B, T]


def relative_position_bucket(distance: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """Bucket of each distance >= 0: itself below ``num_buckets // 2``, then log-spaced
    buckets up to ``max_distance`` (larger distances share the last bucket)."""
    exact = num_buckets // 2
    distance = distance.clamp(min=0)
    if max_distance <= exact:
        return distance.clamp(max=num_buckets - 1)
    scale = (num_buckets - exact) / math.log(max_distance / exact)
    far = exact + (torch.log(distance.clamp(min=exact).float() / exact) * scale).long()
    return torch.where(distance < exact, distance, far.clamp(max=num_buckets - 1))


class KeyLayout(NamedTuple):
    """Where the N keys of a layer sit relative to the T queries."""

    position: Tensor
    """[B, N] int64 position (cached memories negative, chunk steps 0..T-1)."""
    valid: Tensor
    """[B, N] bool: the slot holds a memory."""
    distance: Tensor
    """[B, T, N] int64 query position minus key position (t - i)."""
    visible: Tensor
    """[B, T, N] bool: valid, not in the future, in the query's episode."""


def key_layout(age: Tensor, valid: Tensor, episode_start: Tensor) -> KeyLayout:
    """Layout of the keys [cached memories; chunk steps] for queries with ``episode_start``
    [B, T]; ``age``, ``valid`` [B, M] describe the cached memories."""
    batch, num_steps = episode_start.shape
    steps = torch.arange(num_steps, device=age.device)
    position = torch.cat([-age, steps.expand(batch, -1)], dim=1)  # [B, N]
    valid = torch.cat([valid, valid.new_ones(batch, num_steps)], dim=1)  # [B, N]
    distance = steps[None, :, None] - position[:, None, :]  # [B, T, N]
    same_episode = position[:, None, :] >= episode_start[..., None]  # [B, T, N]
    visible = valid[:, None, :] & (distance >= 0) & same_episode
    return KeyLayout(position, valid, distance, visible)


class LayerMask(NamedTuple):
    """A core's decision for one layer: how queries attend, and which memories live on."""

    log_mask: Tensor
    """[B, T, N] added to the attention logits: log m (0 when fully kept), -inf if not attended."""
    alive_next: Tensor
    """[B, N] bool: the key may still be attended to by the next step's query."""
    spans: Tensor | None
    """[B, T] spans of the chunk's new memories (Expire-Span only)."""
    loss: Tensor
    """[] this layer's auxiliary loss."""


class GRUGate(nn.Module):
    """GTrXL gate g(x, y): a GRU update of the residual stream x by the sublayer output y."""

    def __init__(self, d_model: int, gate_bias: float) -> None:
        super().__init__()
        self.from_y = nn.Linear(d_model, 3 * d_model, bias=False)  # W_r, W_z, W_g
        self.from_x = nn.Linear(d_model, 2 * d_model, bias=False)  # U_r, U_z
        self.candidate_from_x = nn.Linear(d_model, d_model, bias=False)  # U_g
        self.gate_bias = gate_bias

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        wr, wz, wg = self.from_y(y).chunk(3, dim=-1)
        ur, uz = self.from_x(x).chunk(2, dim=-1)
        reset = torch.sigmoid(wr + ur)
        update = torch.sigmoid(wz + uz - self.gate_bias)
        candidate = torch.tanh(wg + self.candidate_from_x(reset * x))
        return (1 - update) * x + update * candidate


class MemoryBlock(nn.Module):
    """Pre-norm residual block whose T queries attend over N = M + T keys."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        d_model = config.d_model
        self.num_heads = config.num_heads
        self.norm_attn = nn.LayerNorm(d_model)
        self.query = nn.Linear(d_model, d_model, bias=False)
        self.key_value = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.position_bias = nn.Parameter(torch.zeros(config.num_heads, config.position_buckets))
        self.norm_ff = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(
            nn.Linear(d_model, config.ff_mult * d_model),
            nn.ReLU(),
            nn.Linear(config.ff_mult * d_model, d_model),
        )
        self.gate_attn = GRUGate(d_model, config.gate_bias) if config.gating else None
        self.gate_ff = GRUGate(d_model, config.gate_bias) if config.gating else None

    def key_values(self, hidden: Tensor) -> Tensor:
        """Keys and values [B, N, 2·D] of layer inputs ``hidden`` [B, N, D]."""
        return self.key_value(self.norm_attn(hidden))

    def forward(
        self, x: Tensor, key_value: Tensor, log_mask: Tensor, distance: Tensor,
        bucket_of_distance: Tensor,
    ) -> Tensor:
        """``x`` [B, T, D] the queries' own layer inputs, ``key_value`` [B, N, 2·D] keys and
        values of the N keys (see `key_values`; the last T are the queries' own), ``log_mask``
        [B, T, N], ``distance`` [B, T, N] clamped to [0, max distance], ``bucket_of_distance``
        the position bucket of each distance -> [B, T, D]."""
        batch, num_steps, d_model = x.shape
        num_keys = key_value.shape[1]
        heads, head_dim = self.num_heads, d_model // self.num_heads
        query = self.query(self.norm_attn(x)) / math.sqrt(head_dim)  # [B, T, D]
        bias_of_distance = self.position_bias[:, bucket_of_distance]  # [H, max distance + 1]
        position = bias_of_distance.index_select(1, distance.reshape(-1))  # [H, B·T·N]
        bias = position.view(heads, batch, num_steps, num_keys) + log_mask  # [H, B, T, N]
        # One head at a time on strided views of ``key_value``, so the N keys and values are
        # never copied. Split and unbind, not indexing: an index's backward fills a whole
        # zero tensor per head (on corridor 1000 those fills were 27 % of an update's profile;
        # without them training ran 16 % faster, with the same weights bit for bit).
        queries = query.split(head_dim, dim=-1)  # H x [B, T, Dh]
        keys_values = key_value.split(head_dim, dim=-1)  # H keys, then H values, [B, N, Dh]
        attended = []
        for head, head_bias in enumerate(bias.unbind(0)):  # [B, T, N]
            key, value = keys_values[head], keys_values[heads + head]
            logits = torch.baddbmm(head_bias, queries[head], key.transpose(1, 2))  # [B, T, N]
            attended.append(torch.bmm(torch.softmax(logits, dim=-1), value))  # [B, T, Dh]
        attended = torch.cat(attended, dim=-1)  # [B, T, D]
        x = self._residual(x, self.out(attended), self.gate_attn)
        return self._residual(x, self.ff(self.norm_ff(x)), self.gate_ff)

    @staticmethod
    def _residual(x: Tensor, y: Tensor, gate: GRUGate | None) -> Tensor:
        return x + y if gate is None else gate(x, F.relu(y))


def update_slot_buffer(
    slots: list[Tensor], keys: KeyLayout, keep: Tensor, old_width: int, compact_interval: int,
    compact: bool,
) -> tuple[list[Tensor], Tensor, Tensor]:
    """The layer's cache for the next step: (per-slot tensors [B, M', ...] in the order of
    ``slots`` (each [B, N, ...], detached), age [B, M'], valid [B, M'])."""
    num_steps = keys.distance.shape[1]
    slots = [tensor.detach() if tensor.requires_grad else tensor for tensor in slots]
    age = num_steps - keys.position  # [B, N] steps from each key to the next step
    width = age.shape[1]
    if not compact or width // compact_interval == old_width // compact_interval:
        return slots, age, keep
    live = int(keep.sum(dim=1).max())  # the one host synchronisation
    new_width = -(-live // compact_interval) * compact_interval
    order = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)  # live first, oldest first
    take = order[:, : min(new_width, width)]  # [B, M']
    slots = [t.gather(1, take[..., None].expand(-1, -1, t.shape[2])) for t in slots]
    age, keep = age.gather(1, take), keep.gather(1, take)
    if new_width > width:
        slots = [pad_slots(t, new_width) for t in slots]
        age, keep = pad_slots(age, new_width), pad_slots(keep, new_width)
    return slots, age, keep


def append_slots(buffer: Tensor, new: Tensor, spare: int) -> Tensor:
    """``buffer`` [B, M, ...] followed by ``new`` [B, T, ...] along dim 1, for streaming.

    A buffer made here is a view of a wider allocation; the next call writes into the spare
    slots in place instead of copying all M memories, as long as ``buffer`` is still the
    latest view of that allocation (it "claims" the slots up to its width). Any other view
    of it (a snapshot taken earlier, a second branch stepped from the same state) gets a
    copy, so states stay values. Only for tensors outside autograd."""
    width, steps = buffer.shape[1], new.shape[1]
    base = buffer._base
    if (
        base is not None
        and getattr(base, "claimed_width", None) == width
        and base.shape[1] >= width + steps
        and buffer.data_ptr() == base.data_ptr()
    ):
        base[:, width : width + steps] = new
    else:
        base = buffer.new_empty((buffer.shape[0], width + steps + spare, *buffer.shape[2:]))
        base[:, :width] = buffer
        base[:, width : width + steps] = new
    base.claimed_width = width + steps
    return base[:, : width + steps]


class TransformerCore(MemoryCore):
    """Stack of `MemoryBlock`s over a per-layer slot buffer; subclasses decide the masks."""

    prune = True

    def __init__(self, config: TransformerConfig, max_distance: int) -> None:
        super().__init__()
        self.num_layers = config.num_layers
        self.d_model = config.d_model
        self.max_distance = max_distance
        bucket = relative_position_bucket(torch.arange(max_distance + 1), config.position_buckets,
                                          max_distance)
        self.register_buffer("bucket_of_distance", bucket, persistent=False)  # [max distance + 1]
        self.compact_interval = config.compact_interval
        self.blocks = nn.ModuleList(MemoryBlock(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(config.d_model)

    def key_features(self, layer: int, hidden: Tensor) -> Tensor:
        """What layer ``layer`` needs of each key, computed from its layer input alone:
        [B, N, D] -> [B, N, 2·D + E], keys and values, then E core-specific features (see
        `memory_mask`). Row by row, so a memory's features can be cached while the
        parameters stay the same."""
        return self.blocks[layer].key_values(hidden)

    @abc.abstractmethod
    def memory_mask(
        self, layer: int, features: Tensor, keys: KeyLayout, context: Any
    ) -> LayerMask:
        """The attention mask and the survivors of layer ``layer``, given the keys'
        `key_features` [B, N, 2·D + E]."""

    def forward_context(self, x: Tensor) -> Any:
        """Anything drawn once per forward and shared by the layers (e.g. span shortening)."""
        return None

    def initial_state(
        self, num_envs: int, device: torch.device, dtype: torch.dtype
    ) -> dict[str, Tensor]:
        state = {}
        for layer in range(self.num_layers):
            state[f"memory_{layer}"] = torch.zeros(num_envs, 0, self.d_model, device=device,
                                                   dtype=dtype)
            state[f"memory_age_{layer}"] = torch.zeros(num_envs, 0, device=device,
                                                       dtype=torch.long)
            state[f"memory_valid_{layer}"] = torch.zeros(num_envs, 0, device=device,
                                                         dtype=torch.bool)
        return state

    def forward(
        self, x: Tensor, state: dict[str, Tensor], episode_starts: Tensor
    ) -> CoreOutput:
        h = x.transpose(0, 1)  # [T, B, D] -> [B, T, D]
        episode_start = last_episode_start(episode_starts)  # [B, T]
        context = self.forward_context(x)
        new_state, alive, spans, aux_loss = {}, [], [], x.new_zeros(())
        # Without autograd (rollouts, evaluation) the parameters cannot change between steps,
        # so the cached memories' key features are carried in the state instead of being
        # recomputed every step; with autograd they are always recomputed (a stale cache
        # skews PPO's ratios).
        reuse = not torch.is_grad_enabled()
        for layer, block in enumerate(self.blocks):
            memory = state[f"memory_{layer}"]
            keys = key_layout(state[f"memory_age_{layer}"], state[f"memory_valid_{layer}"],
                              episode_start)
            cached = state.get(f"{DERIVED_PREFIX}features_{layer}") if reuse else None
            if cached is None:
                keys_hidden = torch.cat([memory, h], dim=1)  # [B, M + T, D]
                features = self.key_features(layer, keys_hidden)  # [B, M + T, F]
            else:  # append in place: at most 2·I steps between compactions
                spare = 2 * self.compact_interval
                keys_hidden = append_slots(memory, h, spare)
                features = append_slots(cached, self.key_features(layer, h), spare)
            mask = self.memory_mask(layer, features, keys, context)
            distance = keys.distance.clamp(0, self.max_distance)  # the last bucket beyond
            same_episode = keys.valid & (keys.position >= episode_start[:, -1:])
            alive_next = same_episode & mask.alive_next  # [B, N]
            keep = alive_next if self.prune else same_episode
            slots = [keys_hidden, features] if reuse else [keys_hidden]
            slots, age, valid = update_slot_buffer(slots, keys, keep, memory.shape[1],
                                                   self.compact_interval, compact=self.prune)
            new_state[f"memory_{layer}"] = slots[0]
            new_state[f"memory_age_{layer}"], new_state[f"memory_valid_{layer}"] = age, valid
            if reuse:
                new_state[f"{DERIVED_PREFIX}features_{layer}"] = slots[1]
            alive.append(alive_next.sum(dim=1).to(x.dtype))
            if mask.spans is not None:
                spans.append(mask.spans)
            aux_loss = aux_loss + mask.loss
            h = block(h, features[..., : 2 * self.d_model], mask.log_mask, distance,
                      self.bucket_of_distance)
        features = self.final_norm(h).transpose(0, 1)  # [B, T, D] -> [T, B, D]
        steps, batch = episode_starts.shape
        spans_out = (torch.stack(spans, dim=-1).transpose(0, 1) if spans  # [B, T, L] -> [T, B, L]
                     else x.new_zeros(steps, batch, 0))
        return CoreOutput(features, new_state, aux_loss, torch.stack(alive, dim=1), spans_out)
