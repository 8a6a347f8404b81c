"""Ring attention: K/V travel the ring while each rank computes its queries against the visiting shard.

Forward: at step t rank r holds the K/V of rank r - t; the next shard is already in flight (double
buffering) while the current one is computed. Partial (out, lse) merge into a float32 accumulator and
are cast once at the end. Backward: K/V travel the ring again; the dK/dV of the visiting shard are
accumulated in float32 and travel with it, arriving at their owner after the last step. dQ stays local.
Kernel-agnostic: any backend that returns (out, lse) and can take the global (out, lse) back.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ringfa3.ops import resolve_backend
from ringfa3.ops.checks import check_qkv, resolve_scale

from .comm import Ring
from .layout import check_layout, check_seqlen
from .merge import merge_into
from .plan import ring_blocks

NO_WINDOW = (-1, -1)


def _forward_block(impl, q, k, v, blk, scale, out_acc, lse_acc) -> None:
    qb, kb, vb = q[:, blk.q0:blk.q1], k[:, blk.k0:blk.k1], v[:, blk.k0:blk.k1]
    o_acc, l_acc = out_acc[:, blk.q0:blk.q1], lse_acc[:, :, blk.q0:blk.q1]
    if hasattr(impl, "forward_merge"):
        impl.forward_merge(qb, kb, vb, blk.causal, scale, NO_WINDOW, o_acc, l_acc)
    else:
        o, l = impl.forward(qb, kb, vb, blk.causal, scale, NO_WINDOW, True)
        merge_into(o_acc, l_acc, o, l)


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, scale, ring, layout, impl):
        world, rank = ring.world, ring.rank
        b, s, h, d = q.shape
        out_acc = torch.zeros(b, s, h, d, dtype=torch.float32, device=q.device)
        lse_acc = torch.full((b, h, s), float("-inf"), dtype=torch.float32, device=q.device)
        kv = torch.stack([k, v])  # (2, b, s, h_kv, d): one message per step
        comm = ring.exchange(0) if world > 1 else None
        for step in range(world):
            if step + 1 < world:
                comm.start(kv)
            for blk in ring_blocks(s, world, rank, (rank - step) % world, layout, causal):
                _forward_block(impl, q, kv[0], kv[1], blk, scale, out_acc, lse_acc)
            if step + 1 < world:
                kv = comm.wait()
        out = out_acc.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse_acc)
        ctx.cfg = (causal, scale, ring, layout, impl)
        ctx.mark_non_differentiable(lse_acc)
        return out, lse_acc

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        causal, scale, ring, layout, impl = ctx.cfg
        world, rank = ring.world, ring.rank
        s = q.shape[1]
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        kv = torch.stack([k, v])
        kv_comm = ring.exchange(1) if world > 1 else None
        dkv_comm = ring.exchange(2) if world > 1 else None
        for step in range(world):
            if step + 1 < world:
                kv_comm.start(kv)
            grads = []  # (key rows, dk, dv) of the visiting shard from our queries
            for blk in ring_blocks(s, world, rank, (rank - step) % world, layout, causal):
                rows, keys = slice(blk.q0, blk.q1), slice(blk.k0, blk.k1)
                dqb, dkb, dvb = impl.backward(
                    dout[:, rows], q[:, rows], kv[0][:, keys], kv[1][:, keys], out[:, rows],
                    lse[:, :, rows], blk.causal, scale, NO_WINDOW, True)
                dq[:, rows] += dqb
                grads.append((keys, dkb, dvb))
            # The float32 dK/dV of this shard so far, from the ranks before us; waiting only after our
            # compute keeps its transfer hidden. Our part is added on the rows we touched, then it moves on.
            dkv = dkv_comm.wait() if step > 0 else torch.zeros(kv.shape, dtype=torch.float32, device=q.device)
            for keys, dkb, dvb in grads:
                dkv[0][:, keys] += dkb
                dkv[1][:, keys] += dvb
            if world > 1:
                dkv_comm.start(dkv)  # after the last step this reaches the shard's owner
            if step + 1 < world:
                kv = kv_comm.wait()
        if world > 1:
            dkv = dkv_comm.wait()
        return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype), None, None, None, None, None


def ring_flash_attn_func(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, softmax_scale: float | None = None,
                         group=None, layout: str = "zigzag", return_lse: bool = False, backend: str = "auto"):
    """Attention of this rank's queries against the whole sequence spread over `group`.

    q (b, s_local, h, d), k/v (b, s_local, h_kv, d): this rank's tokens in `layout` (see `shard`).
    Causal masking refers to global positions. Returns out (b, s_local, h, d), and with return_lse the
    global lse (b, h, s_local) float32. Gradients flow to q, k, v of every rank.
    """
    check_qkv(q, k, v)
    check_layout(layout)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if k.shape[1] != q.shape[1]:
        raise ValueError(f"ring attention needs local q and k/v of the same length, got {q.shape[1]} and {k.shape[1]}")
    ring = Ring(group)
    world = ring.world
    check_seqlen(q.shape[1] * world, world, layout, name=f"global seqlen (q.shape[1]={q.shape[1]} x world {world})")
    scale = resolve_scale(softmax_scale, q.shape[-1])
    impl = resolve_backend(backend, q, k, v, causal, NO_WINDOW)
    out, lse = ring_attention(q, k, v, causal, scale, ring, layout, impl)
    return (out, lse) if return_lse else out


def ring_attention(q, k, v, causal: bool, scale: float, ring, layout: str, impl):
    """The engine without argument checks: `ring` is a Ring (or a VirtualRing), `impl` a backend."""
    return _RingAttention.apply(q, k, v, causal, scale, ring, layout, impl)
