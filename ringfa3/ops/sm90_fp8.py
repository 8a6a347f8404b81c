"""The `sm90_fp8` backend: the e4m3 forward kernel of the sm90 library (dtype 2 of the same C entry),
computing what ops/fp8.py specifies. Here, in torch, each call:
- rotates Q and K (incoherent processing);
- quantizes Q per 128 query rows, K per 128 key rows and V per head;
- lays V out as the kernel's V^T (fp8.v_transposed).
The kernel then runs S = Q K^T and O = P V on e4m3 tensor cores with float32 scores, softmax and
accumulators, and writes out (bf16, or fp32) and the float32 lse. Forward only.

Checked on an H200 against float64 and reference_fp8 (bench/NOTES-fp8.md); first in FP8_AUTO_ORDER.
"""
from __future__ import annotations

import ctypes
import math
from typing import NamedTuple

import torch

from . import fp8
from .sm90 import Sm90Backend, _strides2, _strides3

_E4M3 = 2   # RingFa3FwdArgs.dtype
_HEAD_DIMS = (128, 256)
_SCALE_ROWS = 128   # kFp8ScaleRows in csrc/kernel_traits.h


class Sm90Fp8Backend:
    name = "sm90_fp8"
    precision = "fp8"
    deterministic = True
    has_backward = False
    backward_error = fp8.BACKWARD_ERROR

    def __init__(self, sm90: Sm90Backend):
        self._sm90 = sm90

    def unsupported(self, q, k, v, causal=False, window=(-1, -1)):
        if q.dtype not in (torch.bfloat16, torch.float16) or k.dtype != q.dtype or v.dtype != q.dtype:
            return "sm90_fp8 quantizes bf16 or fp16 q, k, v of one dtype"
        why = self._sm90.unsupported(q, k, v, causal, window)
        if why:
            return why.replace("sm90", "sm90_fp8")
        if q.shape[-1] not in _HEAD_DIMS:
            return f"sm90_fp8 supports head_dim in {_HEAD_DIMS}, got {q.shape[-1]}"
        return None

    def prepare(self, q, k, v, seed=0):
        """The kernel's inputs: rotated, quantized Q and K, V^T, and their scales (see fp8.py)."""
        signs = fp8.random_signs(q.shape[-1], seed, q.device)
        q8, q_scale = fp8.quantize(fp8.rotate(q.float(), signs), _SCALE_ROWS)   # (b, s_q, h, d), (b, n_q, h)
        k8, k_scale = fp8.quantize(fp8.rotate(k.float(), signs), _SCALE_ROWS)   # (b, s_k, h_kv, d), (b, n_k, h_kv)
        v8, v_scale = fp8.quantize(v, None)                                     # (b, s_k, h_kv, d), (b, 1, h_kv)
        return Fp8Inputs(q8, k8, fp8.v_transposed(v8), q_scale.contiguous(), k_scale.contiguous(),
                         v_scale.contiguous())

    def forward(self, q, k, v, causal=False, softmax_scale=None, window=(-1, -1), out_fp32=False, seed=0):
        why = self.unsupported(q, k, v, causal, window)
        if why:
            raise ValueError(why)
        if q.shape[0] * q.shape[1] == 0:
            b, s_q, h, d = q.shape
            return (torch.empty(b, s_q, h, d, device=q.device, dtype=torch.float32 if out_fp32 else q.dtype),
                    torch.full((b, h, s_q), -math.inf, device=q.device))
        out, lse = self.run(self.prepare(q, k, v, seed), causal, softmax_scale, window, out_fp32)
        return (out if out_fp32 else out.to(q.dtype)), lse

    def forward_merge(self, q, k, v, causal, softmax_scale, window, out_acc, lse_acc, seed=0):
        """Merge this block into the running fp32 (out_acc (b, s_q, h, d), lse_acc (b, h, s_q)) in the
        kernel's epilogue, as the 16-bit kernel does for a ring step."""
        why = self.unsupported(q, k, v, causal, window)
        if why:
            raise ValueError(why)
        self._sm90.merge_call(q, out_acc, lse_acc,
                              lambda: self._args(self.prepare(q, k, v, seed), causal, softmax_scale, window))

    def run(self, x: "Fp8Inputs", causal=False, softmax_scale=None, window=(-1, -1), out_fp32=False):
        """The kernel alone on prepared inputs: out (b, s_q, h, d) bf16 (fp32 if out_fp32), lse (b, h, s_q)."""
        b, s_q, h, d = x.q8.shape
        out = torch.empty(b, s_q, h, d, device=x.q8.device, dtype=torch.float32 if out_fp32 else torch.bfloat16)
        lse = torch.empty(b, h, s_q, device=x.q8.device, dtype=torch.float32)
        a = self._args(x, causal, softmax_scale, window)
        a.out, a.lse, a.out_fp32 = out.data_ptr(), lse.data_ptr(), int(out_fp32)
        a.o_stride, a.lse_stride = _strides3(out), _strides2(lse)
        self._sm90._call(a, x.q8.device)
        return out, lse

    def _args(self, x: "Fp8Inputs", causal, softmax_scale, window):
        a = self._sm90._args(x.q8, x.k8, x.k8, causal, softmax_scale, window, dtype=_E4M3)
        a.v = x.vt.data_ptr()
        a.v_stride = (ctypes.c_int64 * 3)(x.vt.stride(0), x.vt.stride(2), x.vt.stride(1))   # (batch, d, head)
        a.q_scale, a.k_scale, a.v_scale = x.q_scale.data_ptr(), x.k_scale.data_ptr(), x.v_scale.data_ptr()
        return a


class Fp8Inputs(NamedTuple):
    q8: torch.Tensor        # (b, s_q, h, d) e4m3, rotated
    k8: torch.Tensor        # (b, s_k, h_kv, d) e4m3, rotated
    vt: torch.Tensor        # (b, h_kv, d, s_v) e4m3, fp8.v_transposed
    q_scale: torch.Tensor   # (b, ceil(s_q / 128), h) float32
    k_scale: torch.Tensor   # (b, ceil(s_k / 128), h_kv) float32
    v_scale: torch.Tensor   # (b, 1, h_kv) float32
