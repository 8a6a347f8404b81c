"""Blocks as varlen kernel calls: the few calls of a packed (cu_seqlens) kernel that compute a list of blocks.

A varlen kernel (FlashAttention-2's, in torch as aten._flash_attention_forward/_backward) runs many
segments in one launch: segment i is query rows [cu_q[i], cu_q[i+1]) against key rows [cu_k[i], cu_k[i+1]),
each with the call's one (left, right) window aligned bottom-right in the segment (causal = (-1, 0)).
Both cu arrays must tile their tensor in order, so one call serves blocks whose query ranges and key
ranges both increase and do not overlap; the gaps between them become filler segments (rows with no
keys, which the kernel leaves with out 0 and lse +inf, and keys with no rows). Before grouping:
  - a block's mask is written as the (left, right) it has in the kernel's convention, bounds that clip
    nothing dropped (-1); a -1 bound may take any value at least as loose, so blocks with different
    masks can still share a call (a causal staircase joins a window band of left L >= its width - 1);
  - neighbouring blocks are fused where one segment has the same mask (an unmasked rectangle next to
    a causal block on the same rows is one bottom-right causal segment; a causal start and the window
    band below it are one window segment).
Then blocks go, in order, to the first call whose mask and order they fit, else open a new one. Dense
causal steps are one call; a step over packed documents is one call for all documents; zigzag shards
under a window may need two. (split_by_size, off by default, would also split a call whose segments
differ much in length, since the kernel's grid gives every segment the longest one's tiles; it measured
slower.)

`varlen_forward` / `varlen_backward` drive any kernel with that interface (the flash backend passes
FA2's; tests pass an emulation built from the reference backend, so all of this runs on CPU too).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor

from .masks import effective_window
from .merge import merge_into

TILE = 128  # query rows (forward) / keys (backward) of one FA2 tile at head dim 128
CALL_COST = 2048  # one more launch and fp32 merge, in CTAs (per head) of launched grid
SPLIT_BY_SIZE = False  # split_by_size: measured slower on H100 (bench/NOTES-ring.md v3), so off


@dataclass(frozen=True)
class VarlenCall:
    """One kernel call over a (b * s_q, h, d) / (b * s_k, h_kv, d) packing: cu_q, cu_k int32 (n + 1,),
    on the device and (bounds_q, bounds_k) as host tuples."""
    cu_q: Tensor
    cu_k: Tensor
    max_q: int
    max_k: int
    left: int
    right: int
    bounds_q: tuple = ()
    bounds_k: tuple = ()

    @property
    def n_segments(self) -> int:
        return self.cu_q.numel() - 1

    @property
    def causal(self) -> bool:
        return self.left < 0 and self.right == 0


def _canon(q0, q1, k0, k1, left, right):
    """(q0, q1, k0, k1, left, right) with bounds that clip nothing written as -1."""
    if left >= 0 and left >= (k1 - k0) - 1:
        left = -1
    if right >= 0 and right >= (q1 - q0) - 1:
        right = -1
    return (q0, q1, k0, k1, left, right)


def _row(seg, i):
    """[lo, hi] (inclusive; empty if lo > hi) of the keys row i of the segment sees."""
    q0, q1, k0, k1, left, right = seg
    diag = i + (k1 - q1)  # bottom-right alignment: the last row sits at the last key
    lo = k0 if left < 0 else max(k0, diag - left)
    hi = k1 - 1 if right < 0 else min(k1 - 1, diag + right)
    return lo, hi


def _fuse(x, y):
    """One segment with the same visibility as x and y together, or None. Each bound is max(c, i + a)
    or min(c, i + a) in the row i, so two of them agree on a run of rows iff they agree at its ends."""
    for left in dict.fromkeys((y[4], x[4])):
        for right in dict.fromkeys((y[5], x[5])):
            if x[0] == y[0] and x[1] == y[1] and x[3] == y[2]:  # same rows, y's keys right after x's
                m = (x[0], x[1], x[2], y[3], left, right)
                ok = all(_row(x, i)[1] == x[3] - 1 and _row(y, i)[0] == y[2] and _row(x, i)[0] <= _row(x, i)[1]
                         and _row(y, i)[0] <= _row(y, i)[1] and _row(m, i) == (_row(x, i)[0], _row(y, i)[1])
                         for i in (x[0], x[1] - 1))
            elif x[1] == y[0] and x[2] <= y[2] and x[3] <= y[3]:  # y's rows right below x's
                m = (x[0], y[1], x[2], y[3], left, right)
                ok = all(_row(p, i) == _row(m, i) for p in (x, y) for i in (p[0], p[1] - 1))
            else:
                return None
            if ok:
                return _canon(*m)
    return None


def _fits(bound, exact, loosest, size):
    """Whether a segment bound fits a call whose bound is `exact` (None: still free) and whose free (-1)
    members need at least `loosest`."""
    if bound >= 0:
        return (exact is None or exact == bound) and bound >= loosest
    return exact is None or exact >= size - 1


def group_blocks(blocks, s_q: int | None = None, s_k: int | None = None) -> list[tuple[int, int, list]]:
    """[(left, right, segments)]: the varlen calls (kernel-convention windows) that compute `blocks` of an
    (s_q, s_k) problem; each call's segments (q0, q1, k0, k1) increase in both ranges without overlap."""
    if not blocks:
        return []
    segs = []
    for b in blocks:
        s = _canon(b.q0, b.q1, b.k0, b.k1, *effective_window(b.causal, tuple(b.window)))
        fused = _fuse(segs[-1], s) if segs else None
        if fused is not None:
            segs[-1] = fused
        else:
            segs.append(s)
    calls = []  # [left_exact, left_loosest, right_exact, right_loosest, segs]
    for s in segs:
        q0, q1, k0, k1, left, right = s
        for c in calls:
            last = c[4][-1]
            if q0 >= last[1] and k0 >= last[3] and _fits(left, c[0], c[1], k1 - k0) \
                    and _fits(right, c[2], c[3], q1 - q0):
                break
        else:
            c = [None, -1, None, -1, []]
            calls.append(c)
        if left >= 0:
            c[0] = left
        else:
            c[1] = max(c[1], k1 - k0 - 1)
        if right >= 0:
            c[2] = right
        else:
            c[3] = max(c[3], q1 - q0 - 1)
        c[4].append(s[:4])
    s_q = max(b.q1 for b in blocks) if s_q is None else s_q
    s_k = max(b.k1 for b in blocks) if s_k is None else s_k
    return [(-1 if c[0] is None else c[0], -1 if c[2] is None else c[2], part)
            for c in calls for part in split_by_size(c[4], s_q, s_k)]


def _cu(segs, s_q: int, s_k: int, batch: int):
    """cu_q, cu_k over `batch` copies of (s_q, s_k), with filler segments in the gaps, cut into pieces
    no longer than the longest real segment (or one tile), so that fillers do not widen the grid."""
    cap_q = max([TILE] + [q1 - q0 for q0, q1, _, _ in segs])
    cap_k = max([TILE] + [k1 - k0 for _, _, k0, k1 in segs])
    one = []  # (rows, keys) per segment

    def fill(rows, keys):  # rows with no keys (out 0, lse +inf), keys with no rows
        one.extend((min(cap_q, rows - i), 0) for i in range(0, rows, cap_q))
        one.extend((0, min(cap_k, keys - i)) for i in range(0, keys, cap_k))

    cq = ck = 0
    for q0, q1, k0, k1 in segs:
        fill(q0 - cq, k0 - ck)
        one.append((q1 - q0, k1 - k0))
        cq, ck = q1, k1
    fill(s_q - cq, s_k - ck)
    cu_q, cu_k = [0], [0]
    for _ in range(batch):
        for nq, nk in one:
            cu_q.append(cu_q[-1] + nq)
            cu_k.append(cu_k[-1] + nk)
    return cu_q, cu_k, max(n for n, _ in one), max(n for _, n in one)


def _grid(segs, s_q: int, s_k: int) -> int:
    """CTAs (per head) a call over `segs` launches, forward plus backward: every segment gets as many
    tiles as the longest one, and the surplus ones exit at once (but still cost a slot each)."""
    cu_q, cu_k, max_q, max_k = _cu(segs, s_q, s_k, 1)
    return (len(cu_q) - 1) * (-(-max_q // TILE) + -(-max_k // TILE))


def split_by_size(segs, s_q: int, s_k: int) -> list[list]:
    """One call's segments, split into calls of short and long segments where the grid shrinks by more
    than a launch costs: one long document among hundreds of short ones gives every short one the long
    one's tile count (packed documents: 92-97 % of the CTAs exit at once). Off by default: on an H100 the
    empty CTAs cost less than the extra launch and merge (lognormal documents 6.4 -> 8.1 ms forward)."""
    if not SPLIT_BY_SIZE or len(segs) < 2:
        return [segs]
    size = lambda g: max(g[1] - g[0], g[3] - g[2])  # noqa: E731
    best, best_cost = [segs], _grid(segs, s_q, s_k)
    caps = sorted({size(g) for g in segs})
    for cap in caps[:-1]:
        small = [g for g in segs if size(g) <= cap]
        large = [g for g in segs if size(g) > cap]
        cost = _grid(small, s_q, s_k) + _grid(large, s_q, s_k) + CALL_COST
        if cost < best_cost:
            best, best_cost = [small, large], cost
    if len(best) == 2:  # the long part may split again
        return [best[0]] + split_by_size(best[1], s_q, s_k)
    return best


_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 512


def varlen_calls(blocks, batch: int, s_q: int, s_k: int, device) -> tuple[VarlenCall, ...]:
    """The calls for `blocks` (a tuple of Block; a ring's plan hands the same tuple object every time, so
    the result is cached by identity) over `batch` copies of an (s_q, s_k) problem."""
    key = (id(blocks), batch, s_q, s_k, str(device))
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is blocks:
        _CACHE.move_to_end(key)
        return hit[1]
    calls = []
    for left, right, segs in group_blocks(blocks, s_q, s_k):
        cu_q, cu_k, max_q, max_k = _cu(segs, s_q, s_k, batch)
        calls.append(VarlenCall(torch.tensor(cu_q, dtype=torch.int32, device=device),
                                torch.tensor(cu_k, dtype=torch.int32, device=device),
                                max(max_q, 2), max(max_k, 1), left, right, tuple(cu_q), tuple(cu_k)))
        # max_q >= 2: FA2 takes max_q == 1 for single-token decoding (drops causal, regroups heads)
    calls = tuple(calls)
    if isinstance(blocks, tuple):
        _CACHE[key] = (blocks, calls)
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return calls


def varlen_forward(kernel, q: Tensor, k: Tensor, v: Tensor, blocks, scale: float, out_acc: Tensor,
                   lse_acc: Tensor) -> None:
    """forward_blocks through a varlen kernel: kernel(q (b*s_q, h, d), k, v (b*s_k, h_kv, d), call, scale)
    -> (out (b*s_q, h, d), lse (h, b*s_q) float32 with +inf or -inf on rows without keys)."""
    b, s_q, h, d = q.shape
    s_k, h_kv = k.shape[1], k.shape[2]
    q2, k2, v2 = q.reshape(b * s_q, h, d), k.reshape(b * s_k, h_kv, d), v.reshape(b * s_k, h_kv, d)
    for call in varlen_calls(blocks, b, s_q, s_k, q.device):
        out, lse = kernel(q2, k2, v2, call, scale)
        lse = lse.view(h, b, s_q).transpose(0, 1)  # (b, h, s_q)
        lse = torch.where(lse == float("inf"), float("-inf"), lse)  # rows without keys weigh nothing
        merge_into(out_acc, lse_acc, out.reshape(b, s_q, h, d), lse)


def varlen_backward(kernel, dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, blocks,
                    scale: float, dq_acc: Tensor) -> list:
    """backward_blocks through a varlen kernel: kernel(dout, q, out (b*s_q, h, d), k, v (b*s_k, h_kv, d),
    lse (h, b*s_q), call, scale) -> (dq, dk, dv) over the packed rows (zero where no segment reaches)."""
    b, s_q, h, d = q.shape
    s_k, h_kv = k.shape[1], k.shape[2]
    flat = lambda x, s, n: x.to(q.dtype).reshape(b * s, n, d)  # noqa: E731
    q2, k2, v2, o2, do2 = flat(q, s_q, h), flat(k, s_k, h_kv), flat(v, s_k, h_kv), flat(out, s_q, h), flat(dout, s_q, h)
    lse2 = lse.transpose(0, 1).reshape(h, b * s_q).contiguous()  # (h, b*s_q)
    pieces = []
    for call in varlen_calls(blocks, b, s_q, s_k, q.device):
        dq, dk, dv = kernel(do2, q2, k2, v2, o2, lse2, call, scale)
        dq_acc += dq.reshape(b, s_q, h, d)
        pieces.append((0, s_k, dk.reshape(b, s_k, h_kv, d), dv.reshape(b, s_k, h_kv, d)))
    return pieces
