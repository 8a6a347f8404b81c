"""ringfa3: FlashAttention-3-class attention with LSE, composed into ring / context-parallel attention."""
from .ops import attention
from .parallel import ring_flash_attn_func, shard, unshard
from .nn import RingFlashAttention

__all__ = ["attention", "ring_flash_attn_func", "shard", "unshard", "RingFlashAttention"]
__version__ = "0.1.0"
