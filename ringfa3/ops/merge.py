"""Exact merging of partial attention results through their log-sum-exp, in float32 (used by the ring and
by the batched block entry, ops/blocks.py)."""
from __future__ import annotations

import os

import torch
from torch import Tensor


def _merge(out_acc: Tensor, lse_acc: Tensor, out_blk: Tensor, lse_blk: Tensor) -> None:
    lse_blk = lse_blk.float()
    lse_new = torch.logaddexp(lse_acc, lse_blk)
    ref = torch.where(torch.isinf(lse_new), torch.zeros_like(lse_new), lse_new)  # empty rows: weights 0, not NaN
    w_acc = torch.exp(lse_acc - ref).transpose(1, 2).unsqueeze(-1)  # (b, s, h, 1)
    w_blk = torch.exp(lse_blk - ref).transpose(1, 2).unsqueeze(-1)
    out_acc.copy_(out_acc * w_acc + out_blk.float() * w_blk)
    lse_acc.copy_(lse_new)


_fused = None


def _fused_merge():
    """On GPUs the eager merge makes ~6 passes over the accumulator; compiled it is one kernel."""
    global _fused
    if _fused is None:
        _fused = torch.compile(_merge, dynamic=True, fullgraph=True)
    return _fused


def merge_into(out_acc: Tensor, lse_acc: Tensor, out_blk: Tensor, lse_blk: Tensor) -> None:
    """In place: (out_acc, lse_acc) <- softmax-weighted union of the two partial results.

    out_acc (b, s, h, d) float32 and lse_acc (b, h, s) float32 (views are fine); out_blk, lse_blk the
    same rows from another key block. Rows that neither side saw stay out 0, lse -inf (never NaN).
    """
    use_fused = out_acc.is_cuda and os.environ.get("RINGFA3_FUSED_MERGE", "1") != "0"
    (_fused_merge() if use_fused else _merge)(out_acc, lse_acc, out_blk, lse_blk)
