"""Which rectangles of one (query shard, key shard) pair a causal ring step must compute.

Every layout keeps a rank's tokens in increasing global order, so under a causal mask the keys a query
row sees form a prefix of the visiting key shard, and its length c_i grows with the row. Runs of rows
with a constant c_i are one unmasked rectangle; runs where c_i grows by one per row are one square
causal block on the diagonal plus the unmasked rectangle to its left. Rows seeing nothing are skipped.
This one rule covers contiguous, zigzag and stripe (whose off-diagonal steps are q[1:] x k[:-1]).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from functools import lru_cache

from .layout import global_positions


@dataclass(frozen=True)
class Block:
    q0: int  # query rows [q0, q1) of the local shard
    q1: int
    k0: int  # key rows [k0, k1) of the visiting shard
    k1: int
    causal: bool  # square block with the causal diagonal on its main diagonal


def blocks_from_positions(q_pos: list[int], k_pos: list[int], causal: bool) -> tuple[Block, ...]:
    nq, nk = len(q_pos), len(k_pos)
    if not causal:
        return (Block(0, nq, 0, nk, False),)
    c = [bisect.bisect_right(k_pos, p) for p in q_pos]  # visible-prefix length per row
    out, i = [], 0
    while i < nq:
        if c[i] == 0:
            i += 1
            continue
        j = i
        if i + 1 < nq and c[i + 1] == c[i] + 1:  # staircase
            while j + 1 < nq and c[j + 1] == c[j] + 1:
                j += 1
            diag0 = c[i] - 1  # row i's own diagonal key
            if diag0 > 0:
                out.append(Block(i, j + 1, 0, diag0, False))
            out.append(Block(i, j + 1, diag0, c[j], True))
        else:  # constant prefix
            while j + 1 < nq and c[j + 1] == c[i]:
                j += 1
            out.append(Block(i, j + 1, 0, c[i], False))
        i = j + 1
    return tuple(out)


@lru_cache(maxsize=1024)
def ring_blocks(seqlen_local: int, world: int, rank: int, src: int, layout: str, causal: bool) -> tuple[Block, ...]:
    """Blocks rank `rank` computes when holding the K/V shard of rank `src`."""
    seqlen = seqlen_local * world
    q_pos = global_positions(seqlen, world, rank, layout).tolist()
    k_pos = global_positions(seqlen, world, src, layout).tolist()
    return blocks_from_positions(q_pos, k_pos, causal)
