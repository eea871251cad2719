"""Test-wide settings and helpers."""

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from agents.run_dir import RunDir

# One intra-op thread: on a small shared machine torch's thread pool can stall for
# orders of magnitude when another process holds a core; tests measure behaviour, not speed.
torch.set_num_threads(1)


@pytest.fixture
def weights_hash() -> Callable[[Path], str]:
    """A run directory's latest policy weights, hashed: equal hashes, the same weights to
    the bit."""

    def digest(run_dir: Path) -> str:
        policy = RunDir.open(run_dir).load_checkpoint()["policy"]
        hashed = hashlib.sha256()
        for key in sorted(policy):
            hashed.update(policy[key].contiguous().numpy().tobytes())
        return hashed.hexdigest()

    return digest
