"""Which blocks of one (query shard, key shard) pair a ring step must compute, for any mask.

Every layout keeps a rank's tokens in increasing global order, so under causal, sliding-window and
per-document masks the keys a query row sees form one contiguous range [lo_i, hi_i) of the visiting
shard, and both ends are non-decreasing. Runs of rows over which each end stays put or moves by one
key per row are one block of the local kernel:
  lo fixed, hi fixed    unmasked rectangle
  lo fixed, hi +1/row   square causal block on the diagonal plus the unmasked rectangle on its left
                        (so kernels with only a square causal mask serve it)
  lo +1/row             a window block (bottom-right aligned, left bound = the block's offset);
                        only with a sliding window, so unwindowed masks never need window support
Rows that see nothing are skipped. This one rule covers contiguous, zigzag and stripe, causal or full,
windows and packed documents.
"""
from __future__ import annotations

import bisect
from functools import lru_cache

from ringfa3.ops.blocks import NO_WINDOW, Block
from ringfa3.ops.masks import effective_window

from .layout import global_positions


def visible_ranges(q_pos, k_pos, causal: bool, window=NO_WINDOW, doc_bounds=None):
    """[lo_i, hi_i) of the keys (indices into k_pos) each query row sees. doc_bounds: sorted document
    start positions plus the end (cu_seqlens); a row sees only its own document."""
    left, right = effective_window(causal, window)
    ranges = []
    for p in q_pos:
        lo_p = p - left if left >= 0 else float("-inf")
        hi_p = p + right if right >= 0 else float("inf")
        if doc_bounds is not None:
            d = bisect.bisect_right(doc_bounds, p) - 1
            lo_p, hi_p = max(lo_p, doc_bounds[d]), min(hi_p, doc_bounds[d + 1] - 1)
        ranges.append((bisect.bisect_left(k_pos, lo_p), bisect.bisect_right(k_pos, hi_p)))
    return ranges


def blocks_from_ranges(ranges, windows: bool) -> tuple[Block, ...]:
    """Blocks covering the ranges; a moving lower end (a window block) only if `windows` (the backend
    then has to support windows), else such rows split into runs of one."""
    out, n, a = [], len(ranges), 0
    while a < n:
        lo, hi = ranges[a]
        if lo >= hi:
            a += 1
            continue
        b, slope = a + 1, None
        while b < n:
            (plo, phi), (nlo, nhi) = ranges[b - 1], ranges[b]
            step = (nlo - plo, nhi - phi)
            if (nlo >= nhi or step[0] not in ((0, 1) if windows else (0,)) or step[1] not in (0, 1)
                    or (slope and step != slope)):
                break
            slope, b = step, b + 1
        out.extend(_emit(a, b, lo, hi, ranges[b - 1][1], slope or (0, 0)))
        a = b
    return tuple(out)


def _emit(a, b, lo, hi_first, hi_last, slope):
    rows = b - a
    if slope == (0, 0):
        return [Block(a, b, lo, hi_first)]
    if slope == (0, 1):  # causal staircase: rectangle left of the diagonal + square causal block
        diag = hi_first - 1
        return ([Block(a, b, lo, diag)] if diag > lo else []) + [Block(a, b, diag, hi_last, causal=True)]
    offset = (hi_last - lo) - rows  # bottom-right alignment of the block: row i sits at key i + offset
    return [Block(a, b, lo, hi_last, window=(offset, 0 if slope[1] == 1 else -1))]


def blocks_from_positions(q_pos, k_pos, causal: bool, window=NO_WINDOW, doc_bounds=None) -> tuple[Block, ...]:
    return blocks_from_ranges(visible_ranges(q_pos, k_pos, causal, window, doc_bounds), window != NO_WINDOW)


@lru_cache(maxsize=4096)
def ring_blocks(seqlen_local: int, world: int, rank: int, src: int, layout: str, causal: bool,
                window=NO_WINDOW, doc_bounds=None) -> tuple[Block, ...]:
    """Blocks rank `rank` computes when holding the K/V shard of rank `src`."""
    seqlen = seqlen_local * world
    q_pos = global_positions(seqlen, world, rank, layout).tolist()
    k_pos = global_positions(seqlen, world, src, layout).tolist()
    if not causal and window == NO_WINDOW and doc_bounds is None:
        return (Block(0, seqlen_local, 0, seqlen_local),)
    return blocks_from_positions(q_pos, k_pos, causal, window, doc_bounds)


@lru_cache(maxsize=1024)
def last_step(seqlen_local: int, world: int, layout: str, causal: bool, window=NO_WINDOW, doc_bounds=None) -> int:
    """The last ring step at which any rank has work: K/V need not travel further (same on every rank)."""
    busy = [step for step in range(world) for r in range(world)
            if ring_blocks(seqlen_local, world, r, (r - step) % world, layout, causal, window, doc_bounds)]
    return max(busy, default=0)
