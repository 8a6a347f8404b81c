"""The e4m3 forward kernel (backend sm90_fp8) against float64 and beside the torch FP8 reference that
specifies its numerics (ops/fp8.py). Skipped without a Hopper GPU and the built library."""
import math

import pytest
import torch
from reference import attention64, rel_err

from ringfa3.ops import fp8
from ringfa3.ops.backends import BACKENDS

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif("sm90_fp8" not in BACKENDS, reason="needs CUDA and ringfa3/lib/libringfa3_sm90.so"),
    pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() != (9, 0),
                       reason="needs an sm_90 GPU"),
]


@pytest.mark.parametrize("d", [128, 256])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(2, 1000, 1000, 4, 4), (1, 300, 777, 8, 2), (1, 513, 4500, 4, 2)])
def test_fp8_kernel_matches_the_fp8_numerics(d, causal, shape):
    # (1, 513, 4500): from 4k keys hd128 takes 224-key blocks, K quantized by the same blocks
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


@pytest.mark.parametrize("d", [128, 256])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("s_k", [1000, 4500])
@pytest.mark.parametrize("sink", [False, True])
def test_fp8_kernel_when_later_blocks_raise_the_row_max(d, causal, s_k, sink):
    # Key blocks run from the last to the first, so scores that grow toward key 0 raise every row's max
    # block after block (by 7-13 log2 units per block at hd128), and a sink (keys 0-63 far above the
    # rest) jumps past exp2's range at the running max. Each block must still be weighted exactly. V
    # varies slowly along the keys, so the e4m3 noise of such large scores barely moves the output while
    # a block weighted wrongly would.
    g = torch.Generator(device="cuda").manual_seed(d + s_k + causal + 2 * sink)
    q = torch.randn(1, 700, 4, d, device="cuda", generator=g)
    k = torch.randn(1, s_k, 2, d, device="cuda", generator=g)
    phase = 2 * math.pi * torch.rand(d, device="cuda", generator=g)
    v = torch.sin(2 * math.pi * torch.arange(s_k, device="cuda")[:, None] / 2048 + phase)[None, :, None, :]
    v = v + 0.1 * torch.randn(1, s_k, 2, d, device="cuda", generator=g)
    q[..., 0] = 8.0
    k[..., 0] = 250.0 * (1 - torch.arange(s_k, device="cuda") / s_k)[None, :, None] * (s_k / 4500)
    if sink:
        k[:, :64, :, 0] = 2000.0
    q, k, v = (x.bfloat16() for x in (q, k, v))
    ref, _ = attention64(q.double(), k.double(), v.double(), causal)
    out, lse = BACKENDS["sm90_fp8"].forward(q, k, v, causal)
    spec, _ = BACKENDS["reference_fp8"].forward(q, k, v, causal, d ** -0.5, (-1, -1), False)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    assert rel_err(out, ref) <= 1.25 * rel_err(spec, ref) + 2e-3, (rel_err(out, ref), rel_err(spec, ref))


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


def test_fp8_merge_of_long_and_short_key_blocks():
    # full attention over 4608 keys as two merged steps: 4352 keys (224-key blocks) then 256 (128-key)
    g = torch.Generator(device="cuda").manual_seed(4)
    q = torch.randn(1, 300, 4, 128, device="cuda", generator=g).bfloat16()                   # (b, s_q, h, d)
    k, v = (torch.randn(1, 4608, 2, 128, device="cuda", generator=g).bfloat16() for _ in range(2))
    ref, _ = attention64(q.double(), k.double(), v.double(), False)
    spec, _ = BACKENDS["reference_fp8"].forward(q, k, v, False, 128 ** -0.5, (-1, -1), False)
    out_acc = torch.zeros(1, 300, 4, 128, device="cuda")
    lse_acc = torch.full((1, 4, 300), float("-inf"), device="cuda")
    for keys in (slice(0, 4352), slice(4352, 4608)):
        BACKENDS["sm90_fp8"].forward_merge(q, k[:, keys], v[:, keys], False, None, (-1, -1), out_acc, lse_acc)
    assert rel_err(out_acc, ref) <= 1.25 * rel_err(spec, ref) + 2e-3


def test_inputs_prepared_for_another_mask_are_refused():
    q = torch.randn(1, 64, 2, 128, device="cuda").bfloat16()
    k, v = (torch.randn(1, 4200, 2, 128, device="cuda").bfloat16() for _ in range(2))
    ours = BACKENDS["sm90_fp8"]
    x = ours.prepare(q, k, v, causal=True)                  # 224-key blocks
    assert x.k_rows == 224 and ours.key_rows(128, 4200, window=(128, 0)) == 128
    with pytest.raises(ValueError, match="prepare"):
        ours.run(x, True, None, (128, 0))


def test_prepare_refuses_what_the_kernel_cannot_run():
    q, k, v = (torch.randn(1, 64, 2, 64, device="cuda").bfloat16() for _ in range(3))
    with pytest.raises(ValueError, match="head_dim"):
        BACKENDS["sm90_fp8"].prepare(q, k, v)


def spec_inputs(q, k, v, seed=0, k_rows=128, q_rows=128):
    """Sm90Fp8Backend.prepare as ops/fp8.py computes it in torch (on q's device)."""
    signs = fp8.random_signs(q.shape[-1], seed, q.device)
    q8, q_scale = fp8.quantize(fp8.rotate(q.float(), signs), q_rows)
    k8, k_scale = fp8.quantize(fp8.rotate(k.float(), signs), k_rows)
    v8, v_scale = fp8.quantize(v, None)
    return q8, k8, fp8.v_transposed(v8), q_scale, k_scale, v_scale


def bits(t):   # bitwise view: e4m3 codes as bytes, float32 scales as int32
    return t.view(torch.uint8 if t.element_size() == 1 else torch.int32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [128, 256])
@pytest.mark.parametrize("s_q, s_k", [(1000, 1000), (1, 129), (129, 1), (300, 777), (129, 4500)])
def test_prepare_is_bitwise_the_torch_spec(dtype, d, s_q, s_k):
    b, h, h_kv = 2, 4, 2
    g = torch.Generator(device="cuda").manual_seed(d + s_q + s_k)
    packed = torch.randn(b, max(s_q, s_k), h + 2 * h_kv, d, device="cuda", generator=g)   # (b, s, q|k|v heads, d)
    packed[..., :4] *= 10                # outlier channels
    packed[:, ::7] *= 1e-4               # small rows in every block: e4m3 subnormal and zero codes
    packed[0, :128, h] = 0               # an all-zero K block (scale 1)
    packed[1, :, h + h_kv + 1] = 0       # an all-zero V head
    packed = packed.to(dtype)
    # slices of the packed tensor: non-contiguous, strides of (s, h + 2 h_kv, d)
    q, k, v = packed[:, :s_q, :h], packed[:, :s_k, h:h + h_kv], packed[:, :s_k, h + h_kv:]
    ours = BACKENDS["sm90_fp8"].prepare(q, k, v, seed=5)
    assert ours.k_rows == (224 if d == 128 and s_k >= 4096 else 128)
    spec = spec_inputs(q, k, v, seed=5, k_rows=ours.k_rows, q_rows=BACKENDS["sm90_fp8"].query_rows(d))
    for name, x, y in zip(("q8", "k8", "vt", "q_scale", "k_scale", "v_scale"), ours, spec):
        assert x.dtype == y.dtype and x.shape == y.shape and x.is_contiguous(), name
        assert torch.equal(bits(x), bits(y)), (name, (bits(x) != bits(y)).sum().item())


@pytest.mark.parametrize("rows", [128, 224])
def test_quantize_rows_without_signs_is_the_block_quantization(rows):
    x = torch.randn(1, 700, 3, 128, device="cuda").bfloat16()
    codes, scale = BACKENDS["sm90_fp8"]._quantize_rows(x, None, rows)
    spec_codes, spec_scale = fp8.quantize(x, rows)
    assert torch.equal(bits(codes), bits(spec_codes)) and torch.equal(bits(scale), bits(spec_scale))


def test_prep_errors_carry_the_library_message():
    x = torch.randn(1, 16, 2, 64, device="cuda").bfloat16()
    with pytest.raises(RuntimeError, match="head_dim 128 or 256"):
        BACKENDS["sm90_fp8"]._quantize_rows(x, None, 128)
    for d, rows in ((128, 100), (256, 224)):
        with pytest.raises(RuntimeError, match="rows per scale"):
            BACKENDS["sm90_fp8"]._quantize_rows(torch.zeros(1, 16, 2, d, device="cuda").bfloat16(), None, rows)
