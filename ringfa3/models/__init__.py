"""Llama-style decoder models (no parallelism inside; see ringfa3.train.parallelize)."""
from .config import LlamaConfig
from .llama import Block, Llama, RMSNorm, SwiGLU

__all__ = ["LlamaConfig", "Llama", "Block", "RMSNorm", "SwiGLU"]
