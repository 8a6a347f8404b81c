"""Context parallelism, kernel-agnostic: layouts, the ring exchange, float32 LSE merging, ring attention."""
from .comm import world_and_rank
from .layout import LAYOUTS, global_positions, local_positions, shard, unshard
from .merge import merge_into
from .ring import ring_flash_attn_func
from .varlen import ring_flash_attn_varlen_func, shard_varlen, unshard_varlen

__all__ = ["LAYOUTS", "global_positions", "local_positions", "shard", "unshard", "merge_into",
           "ring_flash_attn_func", "ring_flash_attn_varlen_func", "shard_varlen", "unshard_varlen", "world_and_rank"]
