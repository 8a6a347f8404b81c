"""Argument checks shared by every context-parallel entry point (ring, Ulysses, hybrid, varlen): they run
on every rank before any communication, so a bad call fails everywhere instead of hanging."""
from __future__ import annotations

from ringfa3.ops.checks import check_qkv, check_window

from .layout import check_layout


def check_cp_inputs(q, k, v, causal, layout: str, window) -> tuple[int, int]:
    """Validate this rank's q (b, s_local, h, d), k/v (b, s_local, h_kv, d); returns the normalized window."""
    check_qkv(q, k, v)
    check_layout(layout)
    window = check_window(window)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if k.shape[1] != q.shape[1]:
        raise ValueError(f"context parallelism needs local q and k/v of the same length, got {q.shape[1]} and {k.shape[1]}")
    return window
