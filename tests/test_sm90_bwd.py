"""The sm90 backward kernel (csrc/bwd/) against float64 gradients. Skipped without CUDA, without a Hopper
GPU, or without a library that has the backward (python scripts/build_csrc.py). The tolerance is twice
the error of the blockwise fp32 reference backend on the same 16-bit inputs (the dtype's rounding
floor) plus a small atol."""

import pytest
import torch
from reference import reference64
from varlen_cases import VARLEN_CASES, run_backward_case


def _reference(q, k, v, dout, causal, window, scale):
    """float64 out, lse and (dq, dk, dv)."""
    r = reference64(q, k, v, dout, causal, scale, window)
    return r["out"], r["lse"], (r["dq"], r["dk"], r["dv"])


def _backend():
    from ringfa3.ops import sm90 as mod
    be = mod.BACKEND
    return be if be is not None and getattr(be._lib, "has_bwd", False) else None


BACKEND = _backend() if torch.cuda.is_available() else None
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(BACKEND is None, reason="needs CUDA and a libringfa3_sm90.so with the backward"),
    pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() != (9, 0),
                       reason="needs an sm_90 GPU"),
]


def _err(x, ref):
    return float((x.double() - ref).norm() / ref.norm().clamp_min(1e-30))


CASES = [
    # (b, s_q, s_k, h, h_kv, d), dtype, causal, window
    ((2, 256, 256, 4, 4, 128), torch.bfloat16, False, (-1, -1)),
    ((2, 333, 333, 4, 2, 128), torch.bfloat16, True, (-1, -1)),
    ((1, 200, 450, 4, 1, 128), torch.bfloat16, True, (-1, -1)),
    ((1, 450, 200, 4, 2, 128), torch.bfloat16, True, (-1, -1)),      # rows that see no key
    ((1, 500, 500, 2, 2, 128), torch.float16, False, (64, 16)),
    ((2, 300, 300, 4, 2, 64), torch.bfloat16, True, (-1, -1)),
    ((1, 300, 400, 4, 4, 64), torch.float16, False, (100, 0)),
    ((1, 333, 333, 4, 2, 256), torch.bfloat16, True, (-1, -1)),
    ((1, 300, 500, 2, 2, 256), torch.float16, False, (64, 16)),
]


@pytest.mark.parametrize("shape,dtype,causal,window", CASES)
@pytest.mark.parametrize("deterministic", [True, False])
def test_sm90_backward_matches_float64(shape, dtype, causal, window, deterministic):
    from ringfa3.ops import reference as reference_backend
    b, s_q, s_k, h, h_kv, d = shape
    gen = torch.Generator(device="cuda").manual_seed(sum(shape))
    q = torch.randn(b, s_q, h, d, device="cuda", dtype=dtype, generator=gen)
    k = torch.randn(b, s_k, h_kv, d, device="cuda", dtype=dtype, generator=gen)
    v = torch.randn(b, s_k, h_kv, d, device="cuda", dtype=dtype, generator=gen)
    dout = torch.randn(b, s_q, h, d, device="cuda", dtype=dtype, generator=gen)
    scale = d ** -0.5
    out64, lse, ref = _reference(q, k, v, dout, causal, window, scale)
    out = out64.to(dtype)
    grads = BACKEND.backward(dout, q, k, v, out, lse, causal, scale, window, False, deterministic)
    again = BACKEND.backward(dout, q, k, v, out, lse, causal, scale, window, False, deterministic)
    floor = reference_backend.backward(dout, q, k, v, out, lse, causal, scale, window, False)
    for name, g, f, r in zip("qkv", grads, floor, ref):
        assert g.dtype == dtype and torch.isfinite(g).all(), f"d{name} not finite / wrong dtype"
        assert _err(g, r) <= 2 * _err(f.to(dtype), r) + 1e-3, f"d{name}: {_err(g, r):.2e} vs floor {_err(f.to(dtype), r):.2e}"
    if deterministic:
        assert all(torch.equal(x, y) for x, y in zip(grads, again))


@pytest.mark.parametrize("shape,grads_fp32", [
    ((1, 1000, 1000, 4, 2, 128), False),   # 16 tiles, 13 query blocks of 80 rows in four pieces
    ((1, 1000, 700, 4, 1, 64), True),      # GQA 4: each piece covers its rows of every query head
    ((1, 600, 600, 2, 2, 256), False),     # 64-key tiles (bwd_traits_d256.h)
])
def test_sm90_backward_tail_split(shape, grads_fp32):
    """Unmasked calls whose tiles do not fill the last wave run them as pieces over query rows, merged by
    the last piece (csrc/bwd/bwd_split.h): gradients as the float64 ones, dK / dV bitwise repeatable
    (the merge adds the pieces in a fixed order), and the counters left zero for the next call."""
    from ringfa3.ops import reference as reference_backend
    b, s_q, s_k, h, h_kv, d = shape
    gen = torch.Generator(device="cuda").manual_seed(11)
    q, dout = (torch.randn(b, s_q, h, d, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(2))
    k, v = (torch.randn(b, s_k, h_kv, d, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(2))
    out64, lse, ref = _reference(q, k, v, dout, False, (-1, -1), d ** -0.5)
    out = out64.to(q.dtype)
    seen = []
    split_buffers = BACKEND._split_buffers

    def spy(a, device):
        bufs = split_buffers(a, device)
        seen.append(bufs)
        return bufs

    BACKEND._split_buffers = spy
    try:
        grads = [BACKEND.backward(dout, q, k, v, out, lse, False, d ** -0.5, (-1, -1), grads_fp32, False)
                 for _ in range(2)]
    finally:
        del BACKEND._split_buffers
    assert all(bufs is not None for bufs in seen), "the call was not split: pick a shape whose plan splits"
    assert all(int(bufs[0].abs().sum()) == 0 for bufs in seen), "split counters not left zero"
    floor = reference_backend.backward(dout, q, k, v, out, lse, False, d ** -0.5, (-1, -1), False)
    for name, g, f, r in zip("qkv", grads[0], floor, ref):
        assert torch.isfinite(g).all() and _err(g, r) <= 2 * _err(f.to(q.dtype), r) + 1e-3, f"d{name}"
    assert torch.equal(grads[0][1], grads[1][1]) and torch.equal(grads[0][2], grads[1][2])


def test_sm90_backward_fp32_grads_and_fp32_out():
    b, s, h, h_kv, d = 1, 257, 4, 2, 128
    q, k, v, dout = (torch.randn(b, s, hh, d, device="cuda", dtype=torch.bfloat16)
                     for hh in (h, h_kv, h_kv, h))
    out64, lse, ref = _reference(q, k, v, dout, True, (-1, -1), d ** -0.5)
    g32 = BACKEND.backward(dout, q, k, v, out64.float(), lse, True, d ** -0.5, (-1, -1), True)
    g16 = BACKEND.backward(dout, q, k, v, out64.to(q.dtype), lse, True, d ** -0.5, (-1, -1), False)
    for x, y, r in zip(g32, g16, ref):
        assert x.dtype == torch.float32
        assert _err(x, r) <= _err(y, r) + 1e-3


@pytest.mark.parametrize("deterministic", (False, True))
def test_sm90_backward_adds_dq_into_a_running_view(deterministic):
    """dq_acc: the kernel's conversion adds dQ into a float32 view (rows of a larger tensor, as the ring's
    blocks are) and leaves the other rows alone; dK / dV as without it. A view whose base is not 16-byte
    aligned takes the fallback (a fresh dq, then an add) to the same sum."""
    b, s, h, h_kv, d = 2, 300, 4, 2, 128
    q, k, v, dout = (torch.randn(b, s, hh, d, device="cuda", dtype=torch.bfloat16) for hh in (h, h_kv, h_kv, h))
    out64, lse, _ = _reference(q, k, v, dout, True, (-1, -1), d ** -0.5)
    out = out64.to(q.dtype)
    plain = BACKEND.backward(dout, q, k, v, out, lse, True, d ** -0.5, (-1, -1), True, deterministic)
    for shift in (0, 1):   # floats past row 40: 1 leaves the base 4 bytes off 16
        acc = torch.randn(b, s + 100, h, d, device="cuda", dtype=torch.float32)
        expect = acc.clone()
        rows = lambda t: t.as_strided((b, s, h, d), t.stride(), 40 * h * d + shift)   # noqa: E731
        got = BACKEND.backward(dout, q, k, v, out, lse, True, d ** -0.5, (-1, -1), True, deterministic,
                               dq_acc=rows(acc))
        assert got[0].data_ptr() == rows(acc).data_ptr()
        rows(expect).add_(plain[0])
        torch.testing.assert_close(acc, expect, rtol=1e-5, atol=1e-5)
        for x, y in zip(got[1:], plain[1:]):
            assert torch.equal(x, y)


@pytest.mark.parametrize("deterministic", (False, True))
@pytest.mark.parametrize("case", [c for c in VARLEN_CASES if c["d"] in (64, 128)],
                         ids=lambda c: c["name"].replace(" ", "_"))
def test_varlen_backward_blocks_match_float64(case, deterministic, monkeypatch):
    """Packed documents through the backward's varlen form (backward_blocks, one launch per step)."""
    monkeypatch.setattr(BACKEND, "varlen_backward_blocks", True)
    res = run_backward_case(BACKEND, case, deterministic=deterministic)
    assert res["pass"], res
