"""Test-wide settings."""

import torch

# One intra-op thread: on a small shared machine torch's thread pool can stall for
# orders of magnitude when another process holds a core; tests measure behaviour, not speed.
torch.set_num_threads(1)
