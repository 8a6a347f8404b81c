"""The shape of a Llama-style decoder (the `model` config group)."""
from __future__ import annotations

from dataclasses import dataclass

ATTN_BACKENDS = ("auto", "sm90", "cudnn", "flash", "reference", "sdpa")


@dataclass
class LlamaConfig:
    """Llama-style decoder shape. Field names are the `model.*` config keys.

    ffn_hidden=0 derives the SwiGLU width the Llama way: 8/3 * dim rounded up to `multiple_of`.
    n_kv_heads=0 means n_kv_heads = n_heads (no GQA).
    attn_backend: the ringfa3.ops backend of RingFlashAttention ('auto' picks the fastest available),
    or 'sdpa' for plain torch scaled_dot_product_attention (a single-device baseline, no ring).
    attn_deterministic: bitwise repeatable attention, gradients included (deterministic=True of the
    ring; sm90's backward then adds dQ in a fixed order, at 0.4-0.6 of its default speed).
    """

    name: str = "tiny"
    vocab_size: int = 128
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 2
    n_kv_heads: int = 0
    ffn_hidden: int = 0
    multiple_of: int = 32
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_embeddings: bool = True
    init_std: float = 0.02
    attn_backend: str = "auto"
    attn_deterministic: bool = False

    def __post_init__(self):
        for key in ("vocab_size", "dim", "n_layers", "n_heads", "multiple_of"):
            if getattr(self, key) < 1:
                raise ValueError(f"model.{key}={getattr(self, key)} must be a positive integer, e.g. model.{key}=2")
        if self.n_kv_heads == 0:
            self.n_kv_heads = self.n_heads
        if self.dim % self.n_heads != 0:
            ok = next(h for h in range(self.n_heads, 0, -1) if self.dim % h == 0)
            raise ValueError(f"model.n_heads={self.n_heads} must divide model.dim={self.dim}; "
                             f"use e.g. model.n_heads={ok}")
        if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads != 0:
            raise ValueError(f"model.n_kv_heads={self.n_kv_heads} must divide model.n_heads={self.n_heads}; "
                             f"use e.g. model.n_kv_heads={self.n_heads}")
        if self.head_dim % 2 != 0:
            raise ValueError(f"model.dim / model.n_heads = {self.head_dim} must be even for RoPE; "
                             f"use e.g. model.n_heads={self.n_heads // 2 or 1}")
        if self.ffn_hidden < 0:
            raise ValueError(f"model.ffn_hidden={self.ffn_hidden} must be >= 0 (0 derives it from model.dim)")
        if self.attn_backend not in ATTN_BACKENDS:
            raise ValueError(f"model.attn_backend={self.attn_backend!r} is not known; use one of "
                             f"{', '.join(map(repr, ATTN_BACKENDS))}")
        if self.ffn_hidden == 0:
            hidden = int(8 * self.dim / 3)
            self.ffn_hidden = -(-hidden // self.multiple_of) * self.multiple_of

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def num_params(self, embeddings: bool = True) -> int:
        """Parameter count (embeddings included unless asked; the output head counts once if tied)."""
        attn = self.dim * (self.n_heads + 2 * self.n_kv_heads) * self.head_dim + self.n_heads * self.head_dim * self.dim
        block = attn + 3 * self.dim * self.ffn_hidden + 2 * self.dim
        n = self.n_layers * block + self.dim
        if embeddings:
            n += self.vocab_size * self.dim * (1 if self.tie_embeddings else 2)
        return n
