"""Which keys a query row may see, for causal and sliding-window attention.

Convention (flash-attn): with s_q != s_k the diagonal is aligned bottom-right, so query row i sits at
key position i + (s_k - s_q). Row i sees keys j with
    i + off - left <= j <= i + off + right      (off = s_k - s_q; a bound of -1 is unbounded)
and causal sets right = 0.
"""
from __future__ import annotations

import torch
from torch import Tensor


def effective_window(causal: bool, window: tuple[int, int]) -> tuple[int, int]:
    left, right = window
    if causal:
        right = 0 if right < 0 else min(right, 0)
    return left, right


def is_masked(causal: bool, window: tuple[int, int]) -> bool:
    left, right = effective_window(causal, window)
    return left >= 0 or right >= 0


def tile_visibility(i0: int, i1: int, j0: int, j1: int, sq: int, sk: int, causal: bool,
                    window: tuple[int, int]) -> str:
    """'none', 'full' or 'partial': how much of the tile rows [i0, i1) x keys [j0, j1) is visible."""
    left, right = effective_window(causal, window)
    off = sk - sq
    big = sq + sk + 1
    hi_first, hi_last = (i0 + off + right, i1 - 1 + off + right) if right >= 0 else (big, big)
    lo_first, lo_last = (i0 + off - left, i1 - 1 + off - left) if left >= 0 else (-big, -big)
    if j0 > hi_last or j1 - 1 < lo_first:
        return "none"
    if j1 - 1 <= hi_first and j0 >= lo_last:
        return "full"
    return "partial"


def tile_mask(i0: int, i1: int, j0: int, j1: int, sq: int, sk: int, causal: bool,
              window: tuple[int, int], device) -> Tensor:
    """Boolean visibility of the tile. (i1 - i0, j1 - j0)"""
    left, right = effective_window(causal, window)
    rows = torch.arange(i0, i1, device=device)[:, None] + (sk - sq)
    cols = torch.arange(j0, j1, device=device)[None, :]
    keep = torch.ones(i1 - i0, j1 - j0, dtype=torch.bool, device=device)
    if right >= 0:
        keep &= cols <= rows + right
    if left >= 0:
        keep &= cols >= rows - left
    return keep
