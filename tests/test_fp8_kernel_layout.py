"""The e4m3 kernel's P @ V without register shuffles (csrc/consumer.h, convert_p): each lane packs its
own accumulator values as the A operand, and V^T's keys are stored in fp8_key_order so the product is
unchanged. Checked here on the layouts CuTe defines for SM90 WGMMA (CLayout_64xN, ALayout_64x32), and
the V^T packing; the kernel itself runs on the device (tests/test_sm90_fp8.py)."""
import torch

from ringfa3.ops import fp8


def c_coord(t: int, c: int) -> tuple[int, int]:
    """(row, key) of accumulator value c of warpgroup thread t (CLayout_64xN)."""
    t0, t1, t2 = t % 4, t // 4 % 8, t // 32
    v0, v1, v2 = c % 2, c // 2 % 2, c // 4
    return t1 + 16 * t2 + 8 * v1, 2 * t0 + v0 + 8 * v2


def a_coord(t: int, i: int) -> tuple[int, int]:
    """(row, k) of A-operand value i of thread t in one 32-deep 8-bit k-step (ALayout_64x32)."""
    t0, t1, t2 = t % 4, t // 4 % 8, t // 32
    v0, v1, v2 = i % 4, i // 4 % 2, i // 8
    return t1 + 16 * t2 + 8 * v1, 4 * t0 + v0 + 16 * v2


def kernel_source(i: int) -> int:
    """convert_p: A value i = 8g + 4r + j takes accumulator value 4 (2g + j/2) + 2r + j%2."""
    g, r, j = i // 8, i // 4 % 2, i % 4
    return 4 * (2 * g + j // 2) + 2 * r + j % 2


def test_register_packing_with_the_key_order_keeps_p_times_v():
    order = fp8.fp8_key_order(32)
    p = torch.randn(64, 32, dtype=torch.float64)        # one 32-key k-step of P (rows x keys)
    v = torch.randn(32, 16, dtype=torch.float64)
    a = torch.full((64, 32), float("nan"), dtype=torch.float64)
    for t in range(128):
        for i in range(16):
            row, k = a_coord(t, i)
            row_c, key = c_coord(t, kernel_source(i))
            assert row == row_c                          # a lane's own row: no shuffle needed
            assert key == int(order[k])                  # the key V^T stores at position k
            a[row, k] = p[row_c, key]
    assert not a.isnan().any()
    torch.testing.assert_close(a @ v[order], p @ v, rtol=1e-12, atol=1e-12)


def test_v_transposed_is_the_permuted_zero_padded_transpose():
    v = torch.randn(2, 37, 3, 16)
    v8, _ = fp8.quantize(v, None)
    vt = fp8.v_transposed(v8)
    assert vt.shape == (2, 3, 16, 48) and vt.dtype == fp8.E4M3 and vt.is_contiguous()
    order = fp8.fp8_key_order(48)
    assert sorted(order.tolist()) == list(range(48))
    codes = vt.view(torch.uint8)
    for pos, key in enumerate(order.tolist()):
        if key < 37:
            assert torch.equal(codes[..., pos], v8.view(torch.uint8)[:, key])   # (b, h_kv, d)
        else:
            assert not codes[..., pos].any()


def test_quantize_codes_times_scales_is_fake_quantize():
    x = torch.randn(2, 100, 3, 32) * 5
    codes, scale = fp8.quantize(x, 32)
    assert codes.dtype == fp8.E4M3 and scale.shape == (2, 4, 3)
    x8, scale2 = fp8.fake_quantize(x, 32)
    assert torch.equal(scale, scale2)
    torch.testing.assert_close(codes.float() * scale.repeat_interleave(32, 1)[:, :100, :, None], x8, rtol=0, atol=0)
