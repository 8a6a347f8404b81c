"""Local attention as torch.library custom ops: one op per direction, with fake implementations, so
autograd and torch.compile see `ringfa3::attn_fwd` / `ringfa3::attn_bwd` and nothing inside them."""
from __future__ import annotations

import torch
from torch import Tensor

from .backends import BACKENDS, resolve, resolve_backward
from .checks import check_qkv, check_window, resolve_scale


@torch.library.custom_op("ringfa3::attn_fwd", mutates_args=())
def _attn_fwd(q: Tensor, k: Tensor, v: Tensor, causal: bool, softmax_scale: float, window_left: int,
              window_right: int, backend: str, out_fp32: bool, deterministic: bool,
              auto_backward: bool) -> tuple[Tensor, Tensor]:
    # deterministic, auto_backward: kept for the backward (forward kernels are repeatable either way;
    # auto_backward: the backward picks its own backend, backends.resolve_backward)
    out, lse = BACKENDS[backend].forward(q, k, v, causal, softmax_scale, (window_left, window_right), out_fp32)
    return out.to(torch.float32 if out_fp32 else q.dtype).contiguous(), lse.contiguous()


@_attn_fwd.register_fake
def _(q, k, v, causal, softmax_scale, window_left, window_right, backend, out_fp32, deterministic, auto_backward):
    b, s, h, _ = q.shape
    out = q.new_empty(q.shape, dtype=torch.float32 if out_fp32 else q.dtype)
    return out, q.new_empty((b, h, s), dtype=torch.float32)


@torch.library.custom_op("ringfa3::attn_bwd", mutates_args=())
def _attn_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, causal: bool,
              softmax_scale: float, window_left: int, window_right: int, backend: str,
              grads_fp32: bool, deterministic: bool) -> tuple[Tensor, Tensor, Tensor]:
    grads = BACKENDS[backend].backward(dout, q, k, v, out, lse, causal, softmax_scale,
                                       (window_left, window_right), grads_fp32, deterministic)
    dtype = torch.float32 if grads_fp32 else q.dtype
    return tuple(g.to(dtype).contiguous() for g in grads)


@_attn_bwd.register_fake
def _(dout, q, k, v, out, lse, causal, softmax_scale, window_left, window_right, backend, grads_fp32,
      deterministic):
    dt = torch.float32 if grads_fp32 else q.dtype
    return q.new_empty(q.shape, dtype=dt), k.new_empty(k.shape, dtype=dt), v.new_empty(v.shape, dtype=dt)


def _setup(ctx, inputs, output):
    q, k, v, causal, scale, wl, wr, backend, _, deterministic, auto_backward = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.args = (causal, scale, wl, wr, backend, deterministic, auto_backward)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse = ctx.saved_tensors
    causal, scale, wl, wr, backend, deterministic, auto_backward = ctx.args
    backend = resolve_backward(BACKENDS[backend], q, k, v, causal, (wl, wr), deterministic, auto_backward).name
    dq, dk, dv = _attn_bwd(dout, q, k, v, out, lse, causal, scale, wl, wr, backend, False, deterministic)
    return dq, dk, dv, None, None, None, None, None, None, None, None


_attn_fwd.register_autograd(_backward, setup_context=_setup)


def attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, softmax_scale: float | None = None,
              window: tuple[int, int] = (-1, -1), backend: str = "auto",
              precision: str = "native", deterministic: bool = False) -> tuple[Tensor, Tensor]:
    """Local attention. q (b, s_q, h, d); k, v (b, s_k, h_kv, d).

    Returns out (b, s_q, h, d) in q's dtype and lse (b, h, s_q) float32, the natural log of each row's
    softmax denominator of the scaled scores (-inf, with out 0, for rows that see no key). Causal and
    window masks are aligned bottom-right when s_q != s_k. Differentiable in q, k, v, except with
    precision='fp8' (e4m3 with incoherent processing, ops/fp8.py: forward only). deterministic=True:
    a backend whose results, gradients included, are bitwise repeatable.
    """
    check_qkv(q, k, v)
    window = check_window(window)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    scale = resolve_scale(softmax_scale, q.shape[-1])
    impl = resolve(backend, q, k, v, causal, window, deterministic, precision=precision)
    return _attn_fwd(q, k, v, causal, scale, window[0], window[1], impl.name, False, deterministic,
                     backend == "auto")


def attention_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                       causal: bool = False, softmax_scale: float | None = None,
                       window: tuple[int, int] = (-1, -1), backend: str = "auto", deterministic: bool = False):
    """(dq, dk, dv) of `attention`, given its (or a merged, global) out and lse."""
    check_qkv(q, k, v)
    window = check_window(window)
    if dout.shape != q.shape or out.shape != q.shape:
        raise ValueError(f"dout {tuple(dout.shape)} and out {tuple(out.shape)} must have q's shape {tuple(q.shape)}")
    if lse.shape != (q.shape[0], q.shape[2], q.shape[1]):
        raise ValueError(f"lse must be (batch, nheads, seqlen_q) = {(q.shape[0], q.shape[2], q.shape[1])}, got {tuple(lse.shape)}")
    scale = resolve_scale(softmax_scale, q.shape[-1])
    impl = resolve_backward(resolve(backend, q, k, v, causal, window, deterministic), q, k, v, causal, window,
                            deterministic, auto=backend == "auto")
    return _attn_bwd(dout, q, k, v, out, lse, causal, scale, window[0], window[1], impl.name, False,
                     deterministic)
