"""Block lists over packed documents for checking the varlen kernels (tests/test_sm90.py,
tests/test_sm90_bwd.py, scripts/check_sm90.py, scripts/check_sm90_bwd.py): documents of awkward
lengths (one row, a tile plus one, longer than a tile) in one local problem, and zigzag ring steps over
documents (blocks whose rows and keys differ)."""
from __future__ import annotations

import math

import torch

from ringfa3.ops.blocks import Block
from ringfa3.parallel.plan import NO_WINDOW, ring_blocks

from reference import attention64, blocks_mask

DOCS = (0, 100, 301, 700, 701, 1100, 1500, 2000, 2300, 2900, 3500, 4096)   # a 4096-token sequence
VARLEN_CASES = [
    dict(name="docs causal hd128 gqa b2", b=2, h=4, h_kv=2, d=128, causal=True, docs=(0, 1, 8, 137, 1200, 1201, 3000)),
    dict(name="docs full hd64", b=1, h=4, h_kv=4, d=64, causal=False, docs=(0, 500, 1000, 1001, 2047)),
    dict(name="docs window hd256 mqa", b=1, h=2, h_kv=1, d=256, causal=True, window=(100, 0),
         docs=(0, 640, 700, 2000)),
    dict(name="docs causal fp16", b=1, h=4, h_kv=4, d=128, dtype="fp16", causal=True, docs=(0, 129, 257, 385, 2048)),
    dict(name="ring step zigzag docs", b=1, h=4, h_kv=2, d=128, causal=True, ring=(1024, 4, 2, 1), docs=DOCS),
    dict(name="ring step zigzag docs 2", b=2, h=4, h_kv=4, d=128, causal=True, ring=(1024, 4, 0, 1), docs=DOCS),
    dict(name="ring diagonal step zigzag docs", b=1, h=4, h_kv=2, d=64, causal=True, ring=(1024, 4, 1, 1),
         docs=DOCS),
    dict(name="ring step zigzag docs window", b=1, h=2, h_kv=2, d=128, causal=True, window=(300, 0),
         ring=(1024, 4, 1, 1), docs=DOCS),
]


def case_blocks(case) -> tuple[int, int, tuple[Block, ...]]:
    """(s_q, s_k, blocks) of a case: one block per document, or the blocks a ring rank computes for
    one step ((seqlen_local, world, rank, src), documents in global positions)."""
    window = tuple(case.get("window", NO_WINDOW))
    docs = case["docs"]
    if "ring" in case:
        seqlen_local, world, rank, src = case["ring"]
        return seqlen_local, seqlen_local, ring_blocks(seqlen_local, world, rank, src, "zigzag", case["causal"],
                                                       window, tuple(docs))
    blocks = tuple(Block(a, b, a, b, case["causal"], window) for a, b in zip(docs[:-1], docs[1:]))
    return docs[-1], docs[-1], blocks


def _rel(x, ref) -> float:
    return float((x.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def run_case(backend, case, generator=None) -> dict:
    """The case's blocks through backend.forward_blocks into fresh fp32 accumulators (CUDA), against
    float64: rel err of out, its limit (3x the rounding of the exact answer to the input dtype),
    max lse error over live rows, whether uncovered rows kept out 0 and lse -inf, and pass."""
    dtype = torch.float16 if case.get("dtype") == "fp16" else torch.bfloat16
    s_q, s_k, blocks = case_blocks(case)
    b, h, h_kv, d = case["b"], case["h"], case["h_kv"], case["d"]
    q = torch.randn(b, s_q, h, d, device="cuda", generator=generator).to(dtype)
    k, v = (torch.randn(b, s_k, h_kv, d, device="cuda", generator=generator).to(dtype) for _ in range(2))
    acc = torch.zeros(b, s_q, h, d, device="cuda")             # (b, s_q, h, d)
    lacc = torch.full((b, h, s_q), -math.inf, device="cuda")    # (b, h, s_q)
    backend.forward_blocks(q, k, v, blocks, d ** -0.5, acc, lacc)
    ref_o, ref_lse = attention64(q.double(), k.double(), v.double(), mask=blocks_mask(blocks, s_q, s_k, "cuda"))
    dead = torch.isinf(ref_lse)   # rows no block covers keep the accumulators' starting values
    res = dict(name=case["name"], blocks=len(blocks), err=_rel(acc, ref_o),
               limit=3 * _rel(ref_o.to(dtype), ref_o) + 1e-4,
               lse_err=float((lacc.double() - ref_lse)[~dead].abs().max()) if (~dead).any() else 0.0,
               dead_ok=bool(torch.isneginf(lacc[dead]).all() and (acc.transpose(1, 2)[dead] == 0).all()),
               nan=bool(acc.isnan().any() or lacc.isnan().any()))
    res["pass"] = not res["nan"] and res["dead_ok"] and res["err"] <= res["limit"] and res["lse_err"] < 1e-2
    return res


def run_backward_case(backend, case, generator=None, deterministic=False) -> dict:
    """The case's blocks through ops.blocks.backward_blocks (backend's varlen backward when it takes
    them) given the float64 out and lse, against float64 gradients: rel err of dq, dk, dv, their limit
    (3x the rounding of the exact gradients to the input dtype, plus 1e-3), and pass."""
    from ringfa3.ops.blocks import backward_blocks
    dtype = torch.float16 if case.get("dtype") == "fp16" else torch.bfloat16
    s_q, s_k, blocks = case_blocks(case)
    b, h, h_kv, d = case["b"], case["h"], case["h_kv"], case["d"]
    q, dout = (torch.randn(b, s_q, h, d, device="cuda", generator=generator).to(dtype) for _ in range(2))
    k, v = (torch.randn(b, s_k, h_kv, d, device="cuda", generator=generator).to(dtype) for _ in range(2))
    q64, k64, v64 = (x.double().requires_grad_() for x in (q, k, v))
    ref_o, ref_lse = attention64(q64, k64, v64, mask=blocks_mask(blocks, s_q, s_k, "cuda"))
    ref = dict(zip(("dq", "dk", "dv"), torch.autograd.grad(ref_o, (q64, k64, v64), dout.double())))
    dq = torch.zeros(b, s_q, h, d, device="cuda")   # (b, s_q, h, d) float32, as the ring keeps it
    dk, dv = (torch.zeros(b, s_k, h_kv, d, device="cuda") for _ in range(2))
    for k0, k1, dkb, dvb in backward_blocks(backend, dout, q, k, v, ref_o.detach().to(dtype), ref_lse.float(),
                                            blocks, d ** -0.5, dq, deterministic):
        dk[:, k0:k1] += dkb.float()
        dv[:, k0:k1] += dvb.float()
    res = dict(name=case["name"], blocks=len(blocks), deterministic=deterministic)
    for name, got in (("dq", dq), ("dk", dk), ("dv", dv)):
        want = ref[name].detach()
        res[name] = _rel(got, want)
        res[name + "_limit"] = 3 * _rel(want.to(dtype), want) + 1e-3
    res["nan"] = bool(dq.isnan().any() or dk.isnan().any() or dv.isnan().any())
    res["pass"] = not res["nan"] and all(res[n] <= res[n + "_limit"] for n in ("dq", "dk", "dv"))
    return res
