"""The `cudnn` and `flash` backends: torch's fused attention ops that return the LSE.

cudnn: aten._scaled_dot_product_cudnn_attention, (b, h, s, d) with equal head counts (the layout change
and the GQA expansion, local only: K/V travel the ring unexpanded, are done here); its causal mask is
aligned top-left, so it serves causal attention only when s_q == s_k, and no sliding window.
flash: torch's FlashAttention-2, aten._flash_attention_forward/_backward, which takes (b, s, h, d), GQA,
bottom-right causal masks and sliding windows natively, and a varlen (cu_seqlens) form that computes
many blocks in one launch (segments.py). Both serve `forward_blocks`/`backward_blocks`: flash always
through the varlen kernel; cudnn loops over its own kernel for steps of a few large blocks
(blocks.few_large: a dense ring step is one big block, where cuDNN is the faster kernel) and hands the
rest (packed documents: one block per document) to FA2's varlen kernel, one launch instead of one per
block.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .blocks import few_large, loop_backward, loop_forward
from .masks import effective_window, is_masked
from .segments import VarlenCall, varlen_backward, varlen_forward

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


def _no_keys_to_neg_inf(lse: Tensor) -> Tensor:
    """FA2 writes lse = +inf on rows that see no key; the contract (and the merge) wants -inf."""
    return torch.where(lse == float("inf"), float("-inf"), lse)


def _no_keys_to_pos_inf(lse: Tensor) -> Tensor:
    """Back to FA2's convention for its backward: exp(s - inf) = 0 on rows that saw no key."""
    return torch.where(lse == float("-inf"), float("inf"), lse).contiguous()


def fa2_varlen_fwd(q: Tensor, k: Tensor, v: Tensor, call: VarlenCall, scale: float):
    """One FA2 varlen forward: q (tq, h, d), k/v (tk, h_kv, d) -> out (tq, h, d), lse (h, tq)."""
    res = aten._flash_attention_forward(q, k, v, call.cu_q, call.cu_k, call.max_q, call.max_k, 0.0, call.causal,
                                        False, scale=scale, window_size_left=call.left, window_size_right=call.right)
    return res[0], res[1]


def fa2_varlen_bwd(dout, q, k, v, out, lse, call: VarlenCall, scale: float):
    """One FA2 varlen backward given the global out and lse (h, tq): (dq, dk, dv) over the packed rows."""
    unused = torch.empty(0, dtype=torch.int64, device=q.device)  # rng state: no dropout
    return aten._flash_attention_backward(dout, q, k, v, out, _no_keys_to_pos_inf(lse), call.cu_q, call.cu_k,
                                          call.max_q, call.max_k, 0.0, call.causal, unused, unused, scale=scale,
                                          window_size_left=call.left, window_size_right=call.right)


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
        if self.name == "flash":
            return None  # FA2: windows and bottom-right causal masks with s_q != s_k are native
        if is_masked(False, window):
            return f"backend {self.name!r} has no sliding window; use backend='flash' (or 'sm90', 'reference')"
        if causal and q.shape[1] != k.shape[1]:
            return f"backend {self.name!r} aligns causal masks top-left, so needs seqlen_q == seqlen_k for causal"
        return None

    def forward(self, q, k, v, causal: bool, scale: float, window, out_fp32: bool):
        if self.name == "flash":
            left, right = effective_window(causal, window)
            res = aten._flash_attention_forward(q, k, v, None, None, q.shape[1], k.shape[1], 0.0, causal, False,
                                                scale=scale, window_size_left=left, window_size_right=right)
            return res[0], _no_keys_to_neg_inf(res[1])  # (b, s, h, d), (b, h, s)
        groups = q.shape[2] // k.shape[2]
        qt, kt, vt = _bhsd(q), _bhsd(k, groups), _bhsd(v, groups)
        res = aten._scaled_dot_product_cudnn_attention(qt, kt, vt, None, True, 0.0, causal, False, scale=scale)
        out, lse = res[0], res[1]
        lse = lse.reshape(q.shape[0], q.shape[2], q.shape[1]).float()  # (b, h, s, 1) -> (b, h, s)
        return _bshd(out), lse  # out_fp32 has nothing to keep here: the op's output is already rounded

    def backward(self, dout, q, k, v, out, lse, causal: bool, scale: float, window, grads_fp32: bool = False,
                 deterministic: bool = False):   # the aten kernels have one mode each
        sq, sk = q.shape[1], k.shape[1]
        if self.name == "flash":
            left, right = effective_window(causal, window)
            unused = torch.empty(0, dtype=torch.int64, device=q.device)
            dq, dk, dv = aten._flash_attention_backward(
                dout.to(q.dtype).contiguous(), q, k, v, out.to(q.dtype), _no_keys_to_pos_inf(lse), None, None,
                sq, sk, 0.0, causal, unused, unused, scale=scale, window_size_left=left, window_size_right=right)
        else:
            groups = q.shape[2] // k.shape[2]
            qt, kt, vt = _bhsd(q), _bhsd(k, groups), _bhsd(v, groups)
            dot, ot = _bhsd(dout.to(q.dtype)), _bhsd(out.to(q.dtype))
            unused = torch.zeros((), dtype=torch.int64, device=q.device)  # philox seed/offset: no dropout
            dq, dk, dv = aten._scaled_dot_product_cudnn_attention_backward(
                dot, qt, kt, vt, ot, lse.unsqueeze(-1).contiguous(), unused, unused, None, None, None,
                sq, sk, 0.0, causal, scale=scale)
            dq, dk, dv = _bshd(dq), _reduce_groups(dk, groups), _reduce_groups(dv, groups)
        if grads_fp32:  # already rounded by the op: hand them over as they are, the caller accumulates
            return dq, dk, dv
        return dq, dk.to(k.dtype), dv.to(v.dtype)

    def _loops(self, blocks) -> bool:
        return self.name == "cudnn" and few_large(blocks)

    def forward_blocks(self, q, k, v, blocks, scale: float, out_acc, lse_acc) -> None:
        if self._loops(blocks):
            return loop_forward(self, q, k, v, blocks, scale, out_acc, lse_acc)
        varlen_forward(fa2_varlen_fwd, q, k, v, blocks, scale, out_acc, lse_acc)

    def backward_blocks(self, dout, q, k, v, out, lse, blocks, scale: float, dq_acc, deterministic=False) -> list:
        if self._loops(blocks):
            return loop_backward(self, dout, q, k, v, out, lse, blocks, scale, dq_acc, deterministic)
        return varlen_backward(fa2_varlen_bwd, dout, q, k, v, out, lse, blocks, scale, dq_acc)
