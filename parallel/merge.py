"""Exact merging of partial attention results through their log-sum-exp, in float32."""
from __future__ import annotations

import torch
from torch import Tensor


def merge_into(out_acc: Tensor, lse_acc: Tensor, out_blk: Tensor, lse_blk: Tensor) -> None:
    """In place: (out_acc, lse_acc) <- softmax-weighted union of the two partial results.

    out_acc (b, s, h, d) float32 and lse_acc (b, h, s) float32 (views are fine); out_blk, lse_blk the
    same rows from another key block. Rows that neither side saw stay out 0, lse -inf (never NaN).
    """
    lse_blk = lse_blk.float()
    lse_new = torch.logaddexp(lse_acc, lse_blk)
    ref = torch.where(torch.isinf(lse_new), torch.zeros_like(lse_new), lse_new)
    w_acc = torch.exp(lse_acc - ref).transpose(1, 2).unsqueeze(-1)  # (b, s, h, 1)
    w_blk = torch.exp(lse_blk - ref).transpose(1, 2).unsqueeze(-1)
    out_acc.mul_(w_acc).add_(out_blk.float() * w_blk)
    lse_acc.copy_(lse_new)
