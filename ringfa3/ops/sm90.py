"""The `sm90` backend: our Hopper forward and backward kernels (csrc/ and csrc/bwd/, built into
ringfa3/lib/libringfa3_sm90.so by scripts/build_csrc.py), loaded with ctypes. Only tensor pointers,
strides and the current stream cross the boundary; the library itself knows nothing of torch.

`BACKEND` is None when the library is absent or CUDA is unavailable; the device capability is checked
per call in `unsupported` (checking it at import would initialize CUDA in every importer).

CUDA graphs: the first call on a device allocates the tile-scheduler counters (cudaMalloc), so make
one call outside capture before capturing. Forward results are bitwise repeatable (no atomics in the
math; the dynamic tile order only changes which CTA computes a tile); backward results when asked
with deterministic=True (fixed-order dQ sums); by default the dQ partial sums are unordered float
reductions (1.28-1.32x faster at 16k, bench/NOTES-bwd.md run 8), not repeatable bit for bit.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
from pathlib import Path

import torch

from .aten_backends import fa2_varlen_bwd
from .blocks import BackwardRows, few_large, loop_backward, loop_forward
from .masks import effective_window
from .segments import varlen_backward, varlen_calls
from .sm90_rows import Sm90BackwardRows, dense_step

_ABI_VERSION = 3
_LIB_PATH = Path(os.environ.get("RINGFA3_SM90_LIB", Path(__file__).resolve().parents[1] / "lib" / "libringfa3_sm90.so"))
_DTYPES = {torch.bfloat16: 0, torch.float16: 1}
_HEAD_DIMS = (64, 128, 256)


class _FwdArgs(ctypes.Structure):
    """Mirror of RingFa3FwdArgs in csrc/fwd_args.h (same order and types)."""
    _fields_ = [
        ("q", ctypes.c_void_p), ("k", ctypes.c_void_p), ("v", ctypes.c_void_p),
        ("out", ctypes.c_void_p), ("lse", ctypes.c_void_p),
        ("out_acc", ctypes.c_void_p), ("lse_acc", ctypes.c_void_p),
        ("q_stride", ctypes.c_int64 * 3), ("k_stride", ctypes.c_int64 * 3), ("v_stride", ctypes.c_int64 * 3),
        ("o_stride", ctypes.c_int64 * 3), ("oacc_stride", ctypes.c_int64 * 3),
        ("lse_stride", ctypes.c_int64 * 2), ("lacc_stride", ctypes.c_int64 * 2),
        ("b", ctypes.c_int32), ("s_q", ctypes.c_int32), ("s_k", ctypes.c_int32),
        ("h", ctypes.c_int32), ("h_kv", ctypes.c_int32), ("d", ctypes.c_int32),
        ("dtype", ctypes.c_int32), ("window_left", ctypes.c_int32), ("window_right", ctypes.c_int32),
        ("out_fp32", ctypes.c_int32), ("merge", ctypes.c_int32), ("num_sms", ctypes.c_int32),
        ("reserved", ctypes.c_int32),
        ("softmax_scale", ctypes.c_float),
        ("q_scale", ctypes.c_void_p), ("k_scale", ctypes.c_void_p), ("v_scale", ctypes.c_void_p),
        ("cu_seqlens_q", ctypes.c_void_p), ("cu_seqlens_k", ctypes.c_void_p), ("varlen_tiles", ctypes.c_void_p),
        ("n_varlen_tiles", ctypes.c_int32), ("max_seqlen_k", ctypes.c_int32),
        ("stream", ctypes.c_void_p),
    ]


class _BwdArgs(ctypes.Structure):
    """Mirror of RingFa3BwdArgs in csrc/bwd/bwd_args.h (same order and types)."""
    _fields_ = [
        ("q", ctypes.c_void_p), ("k", ctypes.c_void_p), ("v", ctypes.c_void_p),
        ("out", ctypes.c_void_p), ("dout", ctypes.c_void_p), ("lse", ctypes.c_void_p),
        ("dq", ctypes.c_void_p), ("dk", ctypes.c_void_p), ("dv", ctypes.c_void_p),
        ("dq_accum", ctypes.c_void_p), ("lse_log2", ctypes.c_void_p), ("delta", ctypes.c_void_p),
        ("semaphore", ctypes.c_void_p),
        ("q_stride", ctypes.c_int64 * 3), ("k_stride", ctypes.c_int64 * 3), ("v_stride", ctypes.c_int64 * 3),
        ("o_stride", ctypes.c_int64 * 3), ("do_stride", ctypes.c_int64 * 3), ("dq_stride", ctypes.c_int64 * 3),
        ("dk_stride", ctypes.c_int64 * 3), ("dv_stride", ctypes.c_int64 * 3), ("lse_stride", ctypes.c_int64 * 2),
        ("b", ctypes.c_int32), ("s_q", ctypes.c_int32), ("s_k", ctypes.c_int32),
        ("h", ctypes.c_int32), ("h_kv", ctypes.c_int32), ("d", ctypes.c_int32),
        ("dtype", ctypes.c_int32), ("window_left", ctypes.c_int32), ("window_right", ctypes.c_int32),
        ("out_fp32", ctypes.c_int32), ("grads_fp32", ctypes.c_int32), ("deterministic", ctypes.c_int32),
        ("dq_accumulate", ctypes.c_int32), ("softmax_scale", ctypes.c_float), ("stream", ctypes.c_void_p),
        ("cu_seqlens_q", ctypes.c_void_p), ("cu_seqlens_k", ctypes.c_void_p),
        ("varlen_tiles", ctypes.c_void_p), ("n_varlen_tiles", ctypes.c_int32),
        ("ws_rows", ctypes.c_int32), ("phases", ctypes.c_int32),
        ("split_count", ctypes.c_void_p), ("split_partial", ctypes.c_void_p),
    ]


class _Fp8RowsArgs(ctypes.Structure):
    """Mirror of RingFa3Fp8RowsArgs in csrc/fp8_prep_args.h (same order and types)."""
    _fields_ = [
        ("x", ctypes.c_void_p), ("signs", ctypes.c_void_p), ("codes", ctypes.c_void_p), ("scale", ctypes.c_void_p),
        ("x_stride", ctypes.c_int64 * 3),
        ("b", ctypes.c_int32), ("s", ctypes.c_int32), ("h", ctypes.c_int32), ("d", ctypes.c_int32),
        ("dtype", ctypes.c_int32), ("rows", ctypes.c_int32), ("stream", ctypes.c_void_p),
    ]


class _Fp8VArgs(ctypes.Structure):
    """Mirror of RingFa3Fp8VArgs in csrc/fp8_prep_args.h (same order and types)."""
    _fields_ = [
        ("v", ctypes.c_void_p), ("scale", ctypes.c_void_p), ("vt", ctypes.c_void_p),
        ("v_stride", ctypes.c_int64 * 3),
        ("b", ctypes.c_int32), ("s", ctypes.c_int32), ("h", ctypes.c_int32), ("d", ctypes.c_int32),
        ("dtype", ctypes.c_int32), ("stream", ctypes.c_void_p),
    ]


_BWD_ABI_VERSION = 10
_BWD_HEAD_DIMS = (64, 128, 256)
_BWD_DENSE_ONLY_HEAD_DIMS = (256,)   # no varlen form (its CTAs take 64 keys, the tile lists 128)


def _load(path=_LIB_PATH):
    if not Path(path).exists() or not torch.cuda.is_available():
        return None
    lib = ctypes.CDLL(str(path))
    lib.ringfa3_sm90_fwd.argtypes = [ctypes.POINTER(_FwdArgs)]
    lib.ringfa3_sm90_fwd.restype = ctypes.c_int
    lib.ringfa3_sm90_last_error.restype = ctypes.c_char_p
    lib.ringfa3_sm90_abi_version.restype = ctypes.c_int
    lib.ringfa3_sm90_fwd_block_m.argtypes = [ctypes.c_int]
    lib.ringfa3_sm90_fwd_block_m.restype = ctypes.c_int
    if lib.ringfa3_sm90_abi_version() != _ABI_VERSION:
        return None   # stale build: rebuild with scripts/build_csrc.py
    lib.has_bwd = hasattr(lib, "ringfa3_sm90_bwd")   # a library built before the backward has none
    if lib.has_bwd:
        lib.ringfa3_sm90_bwd.argtypes = [ctypes.POINTER(_BwdArgs)]
        lib.ringfa3_sm90_bwd.restype = ctypes.c_int
        lib.ringfa3_sm90_bwd_last_error.restype = ctypes.c_char_p
        lib.ringfa3_sm90_bwd_abi_version.restype = ctypes.c_int
        lib.has_bwd = lib.ringfa3_sm90_bwd_abi_version() == _BWD_ABI_VERSION
        if lib.has_bwd:
            lib.ringfa3_sm90_bwd_block_m.restype = ctypes.c_int
            lib.ringfa3_sm90_bwd_dense_ws_rows.argtypes = [ctypes.c_int] * 4
            lib.ringfa3_sm90_bwd_dense_ws_rows.restype = ctypes.c_int
            lib.ringfa3_sm90_bwd_block_n.restype = ctypes.c_int
            lib.ringfa3_sm90_bwd_split_sizes.argtypes = [ctypes.POINTER(_BwdArgs), ctypes.POINTER(ctypes.c_int64)]
            lib.ringfa3_sm90_bwd_split_sizes.restype = ctypes.c_int
    # absent from builds before it, or before its K and Q scales followed the kernel's blocks
    lib.has_fp8_prep = all(hasattr(lib, f"ringfa3_sm90_fp8_{n}") for n in ("quantize_rows", "key_rows", "query_rows"))
    if lib.has_fp8_prep:
        lib.ringfa3_sm90_fp8_query_rows.argtypes = [ctypes.c_int]
        lib.ringfa3_sm90_fp8_query_rows.restype = ctypes.c_int
        lib.ringfa3_sm90_fp8_key_rows.argtypes = [ctypes.c_int] * 4
        lib.ringfa3_sm90_fp8_key_rows.restype = ctypes.c_int
        lib.ringfa3_sm90_fp8_quantize_rows.argtypes = [ctypes.POINTER(_Fp8RowsArgs)]
        lib.ringfa3_sm90_fp8_quantize_rows.restype = ctypes.c_int
        lib.ringfa3_sm90_fp8_v_transpose.argtypes = [ctypes.POINTER(_Fp8VArgs)]
        lib.ringfa3_sm90_fp8_v_transpose.restype = ctypes.c_int
        lib.ringfa3_sm90_fp8_prep_last_error.restype = ctypes.c_char_p
    return lib


_I64x3 = ctypes.c_int64 * 3


def _strides3(t):   # (b, s, h, d) tensor -> element strides of (batch, seq, head); None: a pass's absent tensor
    return _I64x3() if t is None else _I64x3(*t.stride()[:3])


def _ptr(t):
    return None if t is None else t.data_ptr()


def _strides2(t):   # (b, h, s) tensor, or varlen's packed (h, s) -> element strides of (batch, head)
    return (ctypes.c_int64 * 2)(t.stride(0), t.stride(1)) if t.dim() == 3 else (ctypes.c_int64 * 2)(0, t.stride(0))


def on_device(device):
    """torch.cuda.device(device), entered only when `device` is not already the current one: entering
    it costs microseconds on every call, which show next to a 40 us kernel (1k tokens)."""
    if device.index is None or device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(device)


_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)   # absent from CPU-only builds


def _index(device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def raw_stream(device) -> int:
    """The handle of `device`'s current stream, without building a torch Stream object (a few us)."""
    idx = _index(device)
    return _raw_stream(idx) if _raw_stream is not None else torch.cuda.current_stream(idx).cuda_stream


def _check_accumulators(q, out_acc, lse_acc):
    """The running fp32 (out_acc (b, s_q, h, d), lse_acc (b, h, s_q)) a merge call writes into."""
    b, s_q, h, d = q.shape
    if out_acc.dtype != torch.float32 or lse_acc.dtype != torch.float32:
        raise TypeError("out_acc and lse_acc must be float32")
    if tuple(out_acc.shape) != (b, s_q, h, d) or tuple(lse_acc.shape) != (b, h, s_q):
        raise ValueError("out_acc must be (b, s_q, h, d) and lse_acc (b, h, s_q)")
    if out_acc.stride(-1) != 1 or lse_acc.stride(-1) != 1 or out_acc.data_ptr() % 8:
        raise ValueError("out_acc and lse_acc need a contiguous last dim")



def varlen_tiles(bounds_q: tuple, bounds_k: tuple, left: int, right: int, block_m: int) -> list:
    """The varlen kernel's tile list for one call: (segment, query block) of every tile that sees a key
    (the call merges, so the others are left out), least work first: the kernel runs the list from its
    end, longest tiles first. A tile's work is its rows times the span of keys they see."""
    far = 1 << 30
    left, right = (far if left < 0 else left), (far if right < 0 else right)
    tiles = []
    for seg in range(len(bounds_q) - 1):
        n_q, n_k = bounds_q[seg + 1] - bounds_q[seg], bounds_k[seg + 1] - bounds_k[seg]
        off = n_k - n_q   # bottom-right: row i's diagonal is key i + off
        for m in range(-(-n_q // block_m)):
            r0, r1 = m * block_m, min((m + 1) * block_m, n_q)
            lo, hi = max(0, r0 + off - left), min(n_k, r1 + off + right)
            if hi > lo:
                tiles.append(((r1 - r0) * (hi - lo), seg, m))
    tiles.sort()
    return [(seg, m) for _, seg, m in tiles]


def varlen_bwd_tiles(bounds_q: tuple, bounds_k: tuple, left: int, right: int, block_m: int, block_n: int,
                     deterministic: bool = False) -> list:
    """The varlen backward's CTA list for one call: (segment, key block) of every key block, longest
    first (a CTA's time is its count of query blocks, csrc/bwd/bwd_mask.h). Deterministic: each
    segment's key blocks highest first (the dQ order takes them so and waits only on CTAs launched
    earlier), else lowest first; a block sorts by the most work of itself and the segment's blocks
    launched after it."""
    far = 1 << 30
    left, right = (far if left < 0 else left), (far if right < 0 else right)
    keyed = []
    for seg in range(len(bounds_q) - 1):
        n_q, n_k = bounds_q[seg + 1] - bounds_q[seg], bounds_k[seg + 1] - bounds_k[seg]
        off = n_k - n_q
        steps = []
        for n in range(-(-n_k // block_n)):
            lo, hi = n * block_n, min((n + 1) * block_n, n_k) - 1
            last = min(n_q - 1, hi - off + left)   # the last query that sees a key of the block
            steps.append(max(0, (last // block_m + 1 if last >= 0 else 0) - max(0, lo - off - right) // block_m))
        most = 0
        for n in (range(len(steps)) if deterministic else reversed(range(len(steps)))):
            most = max(most, steps[n])
            keyed.append((-most, seg, -n if deterministic else n))
    keyed.sort()
    return [(seg, -n if deterministic else n) for _, seg, n in keyed]


@functools.lru_cache(maxsize=256)
def _tiles_on(device, make, *args):
    """make(*args) (a tile list) as an (n, 2) int32 tensor on `device`, made once per call shape."""
    tiles = make(*args)
    return torch.tensor(tiles, dtype=torch.int32, device=device).reshape(len(tiles), 2)


def _rows16(t) -> bool:
    """The kernels' row access: contiguous last dim, 16-byte base, strides of 8 elements."""
    return t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and all(x % 8 == 0 for x in t.stride()[:3])


class Sm90Backend:
    name = "sm90"
    # Forward: no atomics in any reduction. Backward: dQ partial sums in a fixed order when the call
    # asks for deterministic=True, so both directions can be bitwise repeatable.
    deterministic = True
    # Backward checked on H100 and H200 (bench/NOTES-bwd.md): bf16/fp16, head dims 64, 128, 256 (256
    # dense only), full, causal, windows, GQA/MQA, s_q != s_k, fp32 grads / fp32 out.
    has_backward = True
    # forward_blocks through the varlen kernel: all of a step's blocks in one launch per batch entry
    # (checked on an H200, bench/NOTES.md "Run 13"); False runs one merge call per block instead.
    varlen_blocks = True
    # backward_blocks through the backward's varlen form (all of a step's segments in one launch; checked
    # on an H200, bench/NOTES-bwd.md run 12: document rings 14.0 / 16.7 ms fwd+bwd against FA2's varlen
    # backward's 17.2 / 29.2); False hands documents to FA2's varlen backward.
    varlen_backward_blocks = True
    # backward(dq_acc=...) adds dQ into a running float32 tensor in its conversion pass (ops.blocks)
    accumulates_dq = True

    def __init__(self, lib):
        self._lib = lib
        self._devices = {}

    def unsupported(self, q, k, v, causal=False, window=(-1, -1)):
        if not (q.is_cuda and k.is_cuda and v.is_cuda):
            return "sm90 needs CUDA tensors"
        if self._device(q.device)[0] != (9, 0):
            return "sm90 needs a Hopper (sm_90) device"
        if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
            return "sm90 supports bf16/fp16 q, k, v of one dtype"
        if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
            return "sm90 expects (batch, seqlen, heads, head_dim) tensors"
        b, s_q, h, d = q.shape
        if d not in _HEAD_DIMS or k.shape[-1] != d or v.shape[-1] != d:
            return f"sm90 supports head_dim in {_HEAD_DIMS}, got {d}"
        if k.shape != v.shape or k.shape[0] != b or h % k.shape[2] != 0:
            return "sm90 needs k, v of shape (b, s_k, h_kv, d) with h % h_kv == 0"
        if k.shape[1] == 0:
            return "sm90 needs s_k > 0"
        for name, t in (("q", q), ("k", k), ("v", v)):
            st = t.stride()
            if st[3] != 1 or st[0] % 8 or st[1] % 8 or st[2] % 8 or t.data_ptr() % 16:
                return f"sm90 needs {name} with a contiguous last dim, 16-byte aligned base and strides"
        if max(q.shape[1], k.shape[1]) >= (1 << 28):
            return "sequence too long for sm90's int32 indexing"
        return None

    def _device(self, device):
        """(capability, SM count) of a CUDA device, looked up once."""
        idx = _index(device)
        if idx not in self._devices:
            props = torch.cuda.get_device_properties(idx)
            self._devices[idx] = ((props.major, props.minor), props.multi_processor_count)
        return self._devices[idx]

    def _args(self, q, k, v, causal, softmax_scale, window, dtype=None):
        b, s_q, h, d = q.shape
        left, right = effective_window(causal, window)  # causal: no key right of the diagonal
        a = _FwdArgs()
        a.q, a.k, a.v = q.data_ptr(), k.data_ptr(), v.data_ptr()
        a.q_stride, a.k_stride, a.v_stride = _strides3(q), _strides3(k), _strides3(v)
        a.b, a.s_q, a.s_k, a.h, a.h_kv, a.d = b, s_q, k.shape[1], h, k.shape[2], d
        a.dtype = _DTYPES[q.dtype] if dtype is None else dtype
        a.window_left, a.window_right = int(left), int(right)
        a.softmax_scale = float(d ** -0.5 if softmax_scale is None else softmax_scale)
        a.num_sms = self._device(q.device)[1]
        a.stream = raw_stream(q.device)
        return a

    def _call(self, a, device):
        with on_device(device):
            rc = self._lib.ringfa3_sm90_fwd(ctypes.byref(a))
        if rc != 0:
            raise RuntimeError(f"ringfa3 sm90 forward failed ({rc}): {self._lib.ringfa3_sm90_last_error().decode()}")

    def forward(self, q, k, v, causal=False, softmax_scale=None, window=(-1, -1), out_fp32=False):
        why = self.unsupported(q, k, v, causal, window)
        if why:
            raise ValueError(why)
        b, s_q, h, d = q.shape
        out = torch.empty(b, s_q, h, d, device=q.device, dtype=torch.float32 if out_fp32 else q.dtype)  # (b, s_q, h, d)
        lse = torch.empty(b, h, s_q, device=q.device, dtype=torch.float32)                            # (b, h, s_q)
        if out.numel() == 0:
            return out, lse.fill_(-math.inf)
        a = self._args(q, k, v, causal, softmax_scale, window)
        a.out, a.lse, a.out_fp32 = out.data_ptr(), lse.data_ptr(), int(out_fp32)
        a.o_stride, a.lse_stride = _strides3(out), _strides2(lse)
        self._call(a, q.device)
        return out, lse

    def forward_merge(self, q, k, v, causal, softmax_scale, window, out_acc, lse_acc):
        """Merge this (q, k, v) block into the running fp32 (out_acc (b, s_q, h, d), lse_acc (b, h, s_q))
        in place; rows the block does not see keep their values."""
        why = self.unsupported(q, k, v, causal, window)
        if why:
            raise ValueError(why)
        self.merge_call(q, out_acc, lse_acc, lambda: self._args(q, k, v, causal, softmax_scale, window))

    def merge_call(self, q, out_acc, lse_acc, make_args):
        """Check the accumulators, then run the forward that make_args() describes in merge mode."""
        _check_accumulators(q, out_acc, lse_acc)
        if out_acc.numel() == 0:
            return
        a = make_args()
        a.merge, a.out_acc, a.lse_acc = 1, out_acc.data_ptr(), lse_acc.data_ptr()
        a.oacc_stride, a.lacc_stride = _strides3(out_acc), _strides2(lse_acc)
        self._call(a, q.device)

    def forward_blocks(self, q, k, v, blocks, scale, out_acc, lse_acc):
        """ops.blocks.forward_blocks: merge the blocks of (q (b, s_q, h, d), k/v (b, s_k, h_kv, d)) into
        (out_acc, lse_acc) in place, one varlen launch per batch entry and segments.VarlenCall."""
        if not self.varlen_blocks or few_large(blocks):
            return loop_forward(self, q, k, v, blocks, scale, out_acc, lse_acc)
        why = self.unsupported(q, k, v)
        if why:
            raise ValueError(why)
        _check_accumulators(q, out_acc, lse_acc)
        calls = varlen_calls(blocks, 1, q.shape[1], k.shape[1], q.device)   # the same for every batch entry
        for i in range(q.shape[0]):   # one batch entry's lse_acc (h, s_q) is the kernel's packed lse layout
            for call in calls:
                self.varlen_merge(q[i], k[i], v[i], call, scale, out_acc[i], lse_acc[i])

    def backward_blocks(self, dout, q, k, v, out, lse, blocks, scale, dq_acc, deterministic=False):
        """ops.blocks.backward_blocks: our kernel per block for steps of a few large blocks; many small
        blocks (packed documents) in one varlen launch: ours when `varlen_backward_blocks`, else FA2's,
        unless the call asks for deterministic results, which FA2's atomic dQ does not give.
        Measured (bench/NOTES-ring.md): a launch per document is 6x slower than FA2's one launch; a
        zigzag window ring (diagonal steps of 4 blocks of 4k rows) takes 16% less time per block on our
        dense kernel."""
        ours = self.varlen_backward_blocks and q.shape[-1] not in _BWD_DENSE_ONLY_HEAD_DIMS
        if dense_step(blocks) or (deterministic and not ours):
            return loop_backward(self, dout, q, k, v, out, lse, blocks, scale, dq_acc, deterministic)
        kernel = functools.partial(self.varlen_backward, deterministic=deterministic) if ours else fa2_varlen_bwd
        return varlen_backward(kernel, dout, q, k, v, out, lse, blocks, scale, dq_acc)

    def backward_rows(self, dout, q, out, lse, scale, deterministic=False):
        """ops.blocks.backward_rows: one workspace for every key set (sm90_rows.py)."""
        if not getattr(self._lib, "has_bwd", False):
            return BackwardRows(self, dout, q, out, lse, scale, deterministic)
        return Sm90BackwardRows(self, dout, q, out, lse, scale, deterministic)

    def varlen_merge(self, q, k, v, call, softmax_scale, out_acc, lse_acc):
        """Merge the packed segments of `call` (segments.VarlenCall: cu_q, cu_k int32 on q's device, the
        window aligned bottom-right in each segment) into the running fp32 (out_acc (s_q, h, d),
        lse_acc (h, s_q)) in place. q (s_q, h, d), k/v (s_k, h_kv, d): packed rows of one batch entry."""
        tiles = _tiles_on(q.device, varlen_tiles, call.bounds_q, call.bounds_k, call.left, call.right,
                          self._lib.ringfa3_sm90_fwd_block_m(q.shape[-1]))   # (n, 2)
        if tiles.shape[0] == 0:
            return   # no row sees a key: nothing to merge
        a = self._args(q[None], k[None], v[None], False, softmax_scale, (call.left, call.right))
        a.b = call.n_segments
        a.cu_seqlens_q, a.cu_seqlens_k = call.cu_q.data_ptr(), call.cu_k.data_ptr()
        a.varlen_tiles, a.n_varlen_tiles = tiles.data_ptr(), tiles.shape[0]
        a.max_seqlen_k = min(call.max_k, k.shape[0])
        a.merge, a.out_acc, a.lse_acc = 1, out_acc.data_ptr(), lse_acc.data_ptr()
        a.oacc_stride = _strides3(out_acc[None])
        a.lacc_stride = _strides2(lse_acc)
        self._call(a, q.device)

    def backward_unsupported(self, q, k, v, causal=False, window=(-1, -1)):
        """Why the backward kernel cannot serve these inputs (None if it can); the forward's limits too."""
        why = self.unsupported(q, k, v, causal, window)
        if why:
            return why
        if not getattr(self._lib, "has_bwd", False):
            return "this build of the sm90 library has no backward (rebuild with scripts/build_csrc.py)"
        if q.shape[-1] not in _BWD_HEAD_DIMS:
            return f"sm90 backward supports head_dim in {_BWD_HEAD_DIMS}, got {q.shape[-1]}"
        return None

    def backward(self, dout, q, k, v, out, lse, causal, softmax_scale, window, grads_fp32=False,
                 deterministic=False, dq_acc=None):
        """(dq, dk, dv) from the global out (q's dtype or fp32) and lse (b, h, s_q); dK/dV are summed
        over the query heads of each kv head. grads_fp32: all three in fp32 (the ring accumulates them).
        deterministic: dQ partial sums added in a fixed order, bitwise repeatable (slower).
        dq_acc: a float32 tensor shaped like q (a view is fine) that dQ is added into by the kernel's
        last pass, instead of a new dq and a separate add (the ring's running dQ); returned as dq, and
        grads_fp32 is implied."""
        why = self.backward_unsupported(q, k, v, causal, window)
        if why:
            raise ValueError(why)
        if dq_acc is not None:
            if dq_acc.dtype != torch.float32 or dq_acc.shape != q.shape or dq_acc.device != q.device:
                raise ValueError(f"dq_acc must be float32 of q's shape {tuple(q.shape)} on {q.device}, got "
                                 f"{dq_acc.dtype} {tuple(dq_acc.shape)} on {dq_acc.device}")
            if not _rows16(dq_acc):   # the kernel's stores need 16-byte rows: add a fresh dq instead
                dq, dk, dv = self.backward(dout, q, k, v, out, lse, causal, softmax_scale, window, True,
                                           deterministic)
                return dq_acc.add_(dq), dk, dv
            grads_fp32 = True
        b, s_q, h, d = q.shape
        s_k, h_kv = k.shape[1], k.shape[2]
        dt = torch.float32 if grads_fp32 else q.dtype
        dq = torch.empty(b, s_q, h, d, device=q.device, dtype=dt) if dq_acc is None else dq_acc   # (b, s_q, h, d)
        dk = torch.empty(b, s_k, h_kv, d, device=q.device, dtype=dt)        # (b, s_k, h_kv, d)
        dv = torch.empty(b, s_k, h_kv, d, device=q.device, dtype=dt)
        if b == 0 or s_q == 0:
            return dq, dk.zero_(), dv.zero_()
        left, right = effective_window(causal, window)
        self._backward_call(dout, q, k, v, out, lse, dq, dk, dv, left, right, softmax_scale, grads_fp32,
                            deterministic, dq_accumulate=dq_acc is not None)
        return dq, dk, dv

    def varlen_backward(self, dout, q, k, v, out, lse, call, softmax_scale, deterministic=False):
        """segments.varlen_backward's kernel: (dq, dk, dv) over the packed rows of one batch entry, all
        of `call`'s segments in one launch. q, out, dout (tq, h, d), k/v (tk, h_kv, d), lse (h, tq)
        (-inf or +inf on rows that see no key: the kernel takes both); each segment's window aligned
        bottom-right in it."""
        # float32, zero where no segment reaches (the kernel writes only the segments' rows)
        dq = torch.zeros(q.shape, device=q.device, dtype=torch.float32)   # (tq, h, d)
        dk = torch.zeros(k.shape, device=q.device, dtype=torch.float32)   # (tk, h_kv, d)
        dv = torch.zeros(v.shape, device=q.device, dtype=torch.float32)
        lse = lse.float().contiguous()   # (h, tq)
        self._backward_call(dout[None], q[None], k[None], v[None], out[None], lse, dq[None], dk[None], dv[None],
                            call.left, call.right, softmax_scale, True, deterministic, varlen=call)
        return dq, dk, dv

    def _backward_call(self, dout, q, k, v, out, lse, dq, dk, dv, left, right, softmax_scale, grads_fp32,
                       deterministic, varlen=None, dq_accumulate=False, ws=None, row0=0, phases=0):
        """One call of the library's backward into dq, dk, dv ((b, s, heads, d) views; lse (b, h, s_q)).
        varlen: a segments.VarlenCall whose segments are the packed rows of batch entry 0 (lse (h, s_q)).
        ws: a sm90_rows.BackwardWorkspace that calls over rows of the same queries share, this call's
        rows starting at its row row0; phases: the passes to run (csrc/bwd/bwd_args.h, 0: all). The
        tensors no pass reads may be None (q gives the shapes)."""
        b, s_q, h, d = q.shape
        s_k, h_kv = (k.shape[1], k.shape[2]) if k is not None else (s_q, h)

        rows16 = lambda t: t if t is None or _rows16(t) else t.contiguous()   # noqa: E731
        dout = rows16(None if dout is None else dout.to(q.dtype))
        out = rows16(out if out is None or out.dtype in (q.dtype, torch.float32) else out.to(q.dtype))
        if lse is not None:   # the kernels read float32 lse rows with a unit seq stride
            lse = lse.float()
            if lse.stride(-1) != 1:
                lse = lse.contiguous()
        bm = self._lib.ringfa3_sm90_bwd_block_m()
        det = bool(deterministic)
        if ws is None:
            # Workspace rows: per (batch entry, head) s_q rounded up to the call's query block; varlen: per
            # head, each segment from a block-aligned row (csrc/bwd/bwd_args.h).
            entries, ws_rows = (1, (s_q // bm + varlen.n_segments) * bm) if varlen else \
                (b, self._lib.ringfa3_sm90_bwd_dense_ws_rows(s_q, d, int(left), int(right)))
            dq_accum = torch.empty(entries, h, ws_rows, d, device=q.device, dtype=torch.float32)   # (b, h, ws_rows, d)
            lse_log2 = torch.empty(entries, h, ws_rows, device=q.device, dtype=torch.float32)      # (b, h, ws_rows)
            delta = torch.empty(entries, h, ws_rows, device=q.device, dtype=torch.float32)
            sem = torch.empty(entries, h, ws_rows // bm, 2, device=q.device, dtype=torch.int32) if det else None
        else:   # the shared workspace from row row0 on; semaphores zeroed here when the preprocess does not run
            ws_rows = ws.rows
            dq_accum, lse_log2, delta = ws.dq_accum[:, :, row0:], ws.lse_log2[:, :, row0:], ws.delta[:, :, row0:]
            make = torch.empty if phases & 1 else torch.zeros
            sem = make(b, h, ws_rows // bm, 2, device=q.device, dtype=torch.int32)[:, :, row0 // bm:] if det else None

        a = _BwdArgs()
        a.q, a.k, a.v, a.out, a.dout, a.lse = (_ptr(t) for t in (q, k, v, out, dout, lse))
        a.dq, a.dk, a.dv = _ptr(dq), _ptr(dk), _ptr(dv)
        a.dq_accum, a.lse_log2, a.delta = dq_accum.data_ptr(), lse_log2.data_ptr(), delta.data_ptr()
        a.semaphore = _ptr(sem)
        a.q_stride, a.k_stride, a.v_stride = _strides3(q), _strides3(k), _strides3(v)
        a.o_stride, a.do_stride = _strides3(out), _strides3(dout)
        a.dq_stride, a.dk_stride, a.dv_stride = _strides3(dq), _strides3(dk), _strides3(dv)
        if lse is not None:
            a.lse_stride = _strides2(lse)
        a.b, a.s_q, a.s_k, a.h, a.h_kv, a.d = b, s_q, s_k, h, h_kv, d
        if varlen:
            a.b = varlen.n_segments
            a.cu_seqlens_q, a.cu_seqlens_k = varlen.cu_q.data_ptr(), varlen.cu_k.data_ptr()
            tiles = _tiles_on(q.device, varlen_bwd_tiles, varlen.bounds_q, varlen.bounds_k, left, right, bm,
                              self._lib.ringfa3_sm90_bwd_block_n(), det)   # (n, 2)
            a.varlen_tiles, a.n_varlen_tiles = tiles.data_ptr(), tiles.shape[0]
        a.dtype = _DTYPES[q.dtype]
        a.window_left, a.window_right = int(left), int(right)
        a.out_fp32 = int(out is not None and out.dtype == torch.float32)
        a.grads_fp32, a.deterministic = int(grads_fp32), int(det)
        a.dq_accumulate = int(dq_accumulate)
        a.ws_rows, a.phases = (0, 0) if ws is None else (ws_rows, phases)
        a.softmax_scale = float(d ** -0.5 if softmax_scale is None else softmax_scale)
        a.stream = raw_stream(q.device)
        with on_device(q.device):
            split = self._split_buffers(a, q.device) if (phases == 0 or phases & 2) else None   # alive for the call
            rc = self._lib.ringfa3_sm90_bwd(ctypes.byref(a))
        if rc != 0:
            raise RuntimeError(f"ringfa3 sm90 backward failed ({rc}): {self._lib.ringfa3_sm90_bwd_last_error().decode()}")

    def _split_buffers(self, a, device):
        """The tail split's counters (zeroed) and partial sums for the call `a` (csrc/bwd/bwd_split.h),
        their pointers set in `a`; None when the call runs unsplit."""
        sizes = (ctypes.c_int64 * 2)()
        if self._lib.ringfa3_sm90_bwd_split_sizes(ctypes.byref(a), sizes) != 0:
            raise RuntimeError(f"ringfa3 sm90 backward: {self._lib.ringfa3_sm90_bwd_last_error().decode()}")
        if sizes[0] == 0:
            return None
        count = torch.zeros(sizes[0], device=device, dtype=torch.int32)      # (split tiles,)
        partial = torch.empty(sizes[1], device=device, dtype=torch.float32)  # (tiles * pieces * 2 * block_n * d,)
        a.split_count, a.split_partial = count.data_ptr(), partial.data_ptr()
        return count, partial


_LIB = _load()
BACKEND = Sm90Backend(_LIB) if _LIB is not None else None


def backend_from(path):
    """A backend over another build of the library (A/B timing of two builds in one process), or None."""
    lib = _load(path)
    return Sm90Backend(lib) if lib is not None else None
