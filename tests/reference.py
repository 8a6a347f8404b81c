"""Float64 math attention on the full sequence (the ground truth) and error measures."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ringfa3.ops.masks import tile_mask


def attention64(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: float | None = None,
                window=(-1, -1), mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """out (b, s_q, h, d), lse (b, h, s_q) in float64, by materializing the masked score matrix.
    `mask` (s_q, s_k) bool, if given, is applied on top. Differentiable when the inputs require grad."""
    b, sq, h, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    scale = d ** -0.5 if scale is None else scale
    kk, vv = k.repeat_interleave(h // hk, 2), v.repeat_interleave(h // hk, 2)
    s = torch.einsum("bihd,bjhd->bhij", q, kk) * scale
    keep = tile_mask(0, sq, 0, sk, sq, sk, causal, window, q.device)
    s = s.masked_fill(~(keep if mask is None else keep & mask), -math.inf)
    lse = torch.logsumexp(s, -1)
    p = torch.softmax(s, -1).nan_to_num(0.0)  # rows that see nothing: 0
    return torch.einsum("bhij,bjhd->bihd", p, vv), lse


def blocks_mask(blocks, s_q: int, s_k: int, device=None, count: bool = False) -> Tensor:
    """(s_q, s_k) bool: the keys each row sees through a list of ops.blocks.Block (each block's mask
    aligned bottom-right inside it), for attention64's `mask`; count=True: how many blocks see each pair."""
    m = torch.zeros(s_q, s_k, dtype=torch.int32, device=device)
    for b in blocks:
        n, s = b.q1 - b.q0, b.k1 - b.k0
        m[b.q0:b.q1, b.k0:b.k1] += tile_mask(0, n, 0, s, n, s, b.causal, b.window, device).int()
    return m if count else m > 0


def reference64(q, k, v, dout, causal=False, scale=None, window=(-1, -1), mask=None) -> dict:
    """Float64 out, lse, dq, dk, dv of the full problem (inputs upcast from whatever dtype)."""
    q, k, v = (x.detach().double().requires_grad_() for x in (q, k, v))
    out, lse = attention64(q, k, v, causal, scale, window, mask)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout.double())
    return dict(out=out.detach(), lse=lse.detach(), dq=dq, dk=dk, dv=dv)


def rel_err(x: Tensor, ref: Tensor) -> float:
    """||x - ref|| / ||ref|| over finite entries of ref (lse of fully masked rows is -inf on both)."""
    x, ref = x.double(), ref.double()
    fin = torch.isfinite(ref)
    assert torch.equal(fin, torch.isfinite(x)), "finite/infinite pattern differs from the reference"
    assert not torch.isnan(x).any(), "NaN in result"
    return ((x[fin] - ref[fin]).norm() / ref[fin].norm().clamp_min(1e-30)).item()


# atol-like floor added to every derived tolerance, per dtype (a few ulps of the relative error measure)
FLOOR = {torch.float64: 1e-10, torch.float32: 2e-6, torch.bfloat16: 2e-4, torch.float16: 5e-5}


def tolerance(base_err: float, dtype: torch.dtype, factor: float = 2.0) -> float:
    """A small multiple of the same-dtype single-device op's error, plus a floor."""
    return factor * base_err + FLOOR[dtype]


def single_process_errors(q, k, v, dout, causal=False, window=(-1, -1)) -> tuple[dict, dict]:
    """(float64 reference, errors of the same-dtype single-process op against it): the yardstick of the
    distributed tests' tolerances."""
    from ringfa3.ops import attention

    ref = reference64(q, k, v, dout, causal, None, window)
    qs, ks, vs = (x.clone().requires_grad_() for x in (q, k, v))
    out, lse = attention(qs, ks, vs, causal=causal, window=window, backend="reference")
    out.backward(dout)
    single = dict(out=out, lse=lse, dq=qs.grad, dk=ks.grad, dv=vs.grad)
    return ref, {name: rel_err(single[name], ref[name]) for name in ref}


def random_qkv(seed: int, b: int, s: int, h: int, h_kv: int, d: int, dtype: torch.dtype):
    """Fresh q, k, v and an output gradient from `seed` (every rank draws the same full tensors)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, s, h, d, generator=g)
    k, v = torch.randn(b, s, h_kv, d, generator=g), torch.randn(b, s, h_kv, d, generator=g)
    dout = torch.randn(b, s, h, d, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype), dout.to(dtype)
