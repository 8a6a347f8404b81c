"""Local attention that returns the per-row log-sum-exp: `attention(q, k, v, ...) -> (out, lse)`."""
from .backends import BACKENDS, resolve as resolve_backend
from .op import attention, attention_backward

__all__ = ["attention", "attention_backward", "resolve_backend", "BACKENDS"]
