"""The registry of local attention backends and the `auto` choice.

A backend is an object with
  name
  unsupported(q, k, v, causal, window) -> str | None      why it cannot serve these inputs
  forward(q, k, v, causal, scale, window, out_fp32) -> (out, lse)
  backward(dout, q, k, v, out, lse, causal, scale, window, grads_fp32, deterministic) -> (dq, dk, dv)
out_fp32 / grads_fp32 ask for results not rounded to the input dtype; a backend whose kernel rounds
anyway may return its rounded tensors (the ring accumulates them in float32 either way).
deterministic=True asks the backward for bitwise repeatable gradients: a backend with a faster,
unordered reduction (sm90's dQ) then takes its fixed-order one; the others are repeatable either way.
and optionally forward_merge(q, k, v, causal, scale, window, out_acc, lse_acc), which merges its
block into a float32 running (out_acc, lse_acc) in place (the ring uses it when present),
forward_blocks / backward_blocks, which compute a list of blocks of one problem in few launches
(ops/blocks.py; backends without them are served one call per block), and
`deterministic = True` when its results are bitwise repeatable (no atomics in reductions).
A forward-only backend sets `has_backward = False`; its gradients then come from the fastest backend
that has a backward for the same inputs (every backward takes the global out and lse, so any kernel's
forward pairs with any kernel's backward).
"""
from __future__ import annotations

import logging

import torch

from . import fp8, reference
from .aten_backends import AtenBackend

log = logging.getLogger("ringfa3")


class ReferenceBackend:
    name = "reference"
    deterministic = True

    def unsupported(self, q, k, v, causal, window):
        return None

    forward = staticmethod(reference.forward)
    backward = staticmethod(reference.backward)


class ReferenceFp8Backend:
    """precision='fp8': the FP8 e4m3 numerics of ops/fp8.py (incoherent processing, block scales) in
    torch, the specification an FP8 kernel is tested against. Forward only."""
    name = "reference_fp8"
    precision = "fp8"
    deterministic = True
    has_backward = False
    backward_error = fp8.BACKWARD_ERROR

    def unsupported(self, q, k, v, causal, window):
        d = q.shape[-1]
        if d & (d - 1):
            return f"head dim {d} is not a power of two (the Hadamard rotation of Q and K needs one)"
        if q.dtype == torch.float64:
            return "float64 inputs have no FP8 path; pass bf16, fp16 or fp32 inputs"
        return None

    @staticmethod
    def forward(q, k, v, causal, scale, window, out_fp32):
        return fp8.attention_fp8(q, k, v, causal, scale, window, out_fp32=out_fp32)


def _load_sm90():
    try:
        from .sm90 import BACKEND
    except Exception as e:  # a broken build must not take the other backends down with it
        log.warning("ringfa3: the sm90 backend failed to load (%s); other backends remain", e)
        return None
    return BACKEND


BACKENDS = {b.name: b for b in (ReferenceBackend(), AtenBackend("cudnn"), AtenBackend("flash"), ReferenceFp8Backend())}
_sm90 = _load_sm90()
if _sm90 is not None:
    from .sm90_fp8 import Sm90Fp8Backend
    BACKENDS["sm90"] = _sm90
    BACKENDS["sm90_fp8"] = Sm90Fp8Backend(_sm90)

NAMES = ("auto", "sm90", "cudnn", "flash", "reference", "sm90_fp8", "reference_fp8")
# precision: 'native' computes in the inputs' dtype; 'fp8' quantizes Q, K, V and P to e4m3 (ops/fp8.py).
PRECISIONS = ("native", "fp8")
# The forward's order, fastest first, as measured on an H200 (bench/NOTES.md run 13, NOTES-ring.md
# 2026-12-01): below LONG_KEYS keys cuDNN is ahead of sm90 (0.77-0.98x at 1k-8k); from 16k keys sm90 is
# level or ahead (1.02-1.05x, a monolithic 131k causal call 1.13x, and a ring step's fused merge and
# packed documents in one launch).
# sm90 also serves what cuDNN cannot (sliding windows, causal with s_q != s_k); torch's FA2 is slower
# than both.
AUTO_ORDER = ("cudnn", "sm90", "flash", "reference")
AUTO_ORDER_LONG = ("sm90", "cudnn", "flash", "reference")
LONG_KEYS = 16384
# sm90_fp8 passed scripts/check_sm90_fp8.py on an H200 (bench/NOTES-fp8.md); the torch reference serves
# the rest (other head dims, CPU).
FP8_AUTO_ORDER = ("sm90_fp8", "reference_fp8")
# Under `auto` at AUTO_BWD_HEAD_DIMS the backward takes its own order, whatever ran the forward (the
# directions share out and lse): sm90's backward is ahead of cuDNN's at every length measured at head
# dims 128 (1.04-1.14x) and 256 (1.09-1.18x) (H200, bench/NOTES-bwd.md run 38). At 64 it is behind
# cuDNN's (0.93-0.98x) but ahead of FA2's varlen on packed documents, so there the backward stays with
# the forward's backend.
AUTO_BWD_ORDER = ("sm90", "cudnn", "flash", "reference")
AUTO_BWD_HEAD_DIMS = (128, 256)
_auto_logged: set = set()


def _why_not(impl, q, k, v, causal, window, deterministic):
    if deterministic and not getattr(impl, "deterministic", False):
        return "it is not deterministic (deterministic=True asks for bitwise repeatable results)"
    return impl.unsupported(q, k, v, causal, window)


def resolve(backend: str, q, k, v, causal: bool, window, deterministic: bool = False, precision: str = "native"):
    """The backend object that serves these inputs; ValueError naming `backend` if none can."""
    if not isinstance(backend, str) or backend not in NAMES:
        raise ValueError(f"backend={backend!r} is not known; use one of {', '.join(map(repr, NAMES))}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not known; use 'native' (the inputs' dtype) or 'fp8'")
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(
                f"backend={backend!r} is not available here: its library is not built or this GPU is not "
                f"Hopper (build with `python scripts/build_csrc.py`), or use backend='auto'"
            )
        own = getattr(BACKENDS[backend], "precision", "native")
        if own != precision:
            raise ValueError(f"backend={backend!r} computes in precision {own!r}, not precision={precision!r}; "
                             f"use backend='auto' with precision={precision!r}")
        reason = _why_not(BACKENDS[backend], q, k, v, causal, window, deterministic)
        if reason:
            raise ValueError(f"backend={backend!r} cannot serve these inputs: {reason}")
        return BACKENDS[backend]
    order = FP8_AUTO_ORDER if precision == "fp8" else AUTO_ORDER_LONG if k.shape[1] >= LONG_KEYS else AUTO_ORDER
    for name in order:
        if name in BACKENDS and _why_not(BACKENDS[name], q, k, v, causal, window, deterministic) is None:
            key = (q.device.type, q.dtype, q.shape[-1], causal, tuple(window), q.shape[1] == k.shape[1],
                   deterministic, name)
            if key not in _auto_logged and not torch.compiler.is_compiling():
                _auto_logged.add(key)
                log.info("ringfa3: backend='auto' chose %r for %s %s headdim %d causal=%s window=%s",
                         name, q.device.type, q.dtype, q.shape[-1], causal, tuple(window))
            return BACKENDS[name]
    if precision == "fp8":
        raise ValueError(f"precision='fp8' cannot serve these inputs: "
                         f"{_why_not(BACKENDS['reference_fp8'], q, k, v, causal, window, deterministic)}")
    raise AssertionError("the reference backend serves every input")


def _backward_why_not(impl, q, k, v, causal, window, deterministic):
    """Why `impl`'s backward cannot serve these inputs: a backend whose backward covers less than its
    forward says so in `backward_unsupported` (sm90: head dims)."""
    if not getattr(impl, "has_backward", True):
        return "it has no backward"
    check = getattr(impl, "backward_unsupported", None)
    return check(q, k, v, causal, window) if check is not None else None


def resolve_backward(impl, q, k, v, causal: bool, window, deterministic: bool = False, auto: bool = False):
    """The backend whose backward serves these inputs. auto (the forward was asked for with
    backend='auto') at AUTO_BWD_HEAD_DIMS: the first of AUTO_BWD_ORDER that serves them; otherwise
    `impl` if its backward serves them, else the first `auto` backend whose does. An FP8 forward has no
    backward to fall back to: RuntimeError."""
    if getattr(impl, "backward_error", None):
        raise RuntimeError(impl.backward_error)
    own_order = auto and q.shape[-1] in AUTO_BWD_HEAD_DIMS
    if not own_order and _backward_why_not(impl, q, k, v, causal, window, deterministic) is None:
        return impl
    for name in AUTO_BWD_ORDER if own_order else AUTO_ORDER:
        cand = BACKENDS.get(name)
        if cand is not None and _backward_why_not(cand, q, k, v, causal, window, deterministic) is None and \
                _why_not(cand, q, k, v, causal, window, deterministic) is None:
            return cand
    raise AssertionError("the reference backend serves every input")
