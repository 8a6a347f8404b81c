"""torch's own context parallelism as the ring's side-by-side anchor (issue #9, item 3): SDPA under
torch.distributed.tensor.experimental.context_parallel (its ring over the job's ranks, causal load
balancing on), timed like our ring: a fixed number of calls, the slowest rank's time."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def torch_cp_times(tokens: int, heads: int, headdim: int, causal: bool, time_ms) -> dict:
    """Forward and forward+backward ms of torch's context-parallel SDPA on `tokens` in total."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.experimental import _attention, context_parallel
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # Its load balancing refuses a full mask; a full mask needs none (every shard has the same work).
    _attention._cp_options.enable_load_balance = causal
    mesh = init_device_mesh("cuda", (dist.get_world_size(),))
    # (1, heads, tokens, headdim) each: SDPA's layout, the whole sequence, sharded in place by the context
    bufs = [torch.randn(1, heads, tokens, headdim, device="cuda", dtype=torch.bfloat16) for _ in range(4)]
    with context_parallel(mesh, buffers=bufs, buffer_seq_dims=[2] * 4, no_restore_buffers=set(bufs)):
        q, k, v, dout = bufs
        q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
        attn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # noqa: E731
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]):
            with torch.no_grad():
                fwd = time_ms(attn)
            fwdbwd = time_ms(lambda: torch.autograd.grad(attn(), (q, k, v), dout))
    return dict(fwd_ms=fwd, fwdbwd_ms=fwdbwd)
