"""Ring attention and the RingFlashAttention layer under torchrun, checked against one process.

  torchrun --nproc_per_node 4 scripts/ring_demo.py            # gloo on CPU, NCCL when GPUs are there
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from ringfa3 import RingFlashAttention, ring_flash_attn_func, shard, unshard
from ringfa3.ops import attention


def main():
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)  # every rank draws the same full tensors, then keeps its part
    b, s, h, h_kv, d = 2, 256 * world, 8, 2, 64
    q = torch.randn(b, s, h, d, device=device, dtype=dtype)
    k, v = (torch.randn(b, s, h_kv, d, device=device, dtype=dtype) for _ in range(2))

    # ring attention on this rank's zigzag share of the sequence
    q_l, k_l, v_l = (shard(t, dim=1, layout="zigzag").requires_grad_() for t in (q, k, v))
    out_l = ring_flash_attn_func(q_l, k_l, v_l, causal=True, layout="zigzag")
    out_l.float().square().sum().backward()  # gradients reach q, k, v of every rank
    out = unshard(out_l.detach(), dim=1, layout="zigzag")
    want, _ = attention(q, k, v, causal=True)
    err = ((out.float() - want.float()).norm() / want.float().norm()).item()

    # the layer: RoPE on global positions, ring core, projections
    layer = RingFlashAttention(h * d, h, num_kv_heads=h_kv, layout="zigzag").to(device, dtype)
    x = torch.randn(b, s, h * d, device=device, dtype=dtype)
    y = unshard(layer(shard(x, dim=1, layout="zigzag")).detach(), dim=1, layout="zigzag")
    dist.destroy_process_group()  # from here on the layer runs as one process on the whole sequence
    y_one = layer(x).detach()
    layer_err = ((y.float() - y_one.float()).norm() / y_one.float().norm()).item()
    if rank == 0:
        print(f"world {world}: ring vs single-process attention rel err {err:.2e}; layer {layer_err:.2e}")


if __name__ == "__main__":
    main()
