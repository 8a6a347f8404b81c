"""Local attention backends against float64, forward and backward, with derived tolerances.

The tolerance for a backend in dtype X is a small multiple of the error that plain (unfused) attention
computed in X has against float64 on the same fresh inputs, plus a floor.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from ringfa3.ops import BACKENDS, attention, attention_backward

from reference import attention64, reference64, rel_err, tolerance

CASES = [  # (s_q, s_k, causal, window)
    (128, 128, False, (-1, -1)),
    (128, 128, True, (-1, -1)),
    (77, 77, True, (-1, -1)),  # odd length, partial tiles
    (300, 300, True, (-1, -1)),  # several tiles (BLOCK 256)
    (50, 130, True, (-1, -1)),  # s_q < s_k: bottom-right aligned diagonal
    (130, 50, True, (-1, -1)),  # s_q > s_k: the first 80 rows see nothing
    (96, 96, False, (16, 0)),
    (96, 96, True, (8, -1)),
    (96, 150, False, (8, 8)),
    (96, 150, False, (-1, -1)),  # s_q != s_k, no mask
    (64, 64, False, (3, 3)),
]
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def backend_param(name):
    marks = [] if name == "reference" else [pytest.mark.cuda]
    return pytest.param(name, marks=marks, id=name)


BACKEND_PARAMS = [backend_param(n) for n in ("reference", "cudnn", "flash", "sm90")]


def naive_errors(q, k, v, dout, causal, window, ref) -> dict:
    """Errors of unfused attention computed in the inputs' own dtype (the tolerance's yardstick)."""
    qs, ks, vs = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out, lse = attention64(qs, ks, vs, causal, None, window)
    dq, dk, dv = torch.autograd.grad(out, (qs, ks, vs), dout)
    got = dict(out=out, lse=lse, dq=dq, dk=dk, dv=dv)
    return {n: rel_err(got[n], ref[n]) for n in ref}


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("gqa", (1, 2, 4))
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}-{'causal' if c[2] else 'full'}-w{c[3][0]}_{c[3][1]}")
def test_backend_matches_float64(backend, dtype, gqa, case):
    sq, sk, causal, window = case
    device = "cpu" if backend == "reference" else "cuda"
    if backend == "sm90" and backend not in BACKENDS:
        pytest.skip("sm90 library not built")
    h, d = 4, 32
    q = torch.randn(2, sq, h, d, device=device).to(dtype)
    k = torch.randn(2, sk, h // gqa, d, device=device).to(dtype)
    v = torch.randn(2, sk, h // gqa, d, device=device).to(dtype)
    dout = torch.randn(2, sq, h, d, device=device).to(dtype)
    reason = BACKENDS[backend].unsupported(q, k, v, causal, window) if backend in BACKENDS else "absent"
    if reason:
        with pytest.raises(ValueError, match="backend="):
            attention(q, k, v, causal=causal, window=window, backend=backend)
        pytest.skip(reason)
    ref = reference64(q, k, v, dout, causal, None, window)
    base = naive_errors(q, k, v, dout, causal, window, ref)
    qs, ks, vs = (x.clone().requires_grad_() for x in (q, k, v))
    out = torch.full_like(q, float("nan"))  # poison: every element must be written
    out, lse = attention(qs, ks, vs, causal=causal, window=window, backend=backend)
    assert out.dtype == dtype and lse.dtype == torch.float32 and lse.shape == (2, h, sq)
    out.backward(dout)
    got = dict(out=out, lse=lse, dq=qs.grad, dk=ks.grad, dv=vs.grad)
    for name in ref:
        err, tol = rel_err(got[name], ref[name]), tolerance(base[name], dtype)
        assert err <= tol, f"{name}: rel err {err:.3g} > {tol:.3g} (naive {dtype} {base[name]:.3g})"


def test_fully_masked_rows_give_zero_and_minus_inf():
    q, k, v = torch.randn(1, 130, 2, 32), torch.randn(1, 50, 2, 32), torch.randn(1, 50, 2, 32)
    out, lse = attention(q, k, v, causal=True)
    assert torch.all(out[:, :80] == 0) and torch.all(lse[:, :, :80] == -math.inf)
    assert torch.isfinite(lse[:, :, 80:]).all() and not torch.isnan(out).any()
    dq, dk, dv = attention_backward(torch.randn_like(out), q, k, v, out, lse, causal=True)
    assert torch.all(dq[:, :80] == 0) and not any(torch.isnan(g).any() for g in (dq, dk, dv))


def test_backward_function_matches_autograd():
    q, k, v = (torch.randn(2, 64, 4, 32, requires_grad=True) for _ in range(3))
    out, lse = attention(q, k, v, causal=True)
    dout = torch.randn_like(out)
    want = torch.autograd.grad(out, (q, k, v), dout)
    got = attention_backward(dout, q, k, v, out.detach(), lse, causal=True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_torch_compile_fullgraph_matches_eager():
    q, k, v = (torch.randn(2, 96, 4, 32, requires_grad=True) for _ in range(3))

    def loss(q, k, v):
        out, lse = attention(q, k, v, causal=True)
        return (out.float() ** 2).sum() + lse.detach().sum()

    compiled = torch.compile(loss, fullgraph=True)
    l_eager, g_eager = loss(q, k, v), torch.autograd.grad(loss(q, k, v), (q, k, v))
    l_comp = compiled(q, k, v)
    g_comp = torch.autograd.grad(l_comp, (q, k, v))
    torch.testing.assert_close(l_comp, l_eager)
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b)


def test_custom_ops_pass_opcheck():
    q, k, v = torch.randn(1, 40, 4, 16), torch.randn(1, 40, 2, 16), torch.randn(1, 40, 2, 16)
    torch.library.opcheck(torch.ops.ringfa3.attn_fwd.default, (q, k, v, True, 0.25, -1, -1, "reference", False, False, False))
    out, lse = attention(q, k, v, causal=True)
    torch.library.opcheck(torch.ops.ringfa3.attn_bwd.default,
                          (torch.randn_like(out), q, k, v, out, lse, True, 0.25, -1, -1, "reference", False, False))


class _RecordingBackend:
    """The reference backend, remembering the `deterministic` each backward call was given."""
    name, deterministic = "recording", True

    def __init__(self):
        self.seen = []

    def unsupported(self, q, k, v, causal, window):
        return None

    def forward(self, *a):
        return BACKENDS["reference"].forward(*a)

    def backward(self, dout, q, k, v, out, lse, causal, scale, window, grads_fp32=False, deterministic=False):
        self.seen.append(deterministic)
        return BACKENDS["reference"].backward(dout, q, k, v, out, lse, causal, scale, window, grads_fp32)


@pytest.mark.parametrize("deterministic", (False, True))
def test_deterministic_reaches_the_backward(monkeypatch, deterministic):
    """The op and the ring hand deterministic to the local backward (sm90 picks its dQ order by it)."""
    from ringfa3.parallel.ring import ring_attention
    from ringfa3.parallel.virtual import VirtualRing
    from ringfa3.ops import backends
    rec = _RecordingBackend()
    monkeypatch.setitem(BACKENDS, rec.name, rec)
    monkeypatch.setattr(backends, "NAMES", backends.NAMES + (rec.name,))
    q, k, v = (torch.randn(1, 32, 2, 16, requires_grad=True) for _ in range(3))
    out, _ = attention(q, k, v, causal=True, backend=rec.name, deterministic=deterministic)
    out.sum().backward()
    kv = [torch.stack([k.detach(), v.detach()])] * 2   # a virtual world of 2 (rank 0 sees both shards)
    out, _ = ring_attention(q, k, v, True, 0.25, VirtualRing(2, 0, kv), "contiguous", rec, deterministic=deterministic)
    out.sum().backward()
    assert rec.seen and all(seen == deterministic for seen in rec.seen)


@pytest.mark.parametrize("s_k, want", ((4096, "cudnn"), (16384, "sm90")))
def test_auto_prefers_sm90_from_long_keys(s_k, want, monkeypatch):
    """auto: cuDNN first below backends.LONG_KEYS keys, sm90 first from there on (measured crossover)."""
    from ringfa3.ops import backends

    class Serves:
        def __init__(self, name):
            self.name, self.deterministic = name, True

        def unsupported(self, *a):
            return None

    monkeypatch.setitem(backends.BACKENDS, "sm90", Serves("sm90"))
    monkeypatch.setitem(backends.BACKENDS, "cudnn", Serves("cudnn"))
    q = torch.empty(1, 8, 2, 16, device="meta")
    k = torch.empty(1, s_k, 2, 16, device="meta")
    assert backends.resolve("auto", q, k, k, True, (-1, -1)).name == want


@pytest.mark.parametrize("d, want_bwd", ((128, "sm90"), (256, "sm90"), (64, "cudnn")))
def test_auto_picks_the_backward_on_its_own(d, want_bwd, monkeypatch):
    """auto: below LONG_KEYS keys cuDNN runs the forward, and the backward takes its own order at head
    dims 128 and 256 (sm90 first) and stays with the forward's backend at 64, through the op and the
    ring alike; a backend asked for by name keeps both directions."""
    from ringfa3.ops import backends
    from ringfa3.parallel.ring import ring_attention
    from ringfa3.parallel.virtual import VirtualRing

    class Recording(_RecordingBackend):
        def __init__(self, name):
            super().__init__()
            self.name, self.calls = name, []

        def forward(self, *a):
            self.calls.append("fwd")
            return super().forward(*a)

        def backward(self, *a, **kw):
            self.calls.append("bwd")
            return super().backward(*a, **kw)

    rec = {name: Recording(name) for name in ("sm90", "cudnn")}
    for name, impl in rec.items():
        monkeypatch.setitem(backends.BACKENDS, name, impl)
    q, k, v = (torch.randn(1, 32, 2, d, requires_grad=True) for _ in range(3))
    attention(q, k, v, causal=True)[0].sum().backward()
    assert rec["cudnn"].calls[0] == "fwd" and rec[want_bwd].calls[-1] == "bwd"
    kv = [torch.stack([k.detach(), v.detach()])] * 2
    for impl in rec.values():
        impl.calls.clear()
    out, _ = ring_attention(q, k, v, True, d ** -0.5, VirtualRing(2, 0, kv), "contiguous", rec["cudnn"],
                            auto_backward=True)
    out.sum().backward()
    assert rec["cudnn"].calls[0] == "fwd" and "bwd" in rec[want_bwd].calls
    assert "bwd" not in rec["cudnn" if want_bwd == "sm90" else "sm90"].calls
    for impl in rec.values():
        impl.calls.clear()
    attention(q, k, v, causal=True, backend="cudnn")[0].sum().backward()
    assert rec["cudnn"].calls == ["fwd", "bwd"] and rec["sm90"].calls == []


@pytest.mark.cuda
@pytest.mark.parametrize("d", (64, 128, 256))
@pytest.mark.parametrize("causal", (False, True))
def test_auto_forward_and_backward_pair_matches_float64(d, causal):
    """Under auto the forward's and the backward's backends may differ (cuDNN's forward with sm90's
    backward below 16k keys): the pair's gradients against float64, at the same-dtype tolerance."""
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    dtype = torch.bfloat16
    q, k, v, dout = (torch.randn(2, 333, 4, d, device="cuda").to(dtype) for _ in range(4))
    k, v = k[:, :, :2].contiguous(), v[:, :, :2].contiguous()   # GQA 4 / 2
    ref = reference64(q, k, v, dout, causal, None, (-1, -1))
    base = naive_errors(q, k, v, dout, causal, (-1, -1), ref)
    qs, ks, vs = (x.clone().requires_grad_() for x in (q, k, v))
    out, lse = attention(qs, ks, vs, causal=causal)
    out.backward(dout)
    got = dict(out=out, lse=lse, dq=qs.grad, dk=ks.grad, dv=vs.grad)
    for name in ref:
        err, tol = rel_err(got[name], ref[name]), tolerance(base[name], dtype)
        assert err <= tol, f"{name}: rel err {err:.3g} > {tol:.3g} (naive {dtype} {base[name]:.3g})"
