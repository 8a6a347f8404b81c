"""Context parallelism, kernel-agnostic: layouts, the ring exchange, float32 LSE merging, ring attention."""
from .comm import world_and_rank
from .layout import LAYOUTS, global_positions, local_positions, shard, unshard
from .merge import merge_into
from .ring import ring_flash_attn_func
from .varlen import ring_flash_attn_varlen_func, shard_varlen, unshard_varlen
from .ulysses import ulysses_attn_func
from .hybrid import (hybrid_attn_func, hybrid_groups, hybrid_local_positions, hybrid_positions, hybrid_shard,
                     hybrid_unshard)
from .planner import Plan, context_parallel_attn, plan_strategy

__all__ = ["ulysses_attn_func", "hybrid_attn_func", "hybrid_groups", "hybrid_local_positions", "hybrid_positions",
           "hybrid_shard", "hybrid_unshard", "Plan", "context_parallel_attn", "plan_strategy",
           "LAYOUTS", "global_positions", "local_positions", "shard", "unshard", "merge_into",
           "ring_flash_attn_func", "ring_flash_attn_varlen_func", "shard_varlen", "unshard_varlen", "world_and_rank"]
