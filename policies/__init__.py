"""Memory policies: observation encoder, actor-critic heads and memory cores.

``make_policy(kind, observation_space, num_actions, **config)`` builds a `MemoryPolicy`
whose core is Expire-Span (``"expire_span"``), Transformer-XL (``"trxl"``) or an LSTM
(``"lstm"``); all share the `State` and `PolicyOutput` contract (`policies.policy`).
"""

from policies.config import (
    POLICY_KINDS,
    SPAN_LR_SCALE,
    ExpireSpanConfig,
    LSTMConfig,
    PolicyConfig,
    TransformerConfig,
    TransformerXLConfig,
)
from policies.encoder import ObservationEncoder
from policies.expire_span import expire_span_mask
from policies.policy import MemoryPolicy, PolicyOutput, make_policy
from policies.state import State

__all__ = [
    "POLICY_KINDS",
    "SPAN_LR_SCALE",
    "ExpireSpanConfig",
    "LSTMConfig",
    "MemoryPolicy",
    "ObservationEncoder",
    "PolicyConfig",
    "PolicyOutput",
    "State",
    "TransformerConfig",
    "TransformerXLConfig",
    "expire_span_mask",
    "make_policy",
]
