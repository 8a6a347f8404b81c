"""The sm90 backend (our Hopper kernel) against a float64 reference. Skipped without CUDA, without a
Hopper GPU, or without the built library (python scripts/build_csrc.py)."""
import math

import pytest
import torch
from reference import attention64
from varlen_cases import VARLEN_CASES, run_case


def _backend():
    from ringfa3.ops import sm90 as mod
    return mod.BACKEND


BACKEND = _backend() if torch.cuda.is_available() else None
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(BACKEND is None, reason="needs CUDA and ringfa3/lib/libringfa3_sm90.so"),
    pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() != (9, 0),
                       reason="needs an sm_90 GPU"),
]


def rel(x, ref):
    return float((x.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def rounding_floor(ref, dtype):
    """Relative error of merely storing the exact answer in `dtype`: the tolerance scale."""
    return rel(ref.to(dtype), ref)


# (b, s_q, s_k, h, h_kv, d, dtype, causal, window)
CASES = [
    (2, 1024, 1024, 4, 4, 128, torch.bfloat16, False, (-1, -1)),
    (2, 1024, 1024, 4, 4, 128, torch.bfloat16, True, (-1, -1)),
    (1, 1000, 1000, 3, 3, 128, torch.bfloat16, True, (-1, -1)),
    (2, 300, 777, 2, 2, 128, torch.bfloat16, True, (-1, -1)),
    (1, 777, 300, 2, 2, 128, torch.bfloat16, True, (-1, -1)),     # rows with no key: out 0, lse -inf
    (2, 512, 512, 8, 2, 128, torch.bfloat16, True, (-1, -1)),     # GQA
    (1, 1024, 1024, 2, 2, 128, torch.bfloat16, False, (128, 64)),
    (2, 1024, 1024, 4, 4, 128, torch.float16, True, (-1, -1)),
    (2, 1024, 1024, 4, 4, 64, torch.bfloat16, True, (-1, -1)),
    (1, 999, 999, 2, 2, 256, torch.bfloat16, False, (-1, -1)),
    # hd64 runs 192-row tiles (3 consumer warpgroups)
    (2, 1000, 1000, 4, 4, 64, torch.bfloat16, True, (-1, -1)),
    (1, 1500, 1500, 8, 2, 64, torch.bfloat16, False, (300, 200)),
    (1, 777, 300, 2, 2, 64, torch.bfloat16, True, (-1, -1)),
    (2, 2000, 2000, 8, 8, 64, torch.float16, False, (-1, -1)),
    (2, 2000, 2000, 8, 8, 128, torch.bfloat16, False, (-1, -1)),
    (2, 300, 777, 2, 2, 128, torch.bfloat16, False, (-1, -1)),
    # from 8k keys, hd128 runs 176-key blocks, full and causal (bottom-right too); with a window 128
    (1, 8200, 8200, 2, 2, 128, torch.bfloat16, False, (-1, -1)),
    (1, 8200, 8200, 2, 2, 128, torch.bfloat16, True, (-1, -1)),
    (1, 5000, 9000, 4, 2, 128, torch.float16, True, (-1, -1)),
    (1, 9000, 9000, 2, 2, 128, torch.bfloat16, True, (300, 0)),
    # from 1k keys, an even number of query blocks, no left window: 2-CTA clusters (RINGFA3_CLUSTER)
    (1, 4096, 4096, 4, 4, 128, torch.bfloat16, False, (-1, -1)),
    (2, 8192, 9000, 4, 2, 128, torch.float16, False, (-1, -1)),
    (1, 256, 5000, 2, 1, 128, torch.bfloat16, False, (-1, -1)),
    (2, 1500, 1100, 4, 2, 128, torch.float16, False, (-1, -1)),   # 1k-2k keys: query and key tails
    # causal and right-only windows in clusters, from 8k keys: the pair walks the union of its tiles'
    # key blocks; rows < 1950 see no key, so query blocks 14 and 15 pair an empty tile with a live one
    (1, 8192, 8192, 2, 2, 128, torch.bfloat16, True, (-1, -1)),
    (1, 10400, 8450, 1, 1, 128, torch.bfloat16, True, (-1, -1)),
    (1, 8192, 8192, 2, 2, 128, torch.float16, False, (-1, 300)),
    # 5 heads whose K/V (4 MB each) exceed one 16 MB L2 chunk, which must divide them: 5 chunks of one
    # head (fwd_launch.h heads_per_chunk), plain and in clusters
    (1, 4096, 4096, 5, 5, 256, torch.bfloat16, False, (-1, -1)),
    (1, 4096, 4096, 5, 5, 256, torch.bfloat16, True, (-1, -1)),
    (1, 8192, 8192, 5, 5, 128, torch.bfloat16, False, (-1, -1)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"b{c[0]}q{c[1]}k{c[2]}h{c[3]}/{c[4]}d{c[5]}{str(c[6])[6:]}"
                                                     f"{'C' if c[7] else 'F'}w{c[8][0]}_{c[8][1]}")
def test_forward_matches_float64(case):
    b, s_q, s_k, h, h_kv, d, dtype, causal, window = case
    q = torch.randn(b, s_q, h, d, device="cuda", dtype=dtype)
    k = torch.randn(b, s_k, h_kv, d, device="cuda", dtype=dtype)
    v = torch.randn(b, s_k, h_kv, d, device="cuda", dtype=dtype)
    assert BACKEND.unsupported(q, k, v, causal, window) is None
    out, lse = BACKEND.forward(q, k, v, causal, d ** -0.5, window, False)
    ref_o, ref_lse = attention64(q.double(), k.double(), v.double(), causal, d ** -0.5, window)
    assert out.dtype == dtype and out.shape == q.shape and lse.shape == (b, h, s_q)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert rel(out, ref_o) <= 4 * rounding_floor(ref_o, dtype) + 1e-4
    dead = torch.isinf(ref_lse)
    assert torch.isneginf(lse[dead]).all() and (out.transpose(1, 2)[dead] == 0).all()
    assert (lse.double() - ref_lse)[~dead].abs().max() < 1e-2


def test_out_fp32_and_merge():
    b, s_q, s_k, h, d = 2, 512, 1024, 4, 128
    q = torch.randn(b, s_q, h, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, s_k, h, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(b, s_k, h, d, device="cuda", dtype=torch.bfloat16)
    ref_o, ref_lse = attention64(q.double(), k.double(), v.double(), True, d ** -0.5)
    out, lse = BACKEND.forward(q, k, v, True, None, (-1, -1), True)
    assert out.dtype == torch.float32
    assert rel(out, ref_o) <= 3 * rounding_floor(ref_o, torch.bfloat16)
    # Two key blocks merged into fp32 accumulators give the single-call answer.
    acc = torch.zeros(b, s_q, h, d, device="cuda")
    lacc = torch.full((b, h, s_q), -math.inf, device="cuda")
    BACKEND.forward_merge(q, k[:, :512], v[:, :512], False, None, (-1, -1), acc, lacc)
    BACKEND.forward_merge(q, k[:, 512:], v[:, 512:], True, None, (-1, -1), acc, lacc)
    assert rel(acc, ref_o) <= 3 * rounding_floor(ref_o, torch.bfloat16)
    assert (lacc.double() - ref_lse).abs().max() < 1e-2


@pytest.mark.parametrize("s_k,steps", [(8192, 8), (16384, 2)])   # 1k-key and 8k-key merges (176-key blocks)
def test_back_to_back_merges_equal_serialized(s_k, steps):
    """A merge launch may start under the previous one's tail (programmatic dependent launch,
    csrc/fwd_kernel.h) and must still fold into that one's finished result: merges launched back to
    back, eagerly or replayed from a CUDA graph, equal the same merges with a device sync between
    each, bit for bit, and match float64."""
    b, s_q, h, d = 1, 4096, 8, 128   # 256 tiles per launch: two waves and a tail
    q = torch.randn(b, s_q, h, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, s_k, h, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(b, s_k, h, d, device="cuda", dtype=torch.bfloat16)
    acc = torch.empty(b, s_q, h, d, device="cuda")
    lacc = torch.empty(b, h, s_q, device="cuda")

    def merge_all(sync):   # key slices are views: nothing but the merges runs between them
        acc.zero_()
        lacc.fill_(-math.inf)
        for i in range(steps):
            keys = slice(i * s_k // steps, (i + 1) * s_k // steps)
            BACKEND.forward_merge(q, k[:, keys], v[:, keys], False, None, (-1, -1), acc, lacc)
            if sync:
                torch.cuda.synchronize()

    merge_all(sync=True)
    serial = acc.clone(), lacc.clone()
    for _ in range(3):
        merge_all(sync=False)
        assert torch.equal(acc, serial[0]) and torch.equal(lacc, serial[1])
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        merge_all(sync=False)
    for _ in range(3):   # the graph resets acc and lacc itself (merge_all)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(acc, serial[0]) and torch.equal(lacc, serial[1])
    ref_o, ref_lse = attention64(q.double(), k.double(), v.double(), False, d ** -0.5)
    assert rel(serial[0], ref_o) <= 3 * rounding_floor(ref_o, torch.bfloat16)
    assert (serial[1].double() - ref_lse).abs().max() < 1e-2


@pytest.mark.parametrize("case", VARLEN_CASES, ids=lambda c: c["name"].replace(" ", "_"))
def test_varlen_blocks_match_float64(case):
    """Packed documents through the varlen kernel (forward_blocks, merged into fp32 accumulators)."""
    res = run_case(BACKEND, case)
    assert res["pass"], res


def test_unsupported_reasons():
    q = torch.randn(1, 8, 2, 96, device="cuda", dtype=torch.bfloat16)
    assert "head_dim" in BACKEND.unsupported(q, q, q, False, (-1, -1))
    q = torch.randn(1, 8, 2, 128, device="cuda", dtype=torch.float32)
    assert "bf16/fp16" in BACKEND.unsupported(q, q, q, False, (-1, -1))
