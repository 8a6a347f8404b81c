"""Exact merging of partial attention results through their log-sum-exp, in float32.

The merge itself lives in the ops layer (ringfa3.ops.merge), where the batched block entry needs it too;
it is re-exported here for the ring and for callers that import it from ringfa3.parallel."""
from ringfa3.ops.merge import merge_into

__all__ = ["merge_into"]
