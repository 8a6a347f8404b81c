from .attention import RingFlashAttention
from .rope import apply_rope, rope_cos_sin

__all__ = ["RingFlashAttention", "apply_rope", "rope_cos_sin"]
