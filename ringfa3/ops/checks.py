"""Validation of attention inputs: every bad argument fails here, by name, before any kernel runs."""
from __future__ import annotations

import math

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_window(window) -> tuple[int, int]:
    """Normalize `window` to a (left, right) pair of ints; -1 means unbounded on that side."""
    if window is None:
        return (-1, -1)
    if not (isinstance(window, (tuple, list)) and len(window) == 2):
        raise TypeError(f"window must be a (left, right) pair of ints (-1 = unbounded), got {window!r}")
    left, right = window
    for name, w in (("left", left), ("right", right)):
        if isinstance(w, bool) or not isinstance(w, int) or w < -1:
            raise ValueError(f"window {name}={w!r} must be an int >= -1 (-1 = unbounded)")
    return (int(left), int(right))


def check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    """q (b, s_q, h, d); k, v (b, s_k, h_kv, d) with h % h_kv == 0, same dtype and device."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must be 4-D (batch, seqlen, nheads, headdim), got shape {tuple(t.shape)}"
            )
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name}.dtype={t.dtype} is not supported; use float16, bfloat16, float32 or float64")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name}.dtype={t.dtype} differs from q.dtype={q.dtype}; cast all of q, k, v to one dtype")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}; move q, k, v to one device")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    if k.shape[0] != q.shape[0]:
        raise ValueError(f"batch size of k ({k.shape[0]}) differs from q ({q.shape[0]})")
    if k.shape[3] != q.shape[3]:
        raise ValueError(f"headdim of k/v ({k.shape[3]}) differs from q ({q.shape[3]}); they must match")
    h, h_kv = q.shape[2], k.shape[2]
    if h_kv == 0 or h % h_kv != 0:
        raise ValueError(
            f"nheads of q ({h}) must be a multiple of nheads of k/v ({h_kv}) (GQA/MQA); "
            f"use a k/v head count that divides {h}"
        )


def resolve_scale(softmax_scale, headdim: int) -> float:
    """softmax_scale, defaulting to headdim ** -0.5."""
    if softmax_scale is None:
        return headdim ** -0.5
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)):
        raise TypeError(f"softmax_scale must be a float or None, got {type(softmax_scale).__name__}")
    if not math.isfinite(softmax_scale) or softmax_scale <= 0:
        raise ValueError(f"softmax_scale={softmax_scale} must be a finite positive float (default headdim ** -0.5)")
    return float(softmax_scale)
