"""ops.blocks.BackwardRows on the sm90 kernel: one workspace for all of a ring's steps.

The queries of a ring backward stay while K/V travel, so the kernel's passes over them alone, the
preprocess (delta = rowsum(dO * O), lse * log2(e), the dQ sums zeroed) and the dQ conversion, need
to run once, not once per step: every step's main kernel adds its dQ into one float32 workspace
(RingFa3BwdArgs::ws_rows and ::phases), converted at the end. A block that cannot use it (its rows not
aligned to the kernel's query block, inputs the kernel does not take, a step of many small blocks
that goes to a varlen launch) takes the generic float32 path, and the two sums meet at the end.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .blocks import BackwardRows, few_large, loop_backward
from .masks import effective_window

PREPROCESS, MAIN, CONVERT = 1, 2, 4   # RingFa3BwdArgs::phases


def dense_step(blocks) -> bool:
    """A step our dense backward serves one call per block: up to 8 blocks of at least 1k rows (a
    zigzag window's diagonal step is 4 blocks of 4k rows); many small blocks (packed documents) go
    to one varlen launch instead (Sm90Backend.backward_blocks)."""
    return few_large(blocks, max_blocks=8, min_rows=1024)


@dataclass
class BackwardWorkspace:
    dq_accum: Tensor   # (b, h, rows, d) float32 dQ sums, in the kernel's order within each query block
    lse_log2: Tensor   # (b, h, rows)
    delta: Tensor      # (b, h, rows)
    rows: int          # s_q padded to the kernel's query block


class Sm90BackwardRows(BackwardRows):
    def __init__(self, backend, dout, q, out, lse, scale, deterministic=False):
        # the kernels read dO as q's dtype with 16-byte rows: converted once, not per key set
        super().__init__(backend, dout.to(q.dtype).contiguous(), q, out, lse, scale, deterministic)
        self.block_m = backend._lib.ringfa3_sm90_bwd_block_m()
        self.ws = None

    def _workspace(self) -> BackwardWorkspace:
        if self.ws is None:
            b, s, h, d = self.q.shape
            rows = -(-s // self.block_m) * self.block_m
            f32 = dict(device=self.q.device, dtype=torch.float32)
            self.ws = BackwardWorkspace(torch.empty(b, h, rows, d, **f32), torch.empty(b, h, rows, **f32),
                                        torch.empty(b, h, rows, **f32), rows)
            self.impl._backward_call(self.dout, self.q, None, None, self.out, self.lse, None, None, None, -1, -1,
                                     self.scale, True, False, ws=self.ws, phases=PREPROCESS)
        return self.ws

    def _fits(self, blk, qb, kb, vb) -> bool:
        """The block's query tiles are the workspace's: it starts on a block boundary and ends on one or
        at the last row."""
        m, s = self.block_m, self.q.shape[1]
        aligned = blk.q0 % m == 0 and (blk.q1 % m == 0 or blk.q1 == s)
        return aligned and self.impl.backward_unsupported(qb, kb, vb, blk.causal, blk.window) is None

    def add(self, k: Tensor, v: Tensor, blocks) -> list:
        if not dense_step(blocks):
            return super().add(k, v, blocks)
        pieces = []
        for blk in blocks:
            rows, keys = slice(blk.q0, blk.q1), slice(blk.k0, blk.k1)
            qb, kb, vb = self.q[:, rows], k[:, keys], v[:, keys]
            if not self._fits(blk, qb, kb, vb):
                pieces += loop_backward(self.impl, self.dout, self.q, k, v, self.out, self.lse, [blk], self.scale,
                                        self.dq_f32(), self.deterministic)
                continue
            dk = torch.empty(kb.shape, device=k.device, dtype=torch.float32)   # (b, k1 - k0, h_kv, d)
            dv = torch.empty(vb.shape, device=k.device, dtype=torch.float32)
            left, right = effective_window(blk.causal, blk.window)
            self.impl._backward_call(self.dout[:, rows], qb, kb, vb, None, None, None, dk, dv, left, right,
                                     self.scale, True, self.deterministic, ws=self._workspace(), row0=blk.q0,
                                     phases=MAIN)
            pieces.append((blk.k0, blk.k1, dk, dv))
        return pieces

    def finish(self, dtype: torch.dtype) -> Tensor:
        if self.ws is None:
            return super().finish(dtype)
        if self._dq is None and dtype in (self.q.dtype, torch.float32):   # every block went through the workspace
            dq = torch.empty(self.q.shape, device=self.q.device, dtype=dtype)   # (b, s_q, h, d)
            self._convert(dq, accumulate=False)
            return dq
        self._convert(self.dq_f32(), accumulate=True)
        return self._dq.to(dtype)

    def _convert(self, dq: Tensor, accumulate: bool) -> None:
        self.impl._backward_call(None, self.q, None, None, None, None, dq, None, None, -1, -1, self.scale,
                                 dq.dtype == torch.float32, False, dq_accumulate=accumulate, ws=self.ws,
                                 phases=CONVERT)
