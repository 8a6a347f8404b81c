"""Model FLOPs per training step, with attention counted for what the causal mask lets through."""
from __future__ import annotations

import torch

from ringfa3.models import LlamaConfig

# Dense bf16 peak per GPU (no sparsity), by a substring of torch.cuda.get_device_name().
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "4090": 165.0}


def train_flops(cfg: LlamaConfig, seq_len: int, sequences: int, causal: bool = True) -> float:
    """Forward + backward FLOPs (3x forward) for `sequences` sequences of `seq_len` tokens."""
    tokens = seq_len * sequences
    dense = cfg.num_params(embeddings=False) + cfg.vocab_size * cfg.dim  # + the LM head matmul
    # QK^T and PV: 2 matmuls x 2 FLOPs x s^2 x (heads x head_dim), of which a causal mask keeps (s+1)/2s.
    visible = (seq_len + 1) / (2 * seq_len) if causal else 1.0
    attn = 4 * seq_len * seq_len * cfg.n_heads * cfg.head_dim * visible * cfg.n_layers * sequences
    return 3 * (2 * dense * tokens + attn)


def peak_flops(device: torch.device, override_tflops: float = 0.0) -> float | None:
    """Peak FLOP/s of one device: the override, a known GPU, or None (MFU is then not reported)."""
    if override_tflops > 0:
        return override_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tf in PEAK_TFLOPS.items():
            if key in name:
                return tf * 1e12
    return None
