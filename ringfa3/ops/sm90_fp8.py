"""The `sm90_fp8` backend: the e4m3 forward kernel of the sm90 library (dtype 2 of the same C entry),
computing what ops/fp8.py specifies. Each call first prepares the inputs with the library's prep
kernels (csrc/fp8_prep.cu), bitwise what fp8.py computes on the GPU:
- rotates Q and K (incoherent processing) and quantizes them, one pass each: Q per query tile of
  the e4m3 launch (128 rows: ringfa3_sm90_fp8_query_rows), K per key block of the launch that will
  run (224 keys at hd128 from 4k keys without a window, else 128: ringfa3_sm90_fp8_key_rows), so
  each block has one scale;
- quantizes V per head (its scale from one torch reduction) and lays it out as the kernel's V^T
  (fp8.v_transposed), one pass.
The kernel then runs S = Q K^T and O = P V on e4m3 tensor cores with float32 scores, softmax and
accumulators, and writes out (bf16, or fp32) and the float32 lse. Forward only.

Checked on an H200 against float64 and reference_fp8 (bench/NOTES-fp8.md); first in FP8_AUTO_ORDER.
"""
from __future__ import annotations

import ctypes
import functools
import math
from typing import NamedTuple

import torch

from . import fp8
from .masks import effective_window
from .sm90 import _DTYPES, Sm90Backend, _Fp8RowsArgs, _Fp8VArgs, _strides2, _strides3, on_device, raw_stream

_E4M3 = 2   # RingFa3FwdArgs.dtype
_HEAD_DIMS = (128, 256)


@functools.lru_cache(maxsize=64)
def signs_on(head_dim: int, seed: int, device: torch.device) -> torch.Tensor:
    """fp8.random_signs on `device`, made once per (head_dim, seed, device): (head_dim,) float32 +-1."""
    return fp8.random_signs(head_dim, seed, device)


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
        if not getattr(self._sm90._lib, "has_fp8_prep", False):
            return "this build of the sm90 library has no fp8 prep kernels (rebuild with scripts/build_csrc.py)"
        return None

    def key_rows(self, d, s_k, causal=False, window=(-1, -1)):
        """Keys per K scale: the key block the e4m3 launch takes for this shape and mask."""
        left, right = effective_window(causal, window)
        return self._sm90._lib.ringfa3_sm90_fp8_key_rows(d, s_k, int(left), int(right))

    def query_rows(self, d):
        """Query rows per Q scale: the e4m3 launch's query tile."""
        return self._sm90._lib.ringfa3_sm90_fp8_query_rows(d)

    def prepare(self, q, k, v, seed=0, causal=False, window=(-1, -1)):
        """The kernel's inputs for attention with this mask: rotated, quantized Q and K, V^T, and their
        scales, on the current stream; bitwise fp8.quantize(fp8.rotate(x.float(), signs), rows)
        (query_rows for Q, key_rows for K) and fp8.v_transposed(fp8.quantize(v, None))."""
        why = self.unsupported(q, k, v, causal, window)
        if why:
            raise ValueError(why)
        return self._prepare(q, k, v, seed, causal, window)

    def _prepare(self, q, k, v, seed, causal, window):
        """prepare, on inputs the caller has checked (forward, forward_merge)."""
        signs = signs_on(q.shape[-1], seed, q.device)
        k_rows = self.key_rows(q.shape[-1], k.shape[1], causal, window)
        q8, q_scale = self._quantize_rows(q, signs, self.query_rows(q.shape[-1]))   # (b, s_q, h, d), (b, n_q, h)
        k8, k_scale = self._quantize_rows(k, signs, k_rows)    # (b, s_k, h_kv, d), (b, n_k, h_kv)
        # fp8.quantize(v, None)'s scale: the |v| max per head is exact in v's dtype, and the division
        # is the same torch op. vector_norm(inf) takes it in one pass, without a |v| temporary.
        amax = torch.linalg.vector_norm(v, math.inf, dim=(1, 3)).float()                   # (b, h_kv)
        v_scale = torch.where(amax > 0, amax / fp8.E4M3_MAX, torch.ones_like(amax))[:, None]   # (b, 1, h_kv)
        return Fp8Inputs(q8, k8, self._v_transposed(v, v_scale), q_scale, k_scale, v_scale, k_rows)

    def _quantize_rows(self, x, signs, rows):
        """x (b, s, h, d) rotated by signs (None: not rotated), as e4m3 codes (b, s, h, d) and scales
        (b, ceil(s / rows), h)."""
        b, s, h, d = x.shape
        codes = torch.empty(b, s, h, d, device=x.device, dtype=fp8.E4M3)                   # (b, s, h, d)
        scale = torch.empty(b, -(-s // rows), h, device=x.device, dtype=torch.float32)   # (b, n, h)
        a = _Fp8RowsArgs(x.data_ptr(), None if signs is None else signs.data_ptr(), codes.data_ptr(),
                         scale.data_ptr(), _strides3(x), b, s, h, d, _DTYPES[x.dtype], rows,
                         raw_stream(x.device))
        self._prep("ringfa3_sm90_fp8_quantize_rows", a, x.device)
        return codes, scale

    def _v_transposed(self, v, v_scale):
        """V (b, s_k, h_kv, d) divided by v_scale (b, 1, h_kv), as the kernel's V^T (b, h_kv, d, s_v) e4m3."""
        b, s_k, h_kv, d = v.shape
        vt = torch.empty(b, h_kv, d, -(-s_k // 16) * 16, device=v.device, dtype=fp8.E4M3)   # (b, h_kv, d, s_v)
        a = _Fp8VArgs(v.data_ptr(), v_scale.data_ptr(), vt.data_ptr(), _strides3(v), b, s_k, h_kv, d,
                      _DTYPES[v.dtype], raw_stream(v.device))
        self._prep("ringfa3_sm90_fp8_v_transpose", a, v.device)
        return vt

    def _prep(self, entry, a, device):
        lib = self._sm90._lib
        with on_device(device):
            rc = getattr(lib, entry)(ctypes.byref(a))
        if rc != 0:
            msg = lib.ringfa3_sm90_fp8_prep_last_error().decode()
            raise RuntimeError(f"ringfa3 sm90_fp8 prep failed ({rc}): {msg}")

    def forward(self, q, k, v, causal=False, softmax_scale=None, window=(-1, -1), out_fp32=False, seed=0):
        why = self.unsupported(q, k, v, causal, window)
        if why:
            raise ValueError(why)
        if q.shape[0] * q.shape[1] == 0:
            b, s_q, h, d = q.shape
            return (torch.empty(b, s_q, h, d, device=q.device, dtype=torch.float32 if out_fp32 else q.dtype),
                    torch.full((b, h, s_q), -math.inf, device=q.device))
        out, lse = self.run(self._prepare(q, k, v, seed, causal, window), causal, softmax_scale, window, out_fp32)
        return (out if out_fp32 else out.to(q.dtype)), lse

    def forward_merge(self, q, k, v, causal, softmax_scale, window, out_acc, lse_acc, seed=0):
        """Merge this block into the running fp32 (out_acc (b, s_q, h, d), lse_acc (b, h, s_q)) in the
        kernel's epilogue, as the 16-bit kernel does for a ring step."""
        why = self.unsupported(q, k, v, causal, window)
        if why:
            raise ValueError(why)
        self._sm90.merge_call(q, out_acc, lse_acc,
                              lambda: self._args(self._prepare(q, k, v, seed, causal, window), causal, softmax_scale,
                                                 window))

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
        rows = self.key_rows(x.q8.shape[-1], x.k8.shape[1], causal, window)
        if x.k_rows != rows:
            raise ValueError(f"these fp8 inputs were prepared with one K scale per {x.k_rows} keys, but this mask "
                             f"runs {rows}-key blocks: call prepare() with the causal and window of the call")
        a = self._sm90._args(x.q8, x.k8, x.k8, causal, softmax_scale, window, dtype=_E4M3)
        a.v = x.vt.data_ptr()
        a.v_stride = (ctypes.c_int64 * 3)(x.vt.stride(0), x.vt.stride(2), x.vt.stride(1))   # (batch, d, head)
        a.q_scale, a.k_scale, a.v_scale = x.q_scale.data_ptr(), x.k_scale.data_ptr(), x.v_scale.data_ptr()
        return a


class Fp8Inputs(NamedTuple):
    q8: torch.Tensor        # (b, s_q, h, d) e4m3, rotated
    k8: torch.Tensor        # (b, s_k, h_kv, d) e4m3, rotated
    vt: torch.Tensor        # (b, h_kv, d, s_v) e4m3, fp8.v_transposed
    q_scale: torch.Tensor   # (b, ceil(s_q / query_rows), h) float32
    k_scale: torch.Tensor   # (b, ceil(s_k / k_rows), h_kv) float32
    v_scale: torch.Tensor   # (b, 1, h_kv) float32
    k_rows: int             # keys per K scale (Sm90Fp8Backend.key_rows)
