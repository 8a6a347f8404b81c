"""The `cudnn` and `flash` backends: torch's fused attention ops that return the LSE.

Both take (b, h, s, d) and equal head counts; the layout change, the GQA expansion (local only: K/V
travel the ring unexpanded) and the LSE shape are converted here, in one place. Their causal mask is
aligned top-left, so they serve causal attention only when s_q == s_k, and no sliding window.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .masks import is_masked

aten = torch.ops.aten


def _bhsd(x: Tensor, groups: int = 1) -> Tensor:
    """(b, s, h, d) -> (b, h * groups, s, d), each head repeated `groups` times (GQA)."""
    if groups > 1:
        x = x.repeat_interleave(groups, dim=2)
    return x.transpose(1, 2)


def _bshd(x: Tensor) -> Tensor:
    return x.transpose(1, 2)


def _reduce_groups(dx: Tensor, groups: int) -> Tensor:
    """(b, h_kv * groups, s, d) gradient of expanded heads -> (b, s, h_kv, d)."""
    if groups > 1:
        b, h, s, d = dx.shape
        dx = dx.float().view(b, h // groups, groups, s, d).sum(2)
    return _bshd(dx)


class AtenBackend:
    """One of torch's LSE-returning fused attention ops (kind 'cudnn' or 'flash')."""

    def __init__(self, name: str):
        self.name = name

    def unsupported(self, q: Tensor, k: Tensor, v: Tensor, causal: bool, window) -> str | None:
        if q.device.type != "cuda":
            return f"backend {self.name!r} needs CUDA tensors (got {q.device.type}); use backend='reference' on CPU"
        if q.dtype not in (torch.float16, torch.bfloat16):
            return f"backend {self.name!r} needs float16 or bfloat16 (got {q.dtype})"
        if q.shape[-1] > 256 or q.shape[-1] % 8 != 0:
            return f"backend {self.name!r} needs headdim a multiple of 8 up to 256 (got {q.shape[-1]})"
        if is_masked(False, window):
            return f"backend {self.name!r} has no sliding window; use backend='reference' (or 'sm90')"
        if causal and q.shape[1] != k.shape[1]:
            return f"backend {self.name!r} aligns causal masks top-left, so needs seqlen_q == seqlen_k for causal"
        return None

    def forward(self, q, k, v, causal: bool, scale: float, window, out_fp32: bool):
        groups = q.shape[2] // k.shape[2]
        qt, kt, vt = _bhsd(q), _bhsd(k, groups), _bhsd(v, groups)
        if self.name == "cudnn":
            res = aten._scaled_dot_product_cudnn_attention(qt, kt, vt, None, True, 0.0, causal, False, scale=scale)
        else:
            res = aten._scaled_dot_product_flash_attention(qt, kt, vt, 0.0, causal, False, scale=scale)
        out, lse = res[0], res[1]
        lse = lse.reshape(q.shape[0], q.shape[2], q.shape[1]).float()  # cudnn: (b, h, s, 1) -> (b, h, s)
        return _bshd(out), lse  # out_fp32 has nothing to keep here: the op's output is already rounded

    def backward(self, dout, q, k, v, out, lse, causal: bool, scale: float, window, grads_fp32: bool = False):
        groups = q.shape[2] // k.shape[2]
        qt, kt, vt = _bhsd(q), _bhsd(k, groups), _bhsd(v, groups)
        dot, ot = _bhsd(dout.to(q.dtype)), _bhsd(out.to(q.dtype))
        sq, sk = q.shape[1], k.shape[1]
        if self.name == "cudnn":
            unused = torch.zeros((), dtype=torch.int64, device=q.device)  # philox seed/offset: no dropout
            dq, dk, dv = aten._scaled_dot_product_cudnn_attention_backward(
                dot, qt, kt, vt, ot, lse.unsqueeze(-1).contiguous(), unused, unused, None, None, None,
                sq, sk, 0.0, causal, scale=scale)
        else:
            unused = torch.empty(0, dtype=torch.int64, device=q.device)
            dq, dk, dv = aten._scaled_dot_product_flash_attention_backward(
                dot, qt, kt, vt, ot, lse.contiguous(), None, None, sq, sk, 0.0, causal, unused, unused,
                scale=scale)
        dq, dk, dv = _bshd(dq), _reduce_groups(dk, groups), _reduce_groups(dv, groups)
        if grads_fp32:  # already rounded by the op: hand them over as they are, the caller accumulates
            return dq, dk, dv
        return dq, dk.to(k.dtype), dv.to(v.dtype)
