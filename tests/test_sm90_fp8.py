"""The e4m3 forward kernel (backend sm90_fp8) against float64 and beside the torch FP8 reference that
specifies its numerics (ops/fp8.py). Skipped without a Hopper GPU and the built library."""
import pytest
import torch
from reference import attention64, rel_err

from ringfa3.ops.backends import BACKENDS

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif("sm90_fp8" not in BACKENDS, reason="needs CUDA and ringfa3/lib/libringfa3_sm90.so"),
    pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() != (9, 0),
                       reason="needs an sm_90 GPU"),
]


@pytest.mark.parametrize("d", [128, 256])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(2, 1000, 1000, 4, 4), (1, 300, 777, 8, 2)])
def test_fp8_kernel_matches_the_fp8_numerics(d, causal, shape):
    b, s_q, s_k, h, h_kv = shape
    g = torch.Generator(device="cuda").manual_seed(d + s_q + causal)
    q = torch.randn(b, s_q, h, d, device="cuda", generator=g)
    k = torch.randn(b, s_k, h_kv, d, device="cuda", generator=g)
    v = torch.randn(b, s_k, h_kv, d, device="cuda", generator=g)
    q[..., :4] *= 10   # outlier channels: the rotation's job
    q, k, v = (x.bfloat16() for x in (q, k, v))
    ref, ref_lse = attention64(q.double(), k.double(), v.double(), causal)
    out, lse = BACKENDS["sm90_fp8"].forward(q, k, v, causal)
    spec, _ = BACKENDS["reference_fp8"].forward(q, k, v, causal, d ** -0.5, (-1, -1), False)
    assert out.dtype == q.dtype and lse.shape == (b, h, s_q)
    e_ours, e_spec = rel_err(out, ref), rel_err(spec, ref)
    assert e_ours <= 1.25 * e_spec + 2e-3, (e_ours, e_spec)
    seen = torch.isfinite(ref_lse)
    assert torch.isneginf(lse[~seen]).all() and (out.transpose(1, 2)[~seen] == 0).all()
    assert rel_err(torch.where(seen, lse, 0), torch.where(seen, ref_lse, 0)) < 0.02


def test_fp8_kernel_refuses_a_backward():
    q = torch.randn(1, 256, 2, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    from ringfa3.ops import attention
    out, _ = attention(q, q, q, backend="sm90_fp8", precision="fp8")
    with pytest.raises(RuntimeError, match="forward-only"):
        out.sum().backward()


def test_fp8_kernel_merges_a_ring_step_in_its_epilogue():
    g = torch.Generator(device="cuda").manual_seed(3)
    q, k, v = (torch.randn(1, 640, 4, 128, device="cuda", generator=g).bfloat16() for _ in range(3))
    ref, _ = attention64(q.double(), k.double(), v.double(), True)
    spec, _ = BACKENDS["reference_fp8"].forward(q, k, v, True, 128 ** -0.5, (-1, -1), False)
    out_acc = torch.zeros(1, 640, 4, 128, device="cuda")                       # (b, s_q, h, d)
    lse_acc = torch.full((1, 4, 640), float("-inf"), device="cuda")           # (b, h, s_q)
    # causal attention as three blocks merged in place, as ring steps are: rows [0, 256) x keys
    # [0, 256) causal, rows [256, 640) x keys [0, 256) full, rows [256, 640) x keys [256, 640) causal
    for rows, keys, causal in ((slice(0, 256), slice(0, 256), True), (slice(256, 640), slice(0, 256), False),
                               (slice(256, 640), slice(256, 640), True)):
        BACKENDS["sm90_fp8"].forward_merge(q[:, rows], k[:, keys], v[:, keys], causal, None, (-1, -1),
                                           out_acc[:, rows], lse_acc[:, :, rows])
    assert rel_err(out_acc, ref) <= 1.25 * rel_err(spec, ref) + 2e-3
