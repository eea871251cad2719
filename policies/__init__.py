"""Memory policies: observation encoder, actor-critic heads and memory cores."""
