"""LM head + cross-entropy over token chunks: full-sequence logits (tokens x vocab) never exist.

The gradients are produced chunk by chunk in the forward pass (softmax - onehot is known there), so
the backward only scales them: one pass over the vocabulary matrix per chunk, no recompute. Exact:
per-token math is the same as the unchunked path; only the order of the dW sum differs.
"""
from __future__ import annotations

import torch
from torch import Tensor


class _ChunkedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk: int, ignore_index: int):
        n = hidden.shape[0]
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        need_grad = hidden.requires_grad or weight.requires_grad
        d_hidden = torch.empty_like(hidden) if need_grad else None
        d_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_grad else None
        for i in range(0, n, chunk):
            h, y = hidden[i:i + chunk], labels[i:i + chunk]
            logits = (h @ weight.t()).float()  # (c, vocab): the only vocab-sized tensor alive
            keep = y != ignore_index
            target = torch.where(keep, y, 0)
            lse = torch.logsumexp(logits, dim=-1)
            loss += ((lse - logits.gather(1, target[:, None])[:, 0]) * keep).sum()
            if need_grad:
                g = torch.softmax(logits, dim=-1)
                g[torch.arange(len(y), device=y.device), target] -= 1.0
                g *= keep[:, None]
                g = g.to(hidden.dtype)
                d_hidden[i:i + chunk] = g @ weight
                d_weight += (g.t() @ h).float()
        ctx.save_for_backward(d_hidden, d_weight)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        d_hidden, d_weight = ctx.saved_tensors
        return (d_hidden * grad_loss.to(d_hidden.dtype), (d_weight * grad_loss).to(ctx.dtypes[1]),
                None, None, None)


def chunked_linear_cross_entropy(hidden: Tensor, weight: Tensor, labels: Tensor, chunk_tokens: int,
                                 ignore_index: int = -100) -> Tensor:
    """Sum over tokens of cross-entropy(hidden @ weight.T, labels), float32.

    hidden (..., H), weight (vocab, H), labels (...) int; `chunk_tokens` tokens at a time (any length,
    including one that is not a multiple of the chunk). Tokens labelled `ignore_index` count 0.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens={chunk_tokens} must be a positive number of tokens")
    h = hidden.reshape(-1, hidden.shape[-1])
    return _ChunkedLinearCE.apply(h, weight, labels.reshape(-1), int(chunk_tokens), ignore_index)
