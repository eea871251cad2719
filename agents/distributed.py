"""Data-parallel training on torch.distributed: the one place that knows about ranks.

``torchrun --nproc-per-node N train_rl.py ...`` starts N processes (ranks). Each
rank owns its own batched envs (seeded ``seed + rank``), memory states and
rollouts; the only thing that crosses between ranks in an update is the
gradient, averaged before clipping (`World.average_gradients`), so every rank
holds the same weights after every update. Rank 0 alone writes the run
directory (`World.is_main`). Logged metrics and the statistics that normalise
PPO's advantages are reduced over the ranks.

A plain ``python train_rl.py`` (or torchrun with one process) runs as `SINGLE`:
no process group, and every method below returns its input untouched.

Backends: gloo for CPU tensors and for Python objects, NCCL for CUDA tensors
(one process group serves both; collectives go by the tensor's device).
``--device cuda`` puts each rank on ``cuda:LOCAL_RANK``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

Tensor = torch.Tensor


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of one training run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    """The rank among the processes of this node (which GPU it uses)."""

    @property
    def distributed(self) -> bool:
        """Whether other ranks take part (a process group is up)."""
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run directory and prints (rank 0)."""
        return self.rank == 0

    def device(self, device: str) -> str:
        """The device this rank runs on: ``cuda`` becomes ``cuda:LOCAL_RANK`` (made the
        current CUDA device) when ranks share a node's GPUs; anything else is unchanged."""
        if not self.distributed or device != "cuda":
            return device
        torch.cuda.set_device(self.local_rank)
        return f"cuda:{self.local_rank}"

    # -- objects (setup, checkpoints) -------------------------------------------------
    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (pickled; tensors must be on the CPU)."""
        if not self.distributed:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def gather_objects(self, value: Any) -> list[Any] | None:
        """Every rank's ``value`` in rank order on rank 0, None elsewhere (tensors must be
        on the CPU)."""
        if not self.distributed:
            return [value]
        gathered: list[Any] | None = [None] * self.size if self.is_main else None
        dist.gather_object(value, gathered, dst=0)
        return gathered

    def broadcast_flag(self, flag: bool) -> bool:
        """Rank 0's decision, taken by every rank."""
        return bool(self.broadcast_object(bool(flag)))

    # -- the model ------------------------------------------------------------------
    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers (ranks build their policies from
        different seeds)."""
        if not self.distributed:
            return
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def average_gradients(self, parameters: Sequence[torch.nn.Parameter], loss: Tensor) -> int:
        """Replace each parameter's gradient by its mean over the ranks, in one all-reduce
        of a flat buffer; returns how many ranks' ``loss`` was not finite (0: go on).

        Gradients, not losses, are averaged because the learner replays a minibatch chunk
        by chunk inside one autograd graph per minibatch, so one all-reduce after
        ``backward`` (and before clipping, which must see the averaged gradient) is all
        DistributedDataParallel would do here, without its hooks or its bucket order. Each
        rank's loss is a mean over an equal share of the minibatch, so the mean of the
        gradients is the gradient of the whole minibatch's loss. A parameter that got no
        gradient on some rank counts as zero there; one that got none anywhere keeps
        ``grad`` None, as in a single process. The same buffer carries the count of
        non-finite losses, so every rank stops on one rank's NaN."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        has_grad = torch.tensor([p.grad is not None for p in parameters], dtype=loss.dtype,
                                device=loss.device)  # fmt: skip
        not_finite = (~torch.isfinite(loss.detach())).to(loss.dtype).reshape(1)
        flat = torch.cat([*(g.reshape(-1).to(loss.dtype) for g in grads), has_grad, not_finite])
        dist.all_reduce(flat)
        bad = int(flat[-1].item())
        if bad:
            return bad
        counts = flat[-1 - len(grads):-1]
        offset = 0
        for parameter, count in zip(parameters, counts.tolist(), strict=True):
            size = parameter.numel()
            if count:
                mean = flat[offset:offset + size].view_as(parameter) / self.size
                parameter.grad = mean.to(parameter.dtype)
            offset += size
        return 0

    # -- statistics -------------------------------------------------------------------
    def mean_and_std(self, values: Tensor) -> tuple[Tensor, Tensor]:
        """The mean and the (unbiased) standard deviation of every rank's ``values`` taken
        together, in two passes as ``Tensor.std`` does (the ranks hold equally many)."""
        if not self.distributed:
            return values.mean(), values.std()
        count = values.numel() * self.size
        total = values.sum()
        dist.all_reduce(total)
        mean = total / count
        squares = (values - mean).pow(2).sum()
        dist.all_reduce(squares)
        return mean, (squares / (count - 1)).sqrt()

    def sum_(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over the ranks, in place."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    def reduce_floats(
        self, values: dict[str, float], mean: Sequence[str] = (), maximum: Sequence[str] = (),
        minimum: Sequence[str] = (),
    ) -> dict[str, float]:  # fmt: skip
        """``values`` with the named entries replaced by their mean, maximum or minimum over
        the ranks (every rank gets the same numbers); the others are this rank's."""
        if not self.distributed:
            return values
        names = [*mean, *maximum, *minimum]
        local = torch.tensor([values[name] for name in names], dtype=torch.float64)
        summed = local[:len(mean)].clone()
        dist.all_reduce(summed)
        # One MAX reduction for both: the minimum is minus the maximum of the negatives.
        extremes = torch.cat([local[len(mean):len(mean) + len(maximum)],
                              -local[len(mean) + len(maximum):]])  # fmt: skip
        dist.all_reduce(extremes, op=dist.ReduceOp.MAX)
        reduced = [*(summed / self.size).tolist(), *extremes[:len(maximum)].tolist(),
                   *(-extremes[len(maximum):]).tolist()]  # fmt: skip
        return {**values, **dict(zip(names, reduced, strict=True))}


SINGLE = World()
"""A run of one process (``python train_rl.py``): no process group."""


def launched_world() -> World:
    """The world torchrun's environment describes (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``); `SINGLE` without it."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def backend() -> str:
    """gloo for CPU tensors, with NCCL for CUDA tensors where this torch has both."""
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


@contextlib.contextmanager
def join() -> Iterator[World]:
    """Join the run's process group (torchrun's rendezvous: ``MASTER_ADDR``,
    ``MASTER_PORT``) for the duration of the block; a single process joins nothing."""
    world = launched_world()
    if not world.distributed:
        yield world
        return
    dist.init_process_group(backend(), rank=world.rank, world_size=world.size)
    try:
        yield world
    finally:
        dist.destroy_process_group()


def to_cpu(value: Any) -> Any:
    """``value`` with every tensor in it (nested in dicts, lists and tuples) on the CPU, so it
    can travel as a Python object between ranks."""
    if isinstance(value, Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {key: to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(item) for item in value)
    return value
