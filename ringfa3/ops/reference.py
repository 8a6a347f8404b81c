"""The `reference` backend: blockwise online-softmax attention in plain torch.

Runs anywhere torch does (CPU included). Scores are computed tile by tile (block_q x block_k), so
memory stays linear in the sequence length; fully masked tiles are skipped. Math runs in float32
(float64 for float64 inputs). GQA is handled by grouping query heads over their shared K/V head,
never by expanding K/V.
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from .masks import tile_mask, tile_visibility

BLOCK = 256


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _group(x: Tensor, h_kv: int, dtype) -> Tensor:
    """(b, s, h, d) -> (b, h_kv, g, s, d): query heads of one K/V head side by side."""
    return rearrange(x, "b s (hk g) d -> b hk g s d", hk=h_kv).to(dtype)


def _kv(x: Tensor, dtype) -> Tensor:
    """(b, s, h_kv, d) -> (b, h_kv, 1, s, d)."""
    return rearrange(x, "b s hk d -> b hk 1 s d").to(dtype)


def _tiles(sq: int, sk: int, causal: bool, window):
    """Yield (i0, i1, [(j0, j1, mask_needed)]) for every query block with its visible key blocks."""
    for i0 in range(0, sq, BLOCK):
        i1 = min(i0 + BLOCK, sq)
        cols = []
        for j0 in range(0, sk, BLOCK):
            j1 = min(j0 + BLOCK, sk)
            vis = tile_visibility(i0, i1, j0, j1, sq, sk, causal, window)
            if vis != "none":
                cols.append((j0, j1, vis == "partial"))
        yield i0, i1, cols


def forward(q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float, window, out_fp32: bool,
            p_dtype: torch.dtype | None = None):
    """out (b, s_q, h, d) in q.dtype (float32 if out_fp32), lse (b, h, s_q) float32.

    p_dtype rounds the probabilities to that type before the P @ V product (row sums stay exact), as a
    kernel that feeds P to a low-precision tensor-core GEMM does (ops/fp8.py)."""
    b, sq, h, d = q.shape
    sk, h_kv = k.shape[1], k.shape[2]
    acc_t = _acc_dtype(q.dtype)
    qg, kg, vg = _group(q, h_kv, acc_t), _kv(k, acc_t), _kv(v, acc_t)
    g = h // h_kv
    out = torch.zeros(b, h_kv, g, sq, d, dtype=acc_t, device=q.device)
    lse = torch.full((b, h_kv, g, sq), float("-inf"), dtype=acc_t, device=q.device)
    for i0, i1, cols in _tiles(sq, sk, causal, window):
        qi = qg[..., i0:i1, :] * scale
        m = torch.full((b, h_kv, g, i1 - i0), float("-inf"), dtype=acc_t, device=q.device)
        den = torch.zeros_like(m)
        acc = torch.zeros(b, h_kv, g, i1 - i0, d, dtype=acc_t, device=q.device)
        for j0, j1, need_mask in cols:
            s = qi @ kg[..., j0:j1, :].transpose(-1, -2)  # (b, hk, g, bq, bk)
            if need_mask:
                s = s.masked_fill(~tile_mask(i0, i1, j0, j1, sq, sk, causal, window, q.device), float("-inf"))
            m_new = torch.maximum(m, s.amax(-1))
            m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)  # rows still all masked
            p = torch.exp(s - m_safe[..., None])
            alpha = torch.exp(m - m_safe)
            den = den * alpha + p.sum(-1)
            p_mm = p if p_dtype is None else p.to(p_dtype).to(acc_t)
            acc = acc * alpha[..., None] + p_mm @ vg[..., j0:j1, :]
            m = m_new
        seen = den > 0
        out[..., i0:i1, :] = torch.where(seen[..., None], acc / torch.where(seen, den, 1)[..., None], 0)
        lse[..., i0:i1] = torch.where(seen, m + torch.log(torch.where(seen, den, 1)), float("-inf"))
    out = rearrange(out, "b hk g s d -> b s (hk g) d")
    out = out.to(torch.float32 if out_fp32 and q.dtype != torch.float64 else q.dtype)
    return out, rearrange(lse, "b hk g s -> b (hk g) s").to(torch.float32)


def backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, causal: bool,
             scale: float, window, grads_fp32: bool = False, deterministic: bool = False):
    """(dq, dk, dv) in the input dtypes (float32 if grads_fp32), from the (possibly merged, global)
    out and lse of these rows. Always deterministic (no atomics)."""
    b, sq, h, d = q.shape
    sk, h_kv = k.shape[1], k.shape[2]
    acc_t = _acc_dtype(q.dtype)
    qg, kg, vg = _group(q, h_kv, acc_t), _kv(k, acc_t), _kv(v, acc_t)
    dog = _group(dout, h_kv, acc_t)
    lse_g = rearrange(lse, "b (hk g) s -> b hk g s", hk=h_kv).to(acc_t)
    lse_g = torch.where(torch.isinf(lse_g), torch.full_like(lse_g, float("inf")), lse_g)  # masked rows: p = 0
    delta = (dog * _group(out, h_kv, acc_t)).sum(-1)  # (b, hk, g, s_q)
    dq = torch.zeros_like(qg)
    dk = torch.zeros(b, h_kv, sk, d, dtype=acc_t, device=q.device)
    dv = torch.zeros_like(dk)
    for i0, i1, cols in _tiles(sq, sk, causal, window):
        qi, doi = qg[..., i0:i1, :], dog[..., i0:i1, :]
        li, di = lse_g[..., i0:i1, None], delta[..., i0:i1, None]
        for j0, j1, need_mask in cols:
            kj, vj = kg[..., j0:j1, :], vg[..., j0:j1, :]
            p = torch.exp((qi @ kj.transpose(-1, -2)) * scale - li)  # (b, hk, g, bq, bk)
            if need_mask:
                p = p.masked_fill(~tile_mask(i0, i1, j0, j1, sq, sk, causal, window, q.device), 0.0)
            dv[..., j0:j1, :] += torch.einsum("bkgij,bkgid->bkjd", p, doi)
            ds = p * (doi @ vj.transpose(-1, -2) - di)
            dq[..., i0:i1, :] += (ds @ kj) * scale
            dk[..., j0:j1, :] += torch.einsum("bkgij,bkgid->bkjd", ds, qi) * scale
    dtype = torch.float32 if grads_fp32 and q.dtype != torch.float64 else q.dtype
    dq = rearrange(dq, "b hk g s d -> b s (hk g) d").to(dtype)
    dk = rearrange(dk, "b hk s d -> b s hk d").to(dtype)
    dv = rearrange(dv, "b hk s d -> b s hk d").to(dtype)
    return dq, dk, dv
