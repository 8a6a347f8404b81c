"""FP8 (e4m3) attention numerics: incoherent processing and block quantization.

This module is the specification an FP8 kernel implements, written in torch so it runs anywhere:
  1. Incoherent processing: Q and K are multiplied along the head dim by the same random orthogonal
     matrix M = diag(signs) H / sqrt(d) (H the Walsh-Hadamard matrix). Q M (K M)^T = Q K^T, so the
     scores are unchanged in exact arithmetic, but an outlier channel is spread over all d channels
     before quantization instead of setting the scale of every row it appears in.
  2. Block quantization: one float32 scale per `block_q` query rows of a head, per `block_k` key rows
     of a head, and per head for V (a V scale that changed along the key axis would change inside
     the P @ V reduction). A scale maps the block's largest magnitude to e4m3's largest finite, 448.
     The sm90 kernel takes block_q = its query tile (128 rows) and block_k = its key block (224 keys
     at head dim 128 from 4k keys without a window, else 128), so each score block has one scale; the
     defaults here are 128 and 128.
  3. The probabilities P (in [0, 1] after the running-max subtraction) are rounded to e4m3 for the
     P @ V product; the softmax denominators are summed from the unrounded P.
Scores and accumulators stay float32; out is returned in the inputs' dtype with a float32 lse, like
every other local attention here, so FP8 blocks merge into a ring like bf16 ones.

`per_tensor=True, incoherent=False` is the naive baseline (one scale for each whole tensor).
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import reference

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
BACKWARD_ERROR = ("attention with precision='fp8' is forward-only (evaluation and inference): train with "
                  "precision='native' on bf16 inputs")


def random_signs(head_dim: int, seed: int, device=None) -> Tensor:
    """The diagonal of the random sign flip, (head_dim,) of +-1 in float32, fixed by `seed`."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, (head_dim,), generator=gen) * 2 - 1).to(device=device, dtype=torch.float32)


def hadamard(x: Tensor) -> Tensor:
    """Orthonormal Walsh-Hadamard transform along the last dim (a power of two), in O(d log d)."""
    d = x.shape[-1]
    if d & (d - 1):
        raise ValueError(f"the Hadamard transform needs a power-of-two head dim, got {d}")
    lead = x.shape[:-1]
    y = x.reshape(-1, d)
    h = 1
    while h < d:
        pairs = y.view(-1, d // (2 * h), 2, h)                # butterflies of width h
        y = torch.stack((pairs[:, :, 0] + pairs[:, :, 1], pairs[:, :, 0] - pairs[:, :, 1]), dim=2).view(-1, d)
        h *= 2
    return (y * d ** -0.5).view(*lead, d)


def rotate(x: Tensor, signs: Tensor) -> Tensor:
    """x M with M = diag(signs) H / sqrt(d): orthogonal, so rotating both Q and K keeps Q K^T."""
    return hadamard(x * signs)


def quantize(x: Tensor, rows_per_scale: int | None) -> tuple[Tensor, Tensor]:
    """x (b, s, h, d) as e4m3 codes (b, s, h, d) and float32 scales (b, n_blocks, h), x ~ codes * scale.

    One scale per `rows_per_scale` rows of a head (None: per head); all-zero blocks get scale 1.
    """
    x = x.float()
    b, s, h, d = x.shape
    rows = s if rows_per_scale is None else rows_per_scale
    n = -(-s // rows)
    padded = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, n * rows - s))   # (b, n*rows, h, d)
    blocks = padded.view(b, n, rows, h, d)
    amax = blocks.abs().amax(dim=(2, 4))                                  # (b, n, h)
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    codes = (blocks / scale[:, :, None, :, None]).to(E4M3)
    return codes.view(b, n * rows, h, d)[:, :s], scale


def fake_quantize(x: Tensor, rows_per_scale: int | None, per_tensor: bool = False) -> tuple[Tensor, Tensor]:
    """Round x (b, s, h, d) to e4m3 with float32 scales; returns (x8 as float32 values * scale, scales).

    One scale per `rows_per_scale` rows of a head (None: per head; per_tensor: one for all). Scales
    are (b, n_blocks, h) (or a 0-d tensor); all-zero blocks get scale 1.
    """
    if per_tensor:
        x = x.float()
        scale = (x.abs().amax() / E4M3_MAX).clamp_min(torch.finfo(torch.float32).tiny)
        return (x / scale).to(E4M3).float() * scale, scale
    codes, scale = quantize(x, rows_per_scale)
    b, s, h, d = codes.shape
    rows = s if rows_per_scale is None else rows_per_scale
    per_row = scale.repeat_interleave(rows, dim=1)[:, :s]                 # (b, s, h)
    return codes.float() * per_row[..., None], scale


def fp8_key_order(n: int) -> Tensor:
    """The key order of the FP8 kernel's V^T: position i of every 16-key group holds key order[i].

    An e4m3 WGMMA k-step wants keys 4t..4t+3 (and 16+4t..) of P in quad lane t, while the fp32 score
    accumulator gives that lane keys 2t, 2t+1, 8+2t, 9+2t (and +16); storing V's keys in this order
    makes the lane's own values the right operand (csrc/consumer.h, convert_p). (n,) int64, n % 16 == 0.
    """
    pos = torch.arange(16)
    t, j = pos // 4, pos % 4
    group = 2 * t + j % 2 + 8 * (j // 2)                                   # key at position 4t + j
    return (torch.arange(0, n, 16)[:, None] + group[None, :]).reshape(-1)


def v_transposed(v8: Tensor) -> Tensor:
    """V's e4m3 codes (b, s_k, h_kv, d) as the kernel's V^T: (b, h_kv, d, s_v), keys contiguous in
    fp8_key_order, s_v = s_k rounded up to 16, zero past s_k."""
    b, s_k, h_kv, d = v8.shape
    s_v = -(-s_k // 16) * 16
    vt = torch.zeros(b, h_kv, d, s_v, device=v8.device, dtype=torch.uint8)
    vt[..., :s_k] = v8.view(torch.uint8).permute(0, 2, 3, 1)
    return vt[..., fp8_key_order(s_v).to(v8.device)].contiguous().view(E4M3)


def attention_fp8(q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float, window=(-1, -1), *,
                  incoherent: bool = True, per_tensor: bool = False, block_q: int = 128, block_k: int = 128,
                  seed: int = 0, out_fp32: bool = False) -> tuple[Tensor, Tensor]:
    """FP8 attention as the kernel computes it. q (b, s_q, h, d); k, v (b, s_k, h_kv, d).

    Returns out (b, s_q, h, d) in q's dtype (float32 if out_fp32) and lse (b, h, s_q) float32.
    """
    qf, kf = q.float(), k.float()
    if incoherent:
        signs = random_signs(q.shape[-1], seed, q.device)
        qf, kf = rotate(qf, signs), rotate(kf, signs)
    q8, _ = fake_quantize(qf, block_q, per_tensor)
    k8, _ = fake_quantize(kf, block_k, per_tensor)
    v8, _ = fake_quantize(v, None, per_tensor)
    out, lse = reference.forward(q8, k8, v8, causal, scale, window, out_fp32=False, p_dtype=E4M3)
    return out.to(torch.float32 if out_fp32 else q.dtype), lse
