"""FP8 numerics (ringfa3/ops/fp8.py): the rotation, the quantizer, and FP8 attention against float64."""
import math

import pytest
import torch

from ringfa3.ops import fp8

from reference import attention64, rel_err


def test_hadamard_is_orthonormal_and_rotation_keeps_scores():
    eye = torch.eye(64, dtype=torch.float64)
    h = fp8.hadamard(eye)
    assert torch.allclose(h @ h.T, eye, atol=1e-12)
    signs = fp8.random_signs(64, seed=3).double()
    assert set(signs.tolist()) == {-1.0, 1.0}
    q, k = torch.randn(2, 5, 64, dtype=torch.float64), torch.randn(2, 7, 64, dtype=torch.float64)
    qr, kr = fp8.rotate(q, signs), fp8.rotate(k, signs)
    assert torch.allclose(qr @ kr.transpose(-1, -2), q @ k.transpose(-1, -2), atol=1e-12)


def test_hadamard_spreads_an_outlier_channel():
    x = torch.zeros(1, 128)
    x[0, 5] = 100.0
    y = fp8.rotate(x, fp8.random_signs(128, 0))
    assert torch.allclose(y.abs(), torch.full_like(y, 100.0 / math.sqrt(128)))


def test_hadamard_rejects_non_power_of_two():
    with pytest.raises(ValueError, match="power-of-two head dim"):
        fp8.hadamard(torch.randn(3, 96))


@pytest.mark.parametrize("rows", [None, 16, 50])
def test_fake_quantize_error_is_bounded_by_e4m3_precision(rows):
    x = torch.randn(2, 100, 3, 32) * torch.rand(2, 100, 3, 1) * 10
    x8, scale = fp8.fake_quantize(x, rows)
    # e4m3 keeps 3 mantissa bits: relative rounding error <= 2^-4 for normal values; subnormals
    # (below 2^-6 of the scale's unit) err by at most half their step, 2^-10 units.
    n_blocks = 1 if rows is None else -(-100 // rows)
    assert scale.shape == (2, n_blocks, 3)
    unit = scale.repeat_interleave(100 if rows is None else rows, dim=1)[:, :100, :, None]
    bound = torch.maximum(x.abs() * 2.0 ** -4, unit * 2.0 ** -10)
    assert ((x8 - x).abs() <= bound * 1.0001).all()
    assert torch.allclose(x8.abs().amax(dim=(1, 3)) if rows is None else x8.abs().amax(), x.abs().amax(dim=(1, 3))
                          if rows is None else x.abs().amax())  # the block max maps to 448 exactly


def _outlier_qkv(s, h, hk, d, factor, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, s, h, d, generator=g, dtype=torch.float64)
    k, v = (torch.randn(1, s, hk, d, generator=g, dtype=torch.float64) for _ in range(2))
    ch = torch.randperm(d, generator=g)[:4]
    q[..., ch] *= factor
    k[..., ch] *= factor
    return q, k, v


@pytest.mark.parametrize("causal", [False, True])
def test_incoherent_fp8_halves_naive_error_on_outlier_channels(causal):
    q, k, v = _outlier_qkv(300, 4, 2, 64, factor=10.0, seed=11)
    ref, ref_lse = attention64(q, k, v, causal)
    f = (q.float(), k.float(), v.float())
    ours, lse = fp8.attention_fp8(*f, causal, 64 ** -0.5)
    naive, _ = fp8.attention_fp8(*f, causal, 64 ** -0.5, incoherent=False, per_tensor=True)
    bf16 = attention64(q.bfloat16().double(), k.bfloat16().double(), v.bfloat16().double(), causal)[0]
    e_ours, e_naive, e_bf16 = rel_err(ours, ref), rel_err(naive, ref), rel_err(bf16, ref)
    assert e_ours <= 0.5 * e_naive, (e_ours, e_naive)
    assert e_bf16 < e_ours < 0.15, (e_bf16, e_ours)
    # the lse is the exact log-sum-exp of the dequantized scores: off only by their rounding
    assert rel_err(lse, ref_lse) < 0.02, rel_err(lse, ref_lse)


def test_fp8_without_outliers_is_at_e4m3_precision_and_handles_masked_rows():
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 200, 2, 32, generator=g) for _ in range(3))
    window = (10, 0)
    ref, ref_lse = attention64(q.double(), k.double(), v.double(), True, None, window)
    out, lse = fp8.attention_fp8(q, k, v, True, 32 ** -0.5, window)
    assert out.dtype == q.dtype and lse.dtype == torch.float32 and lse.shape == (2, 2, 200)
    assert rel_err(out, ref) < 0.08  # V and P carry 3 mantissa bits
    # rows with no visible key (s_q > s_k, bottom-right alignment) give out 0 and lse -inf
    out, lse = fp8.attention_fp8(q, k[:, :50], v[:, :50], True, 32 ** -0.5)
    assert torch.isneginf(lse[:, :, :150]).all() and (out[:, :150] == 0).all()
    assert torch.isfinite(lse[:, :, 150:]).all()


# ---------------------------------------------------------------- precision='fp8' through the API
def test_attention_precision_fp8_is_the_fp8_numerics_and_forward_only():
    from ringfa3.ops import attention

    q, k, v = (x.float().requires_grad_() for x in _outlier_qkv(130, 4, 2, 32, factor=10.0, seed=2))
    out, lse = attention(q, k, v, causal=True, precision="fp8")
    spec, spec_lse = fp8.attention_fp8(q.detach(), k.detach(), v.detach(), True, 32 ** -0.5)
    assert torch.equal(out.detach(), spec) and torch.equal(lse, spec_lse)
    with pytest.raises(RuntimeError, match="forward-only.*precision='native'"):
        out.sum().backward()


def test_precision_errors_name_the_argument():
    from ringfa3.ops import attention

    q = torch.randn(1, 8, 2, 32)
    with pytest.raises(ValueError, match="precision='int4' is not known"):
        attention(q, q, q, precision="int4")
    with pytest.raises(ValueError, match="backend='reference' computes in precision 'native'"):
        attention(q, q, q, backend="reference", precision="fp8")
    with pytest.raises(ValueError, match="power of two"):
        attention(torch.randn(1, 8, 2, 48), torch.randn(1, 8, 2, 48), torch.randn(1, 8, 2, 48), precision="fp8")


def _fp8_ring(rank, world, seed):
    from ringfa3.parallel import ring_flash_attn_func, shard, unshard

    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 96 * world, h, 32, generator=g) for h in (4, 2, 2))
    loc = [shard(x, 1, layout="zigzag") for x in (q, k, v)]
    out, lse = ring_flash_attn_func(*loc, causal=True, layout="zigzag", return_lse=True, precision="fp8")
    grad_err = None
    try:
        ring_flash_attn_func(*(x.requires_grad_() for x in loc), causal=True, precision="fp8").sum().backward()
    except RuntimeError as e:
        grad_err = str(e)
    return unshard(out, 1, layout="zigzag"), grad_err, (q, k, v)


@pytest.mark.parametrize("world", [2, 3])
def test_ring_fp8_error_matches_single_process_fp8(world):
    from distributed import run_distributed

    results = run_distributed(_fp8_ring, world, 7)
    out, grad_err, (q, k, v) = results[0]
    ref, _ = attention64(q.double(), k.double(), v.double(), True)
    single, _ = fp8.attention_fp8(q, k, v, True, 32 ** -0.5)
    # each ring block quantizes its own rows (its own scales), so the error is of the same size, not equal
    assert rel_err(out, ref) <= 1.5 * rel_err(single, ref)
    assert all("forward-only" in r[1] for r in results)


def test_layer_switches_to_fp8_for_evaluation():
    from ringfa3.nn import RingFlashAttention

    torch.manual_seed(0)
    layer = RingFlashAttention(128, 4, 2)
    x = torch.randn(2, 64, 128)
    with torch.no_grad():
        native = layer(x)
        layer.precision = "fp8"
        quantized = layer(x)
    assert rel_err(quantized, native.double()) < 0.1


def test_the_sm90_fp8_signs_are_made_once_per_head_dim_seed_and_device():
    from ringfa3.ops.sm90_fp8 import signs_on
    cpu = torch.device("cpu")
    s = signs_on(128, 3, cpu)
    assert signs_on(128, 3, cpu) is s and signs_on(128, 4, cpu) is not s
    assert torch.equal(s, fp8.random_signs(128, 3))
