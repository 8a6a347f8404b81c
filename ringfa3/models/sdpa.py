"""Causal attention with torch's scaled_dot_product_attention: the single-device baseline that
RingFlashAttention is measured against. Same parameter names (qkv, out) and RoPE, so checkpoints
move between the two."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ringfa3.nn import apply_rope, rope_cos_sin


class SDPAAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, num_kv_heads: int | None = None,
                 rope_theta: float = 10000.0):
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads or num_heads
        self.head_dim = embed_dim // num_heads
        self.rope_theta = rope_theta
        self.qkv = nn.Linear(embed_dim, (num_heads + 2 * self.num_kv_heads) * self.head_dim, bias=False)
        self.out = nn.Linear(num_heads * self.head_dim, embed_dim, bias=False)

    def forward(self, x: Tensor, position_ids: Tensor | None = None) -> Tensor:
        """x (b, s, embed_dim) -> (b, s, embed_dim); the whole sequence is on this device."""
        qkv = rearrange(self.qkv(x), "b s (h d) -> b s h d", d=self.head_dim)  # (b, s, h + 2 h_kv, d)
        q, k, v = qkv.split([self.num_heads, self.num_kv_heads, self.num_kv_heads], dim=2)
        if position_ids is None:
            position_ids = torch.arange(x.shape[1], device=x.device)
        cos, sin = rope_cos_sin(position_ids, self.head_dim, self.rope_theta)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                           enable_gqa=self.num_kv_heads != self.num_heads)  # (b, h, s, d)
        return self.out(rearrange(o, "b h s d -> b s (h d)"))
