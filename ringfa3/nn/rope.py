"""Rotary position embedding on explicit (global) positions, in float32."""
from __future__ import annotations

import torch
from torch import Tensor


def rope_cos_sin(positions: Tensor, headdim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos, sin for `positions` (s,) or (b, s). Each (..., s, 1, headdim // 2) float32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, headdim, 2, device=positions.device, dtype=torch.float32) / headdim))
    angles = positions.to(torch.float32)[..., None] * inv_freq  # (..., s, d/2)
    return angles.cos()[..., None, :], angles.sin()[..., None, :]


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (b, s, h, d) by pairs (first half, second half), the Llama / HF convention."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)
