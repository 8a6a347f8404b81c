"""Many blocks of one local attention problem in one call per direction.

A Block is a sub-rectangle of a local attention problem: query rows [q0, q1) against key rows [k0, k1),
with its own mask aligned bottom-right inside the block (`causal`, `window`, as `attention` takes them).
A caller that needs several blocks of the same (q, k, v) (a ring step over packed documents, a sliding
window, a zigzag shard) hands them over together:

  forward_blocks(impl, q, k, v, blocks, scale, out_acc, lse_acc)
      merges every block's partial (out, lse) into the float32 accumulators in place; blocks may share
      query rows; rows no block covers keep their values.
  backward_blocks(impl, dout, q, k, v, out, lse, blocks, scale, dq_acc, deterministic) -> [(k0, k1, dk, dv), ...]
      adds every block's dq into the float32 dq_acc in place and returns the key gradients as pieces
      (key rows [k0, k1) of k/v), for the caller to add where it keeps them.
  backward_rows(impl, dout, q, out, lse, scale, deterministic) -> BackwardRows
      the same for key sets that arrive one at a time against fixed query rows (a ring's steps):
      rows.add(k, v, blocks) -> pieces for each, then rows.finish(dtype) -> dq.

A backend with a batched kernel implements `forward_blocks` / `backward_blocks` (same arguments, less
`impl`); any other backend is served by the loop below, one call per block.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .merge import merge_into

NO_WINDOW = (-1, -1)
LOOP_MAX = 2  # a step with more blocks than this goes to a varlen kernel in one launch
LOOP_MIN = 256  # ... and so does one with blocks shorter than this (cuDNN refuses 1 x 1; FA2 is as fast there)


@dataclass(frozen=True)
class Block:
    q0: int  # query rows [q0, q1) of the local problem
    q1: int
    k0: int  # key rows [k0, k1)
    k1: int
    causal: bool = False  # the causal diagonal, aligned bottom-right in the block
    window: tuple[int, int] = NO_WINDOW  # (left, right) window within the block, aligned bottom-right


def few_large(blocks, max_blocks: int = LOOP_MAX, min_rows: int = LOOP_MIN) -> bool:
    """True when a dense kernel serves these blocks best one call each (a dense ring step is one or two
    big blocks); else one varlen launch for all of them beats a launch per block (packed documents)."""
    return len(blocks) <= max_blocks and all(min(b.q1 - b.q0, b.k1 - b.k0) >= min_rows for b in blocks)


def loop_forward(impl, q: Tensor, k: Tensor, v: Tensor, blocks, scale: float, out_acc: Tensor,
                 lse_acc: Tensor) -> None:
    """One local call per block, merged into (out_acc (b, s_q, h, d), lse_acc (b, h, s_q)) float32."""
    merge = getattr(impl, "forward_merge", None)
    for blk in blocks:
        qb, kb, vb = q[:, blk.q0:blk.q1], k[:, blk.k0:blk.k1], v[:, blk.k0:blk.k1]
        o_acc, l_acc = out_acc[:, blk.q0:blk.q1], lse_acc[:, :, blk.q0:blk.q1]
        if merge is not None:
            merge(qb, kb, vb, blk.causal, scale, blk.window, o_acc, l_acc)
        else:
            o, lse = impl.forward(qb, kb, vb, blk.causal, scale, blk.window, True)
            merge_into(o_acc, l_acc, o, lse)


def loop_backward(impl, dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, blocks,
                  scale: float, dq_acc: Tensor, deterministic: bool = False) -> list:
    """One local backward per block: dq added into dq_acc (b, s_q, h, d) float32 (by the backend itself
    where it can: `accumulates_dq`, one pass over dQ fewer); the key pieces returned."""
    into = getattr(impl, "accumulates_dq", False)
    pieces = []
    for blk in blocks:
        rows, keys = slice(blk.q0, blk.q1), slice(blk.k0, blk.k1)
        args = (dout[:, rows], q[:, rows], k[:, keys], v[:, keys], out[:, rows], lse[:, :, rows], blk.causal,
                scale, blk.window, True, deterministic)
        if into:
            _, dkb, dvb = impl.backward(*args, dq_acc=dq_acc[:, rows])
        else:
            dqb, dkb, dvb = impl.backward(*args)
            dq_acc[:, rows] += dqb
        pieces.append((blk.k0, blk.k1, dkb, dvb))
    return pieces


def forward_blocks(impl, q: Tensor, k: Tensor, v: Tensor, blocks, scale: float, out_acc: Tensor,
                   lse_acc: Tensor) -> None:
    """Merge the blocks of (q (b, s_q, h, d), k/v (b, s_k, h_kv, d)) into out_acc/lse_acc, in as few
    kernel calls as the backend allows."""
    if not blocks:
        return
    batched = getattr(impl, "forward_blocks", None)
    if batched is not None:
        batched(q, k, v, blocks, scale, out_acc, lse_acc)
    else:
        loop_forward(impl, q, k, v, blocks, scale, out_acc, lse_acc)


def backward_blocks(impl, dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, blocks,
                    scale: float, dq_acc: Tensor, deterministic: bool = False) -> list:
    """Gradients of the blocks given the global (merged) out and lse: dq added into dq_acc, key pieces
    [(k0, k1, dk, dv)] returned (dk/dv (b, k1 - k0, h_kv, d), any float dtype)."""
    if not blocks:
        return []
    batched = getattr(impl, "backward_blocks", None)
    if batched is not None:
        return batched(dout, q, k, v, out, lse, blocks, scale, dq_acc, deterministic)
    return loop_backward(impl, dout, q, k, v, out, lse, blocks, scale, dq_acc, deterministic)


class BackwardRows:
    """The backward of fixed query rows (dout, q and the global out, lse) against key sets that come one
    at a time: dQ summed over all of them in float32, dK/dV returned per set. A backend may keep its own
    running state instead (`backward_rows`): the sm90 kernel keeps one workspace for all the sets."""

    def __init__(self, impl, dout: Tensor, q: Tensor, out: Tensor, lse: Tensor, scale: float,
                 deterministic: bool = False):
        self.impl, self.dout, self.q, self.out, self.lse = impl, dout, q, out, lse
        self.scale, self.deterministic = scale, deterministic
        self._dq = None

    def dq_f32(self) -> Tensor:
        """The running float32 dQ (b, s_q, h, d), made at first use."""
        if self._dq is None:
            self._dq = torch.zeros(self.q.shape, dtype=torch.float32, device=self.q.device)
        return self._dq

    def add(self, k: Tensor, v: Tensor, blocks) -> list:
        """The blocks of this key set: dQ added to the running sum, [(k0, k1, dk, dv)] returned."""
        return backward_blocks(self.impl, self.dout, self.q, k, v, self.out, self.lse, blocks, self.scale,
                               self.dq_f32(), self.deterministic)

    def finish(self, dtype: torch.dtype) -> Tensor:
        """dQ of every set so far, in `dtype`."""
        return self.dq_f32().to(dtype)


def backward_rows(impl, dout: Tensor, q: Tensor, out: Tensor, lse: Tensor, scale: float,
                  deterministic: bool = False) -> BackwardRows:
    """BackwardRows for these query rows: the backend's own where it has one."""
    make = getattr(impl, "backward_rows", None)
    if make is not None:
        return make(dout, q, out, lse, scale, deterministic)
    return BackwardRows(impl, dout, q, out, lse, scale, deterministic)
