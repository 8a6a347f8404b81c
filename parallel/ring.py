"""Ring attention: K/V travel the ring while each rank computes its queries against the visiting shard.

Forward: at step t rank r holds the K/V of rank r - t; the next shard is already in flight (double
buffering) while the current one is computed. Partial (out, lse) merge into a float32 accumulator and
are cast once at the end. Backward: K/V travel the ring again; the dK/dV of the visiting shard are
accumulated in float32 and travel with it, and go home to their owner after the last step. dQ stays
local. Each step's blocks (the plan's cut of the mask) go to the local op together: one launch per step
and direction where the backend has a batched kernel (ops/blocks.py). Steps after the last one at which
any rank has work (short windows, short documents) are not run, so their K/V are not sent.
Kernel-agnostic: any backend that returns (out, lse) and can take the global (out, lse) back.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ringfa3.ops import BACKENDS, attention, resolve_backend
from ringfa3.ops.backends import resolve_backward
from ringfa3.ops.blocks import backward_rows, forward_blocks
from ringfa3.ops.checks import resolve_scale

from .checks import check_cp_inputs
from .comm import Ring
from .layout import check_seqlen
from .plan import NO_WINDOW, last_step, ring_blocks
from .side_stream import SideStream


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale, ring, impl, mask, deterministic, auto_backward):
        layout, causal, window, docs = mask
        world, rank, s = ring.world, ring.rank, q.shape[1]
        last = last_step(s, world, layout, causal, window, docs)
        b, _, h, d = q.shape
        out_acc = torch.zeros(b, s, h, d, dtype=torch.float32, device=q.device)
        lse_acc = torch.full((b, h, s), float("-inf"), dtype=torch.float32, device=q.device)
        kv = own_kv = torch.stack([k, v])  # (2, b, s, h_kv, d): one message per step, kept for the backward
        comm = ring.exchange(0) if last > 0 else None
        for step in range(last + 1):
            if step < last:
                comm.start(kv)
            blocks = ring_blocks(s, world, rank, (rank - step) % world, layout, causal, window, docs)
            forward_blocks(impl, q, kv[0], kv[1], blocks, scale, out_acc, lse_acc)  # one launch per step
            if step < last:
                kv = comm.wait()
        out = out_acc.to(q.dtype)
        ctx.save_for_backward(q, own_kv, out, lse_acc)
        ctx.cfg = (scale, ring, impl, mask, deterministic, auto_backward)
        ctx.mark_non_differentiable(lse_acc)
        return out, lse_acc

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, kv, out, lse = ctx.saved_tensors
        scale, ring, impl, (layout, causal, window, docs), deterministic, auto_backward = ctx.cfg
        world, rank, s = ring.world, ring.rank, q.shape[1]
        last = last_step(s, world, layout, causal, window, docs)
        impl = resolve_backward(impl, q, kv[0], kv[1], causal, window, deterministic, auto_backward)
        rows = backward_rows(impl, dout, q, out, lse, scale, deterministic)   # dQ summed over the steps
        kv_comm = ring.exchange(1) if last > 0 else None
        dkv_comm = ring.exchange(2) if last > 0 else None
        lane = SideStream(q.device)  # the dK/dV partials' adds and transfers run beside the kernels
        for step in range(last + 1):
            if step < last:
                kv_comm.start(kv)
            blocks = ring_blocks(s, world, rank, (rank - step) % world, layout, causal, window, docs)
            # (k0, k1, dk, dv) pieces of the visiting shard from our queries
            grads = rows.add(kv[0], kv[1], blocks)
            # The float32 dK/dV of this shard so far, from the ranks before us; waiting only after our
            # compute keeps its transfer hidden. Our part is added on the rows we touched, then it moves on.
            with lane.after_main(*(t for g in grads for t in g[2:])):
                dkv = dkv_comm.wait() if step > 0 else torch.zeros(kv.shape, dtype=torch.float32, device=q.device)
                for k0, k1, dkb, dvb in grads:
                    dkv[0][:, k0:k1] += dkb
                    dkv[1][:, k0:k1] += dvb
                if step < last:
                    dkv_comm.start(dkv)
            if step < last:
                kv = kv_comm.wait()
        if last > 0:  # we hold the finished dK/dV of rank - last: send it home, receive ours
            with lane.after_main():
                home = ring.exchange(3, shift=-last)
                home.start(dkv)
                dkv = home.wait()
        lane.join(dkv)
        dkv = dkv.to(kv.dtype)
        return rows.finish(q.dtype), dkv[0], dkv[1], None, None, None, None, None, None


def ring_attention(q, k, v, causal: bool, scale: float, ring, layout: str, impl, window=NO_WINDOW, doc_bounds=None,
                   deterministic: bool = False, auto_backward: bool = False):
    """The engine without argument checks: `ring` is a Ring (or a VirtualRing), `impl` a backend;
    q, k, v (b, s_local, h(_kv), d). doc_bounds: global document starts plus the end (packed batches).
    deterministic: the local backward takes its fixed-order mode where it has one. auto_backward: `impl`
    was backend='auto', and the backward picks its own (backends.resolve_backward)."""
    if ring.world == 1 and doc_bounds is None and BACKENDS.get(impl.name) is impl:
        # Every layout is the identity on one rank: the registered local op alone, without float32
        # accumulators or merges.
        return attention(q, k, v, causal, scale, tuple(window), backend="auto" if auto_backward else impl.name,
                         precision=getattr(impl, "precision", "native"), deterministic=deterministic)
    return _RingAttention.apply(q, k, v, scale, ring, impl, (layout, causal, tuple(window), doc_bounds), deterministic,
                                auto_backward)


def check_ring_inputs(q, k, v, causal, layout, window, group):
    """Argument checks of the ring entry points (before any communication, on every rank)."""
    window = check_cp_inputs(q, k, v, causal, layout, window)
    ring = Ring(group)
    check_seqlen(q.shape[1] * ring.world, ring.world, layout,
                 name=f"global seqlen (q.shape[1]={q.shape[1]} x world {ring.world})")
    return ring, window


def ring_flash_attn_func(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, softmax_scale: float | None = None,
                         group=None, layout: str = "zigzag", return_lse: bool = False, backend: str = "auto",
                         window: tuple[int, int] = NO_WINDOW, deterministic: bool = False,
                         precision: str = "native"):
    """Attention of this rank's queries against the whole sequence spread over `group`.

    q (b, s_local, h, d), k/v (b, s_local, h_kv, d): this rank's tokens in `layout` (see `shard`).
    Causal masking and the sliding `window` (left, right) refer to global positions. Returns out
    (b, s_local, h, d), and with return_lse the global lse (b, h, s_local) float32. Gradients flow to
    q, k, v of every rank. deterministic=True: bitwise repeatable results (fixed reduction order and a
    deterministic local backend). precision='fp8': every local block in FP8 e4m3 (ops/fp8.py), merged
    in float32; forward only.
    """
    ring, window = check_ring_inputs(q, k, v, causal, layout, window, group)
    scale = resolve_scale(softmax_scale, q.shape[-1])
    impl = resolve_backend(backend, q, k, v, causal, window, deterministic=deterministic, precision=precision)
    out, lse = ring_attention(q, k, v, causal, scale, ring, layout, impl, window, deterministic=deterministic,
                              auto_backward=backend == "auto")
    return (out, lse) if return_lse else out
