"""Llama-style decoder: RMSNorm, RingFlashAttention (RoPE inside), SwiGLU MLP, tied or untied head.

The model knows nothing of parallelism: each attention layer's `group`/`layout` are set from outside
(ringfa3.train.parallelize). Given this rank's tokens, it returns this rank's logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ringfa3.nn import RingFlashAttention
from ringfa3.nn.chunked_loss import chunked_linear_cross_entropy
from ringfa3.nn.tiled import tiled_forward

from .config import LlamaConfig
from .sdpa import SDPAAttention


@torch.no_grad()
def init_parameter_(p: Tensor, std: float, generator: torch.Generator | None = None) -> Tensor:
    """The initial value of one Llama parameter, in place: N(0, std) for matrices, 1 for vectors."""
    if p.dim() >= 2:
        return p.normal_(0.0, std, generator=generator)
    return p.fill_(1.0)


class _RMSNormFn(torch.autograd.Function):
    """y = (x * rstd).to(x.dtype) * w with rstd = (mean(x^2) + eps)^-1/2 in float32. Saves x (its own
    dtype) and rstd (one float per token) instead of autograd's float32 copies of x and of x * rstd:
    at long context that is 16 of the ~46 KB a token of a llama_1b block's recompute."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        rstd = torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)  # (..., 1) fp32
        ctx.save_for_backward(x, weight, rstd)
        return (xf * rstd).to(x.dtype) * weight

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, weight, rstd = ctx.saved_tensors
        n = x.to(rstd.dtype) * rstd  # normalized, fp32 (or fp64)
        dw = None
        if ctx.needs_input_grad[1]:
            dw = (dy.to(rstd.dtype) * n.to(x.dtype).to(rstd.dtype)).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)
        dn = (dy * weight).to(rstd.dtype)  # (..., dim)
        dx = rstd * (dn - n * (dn * n).mean(-1, keepdim=True))
        return dx.to(x.dtype), dw, None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalize in float32 so bf16 activations keep their scale information.
        return _RMSNormFn.apply(x, self.weight, self.eps)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        if cfg.attn_backend == "sdpa":
            self.attention = SDPAAttention(cfg.dim, cfg.n_heads, cfg.n_kv_heads, rope_theta=cfg.rope_theta)
        else:
            self.attention = RingFlashAttention(cfg.dim, cfg.n_heads, cfg.n_kv_heads, causal=True,
                                                rope_theta=cfg.rope_theta, backend=cfg.attn_backend,
                                                deterministic=cfg.attn_deterministic)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.dim, cfg.ffn_hidden)
        self.mlp_chunk_tokens = 0  # > 0: the MLP runs over sequence tiles (its 4x-wide activations per tile)

    def forward(self, x: Tensor, position_ids: Tensor | None = None) -> Tensor:
        x = x + self.attention(self.attn_norm(x), position_ids)
        h = self.mlp_norm(x)
        return x + (tiled_forward(self.mlp, h, self.mlp_chunk_tokens) if self.mlp_chunk_tokens else self.mlp(h))


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        rng = torch.get_rng_state()  # the submodules' own inits draw; ours start from the caller's state
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.loss_chunk_tokens = 0  # > 0: the loss never materializes (tokens x vocab) logits
        torch.set_rng_state(rng)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Every matrix (embeddings included) N(0, init_std); norm weights 1. The order of
        self.parameters() is the order of the random draws (ringfa3.train.meta_init relies on it)."""
        for p in self.parameters():
            init_parameter_(p, self.cfg.init_std)

    def hidden_states(self, tokens: Tensor, position_ids: Tensor | None = None) -> Tensor:
        """tokens (b, s_local) int64 -> final normalized hidden states (b, s_local, dim)."""
        h = self.tok_embeddings(tokens)  # (b, s, dim)
        for layer in self.layers:
            h = layer(h, position_ids)
        return self.norm(h)

    def lm_head(self, h: Tensor) -> Tensor:
        """(…, dim) -> logits (…, vocab_size)."""
        w = self.tok_embeddings.weight if self.output is None else self.output.weight
        return F.linear(h, w)

    def forward(self, tokens: Tensor, position_ids: Tensor | None = None, labels: Tensor | None = None) -> Tensor:
        """tokens (b, s_local) -> logits (b, s_local, vocab_size); with labels (b, s_local) (-100 = no
        label) the float32 sum of the token losses instead."""
        h = self.hidden_states(tokens, position_ids)
        if labels is None:
            return self.lm_head(h)
        if self.loss_chunk_tokens:
            w = self.tok_embeddings.weight if self.output is None else self.output.weight
            return chunked_linear_cross_entropy(h, w, labels, self.loss_chunk_tokens)
        return F.cross_entropy(self.lm_head(h).float().flatten(0, 1), labels.flatten(), ignore_index=-100,
                               reduction="sum")
