"""RingFlashAttention: the attention layer of a decoder, context-parallel through its `group`."""
from __future__ import annotations

from torch import Tensor, nn
from einops import rearrange

from ringfa3.parallel import local_positions, ring_flash_attn_func
from ringfa3.parallel.layout import check_layout

from .rope import apply_rope, rope_cos_sin


class RingFlashAttention(nn.Module):
    """qkv projection, RoPE on global positions, ring attention over `group`, output projection.

    x_local is this rank's part of the sequence in `layout`. `group`, `layout`, `backend`, `precision`
    and `deterministic` are plain attributes, so a training script can apply context parallelism after
    building the model (and an evaluation can switch to precision='fp8', forward only). Without a
    process group it is ordinary (causal) attention.
    """

    def __init__(self, embed_dim: int, num_heads: int, num_kv_heads: int | None = None, causal: bool = True,
                 layout: str = "zigzag", group=None, rope_theta: float = 10000.0, backend: str = "auto",
                 bias: bool = False, precision: str = "native", deterministic: bool = False):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim={embed_dim} must be a multiple of num_heads={num_heads}")
        if num_kv_heads < 1 or num_heads % num_kv_heads != 0:
            raise ValueError(f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}")
        self.head_dim = embed_dim // num_heads
        if self.head_dim % 2 != 0:
            raise ValueError(f"head dim embed_dim/num_heads={self.head_dim} must be even for RoPE")
        check_layout(layout)
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.causal, self.layout, self.group, self.backend = causal, layout, group, backend
        self.precision, self.deterministic = precision, deterministic
        self.rope_theta = rope_theta
        self.qkv = nn.Linear(embed_dim, (num_heads + 2 * num_kv_heads) * self.head_dim, bias=bias)
        self.out = nn.Linear(num_heads * self.head_dim, embed_dim, bias=bias)

    def forward(self, x: Tensor, position_ids: Tensor | None = None) -> Tensor:
        """x (b, s_local, embed_dim) -> (b, s_local, embed_dim). position_ids (s_local,) or (b, s_local)
        are the tokens' global positions (default: those of this rank under `layout`)."""
        qkv = rearrange(self.qkv(x), "b s (h d) -> b s h d", d=self.head_dim)  # (b, s, h + 2 h_kv, d)
        q, k, v = qkv.split([self.num_heads, self.num_kv_heads, self.num_kv_heads], dim=2)
        if position_ids is None:
            position_ids = local_positions(x.shape[1], self.group, self.layout, device=x.device)
        cos, sin = rope_cos_sin(position_ids, self.head_dim, self.rope_theta)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        o = ring_flash_attn_func(q, k, v.contiguous(), causal=self.causal, group=self.group, layout=self.layout,
                                 backend=self.backend, precision=self.precision, deterministic=self.deterministic)
        return self.out(rearrange(o, "b s h d -> b s (h d)"))
