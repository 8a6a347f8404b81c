"""2-D context parallelism: Ulysses inside groups of U ranks, the ring across R such groups (world = U x R).

Rank numbering: parent rank = ring_rank * U + ulysses_rank, so a Ulysses group is U consecutive ranks
(one node's NVLink domain for the bandwidth-hungry all-to-all) and a ring group takes one rank from
each Ulysses group. `hybrid_groups` builds both groups this way.

Sharding: the hybrid takes the same input as the ring over the whole world, `shard(x, group=parent,
layout=layout)` with the parent rank above, so a model or data loader does not change when the planner
picks it. For layout "contiguous" and "zigzag", the tokens of one Ulysses group are then exactly one
shard of `layout` over the R ring ranks (zigzag over U R ranks = zigzag over R ranks with chunks U times
longer), and inside the group each rank holds the pieces `layout` gives it: contiguous sub-chunks for
"contiguous", a sub-chunk of each of the two zigzag chunks for "zigzag". "stripe" does not have this
property and is refused. `hybrid_positions` / `hybrid_shard` / `hybrid_unshard` give the same split
from the two groups alone. Example, 16 tokens, zigzag, U = R = 2:
    rank (ring 0, ulysses 0) = parent 0: [0 1 14 15]    rank (ring 0, ulysses 1) = parent 1: [2 3 12 13]
    rank (ring 1, ulysses 0) = parent 2: [4 5 10 11]    rank (ring 1, ulysses 1) = parent 3: [6 7  8  9]
    Ulysses group 0 gathers [0..3, 12..15] = zigzag shard 0 of 2, group 1 gathers [4..11] = shard 1.

Forward: all-to-all in the Ulysses group -> this rank holds its ring shard, every token, h / U heads;
ring attention over the ring group; all-to-all back. Backward through autograd (the ring's own backward
inside).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from ringfa3.ops.checks import resolve_scale

from .comm import world_and_rank
from .layout import check_layout, check_seqlen, global_positions, unshard
from .ring import ring_flash_attn_func
from .ulysses import HeadSplit, UlyssesSwap, check_common, check_heads

HYBRID_LAYOUTS = ("contiguous", "zigzag")


def check_hybrid_layout(layout: str) -> None:
    check_layout(layout)
    if layout not in HYBRID_LAYOUTS:
        raise ValueError(f"layout={layout!r} cannot be split 2-D (a Ulysses group's stripe tokens are not a ring "
                         f"shard); use {' or '.join(map(repr, HYBRID_LAYOUTS))} for the hybrid, or the ring")


def hybrid_groups(ulysses_degree: int, group=None):
    """(ulysses_group, ring_group) of this rank, splitting the ranks of `group` (default: the world).

    Collective over the default group: every rank calls it (with its own `group` when the world is cut
    into several context-parallel groups, e.g. data x context parallel), and every rank then creates every
    2-D group of every parent group in the same order, as dist.new_group requires.
    """
    world, rank = world_and_rank(group)
    if isinstance(ulysses_degree, bool) or not isinstance(ulysses_degree, int) or ulysses_degree < 1 \
            or world % ulysses_degree != 0:
        raise ValueError(f"ulysses_degree={ulysses_degree!r} must be a positive divisor of the world size {world}")
    if world == 1:
        return group, group  # both of size one: no communication
    if group is None or group is dist.group.WORLD:
        parents, mine = [tuple(range(world))], tuple(range(world))
    else:  # learn every rank's parent group so all ranks make the same new_group calls
        mine = tuple(dist.get_process_group_ranks(group))
        every = [None] * dist.get_world_size()
        dist.all_gather_object(every, mine)
        parents = sorted(set(every))
    u_deg = ulysses_degree
    out = {}
    for ranks in parents:
        for i in range(len(ranks) // u_deg):  # Ulysses groups: consecutive ranks
            g = dist.new_group(list(ranks[i * u_deg:(i + 1) * u_deg]))
            if ranks == mine and i == rank // u_deg:
                out["ulysses"] = g
        for u in range(u_deg):  # ring groups: one rank from each Ulysses group
            g = dist.new_group(list(ranks[u::u_deg]))
            if ranks == mine and u == rank % u_deg:
                out["ring"] = g
    return out["ulysses"], out["ring"]


def _grid(ulysses_group, ring_group) -> tuple[int, int, int, int]:
    u_deg, u = world_and_rank(ulysses_group)
    r_deg, i = world_and_rank(ring_group)
    return u_deg, u, r_deg, i


def hybrid_positions(seqlen: int, ulysses_degree: int, ring_degree: int, ulysses_rank: int, ring_rank: int,
                     layout: str = "zigzag", device=None) -> Tensor:
    """Global positions held by rank (ring_rank, ulysses_rank), in local order. (seqlen // (U R),) int64."""
    check_hybrid_layout(layout)
    return global_positions(seqlen, ulysses_degree * ring_degree, ring_rank * ulysses_degree + ulysses_rank,
                            layout, device)


def hybrid_local_positions(seqlen_local: int, ulysses_group, ring_group, layout: str = "zigzag", device=None) -> Tensor:
    """Global positions of this rank's `seqlen_local` tokens (for RoPE). (seqlen_local,) int64."""
    u_deg, u, r_deg, i = _grid(ulysses_group, ring_group)
    return hybrid_positions(seqlen_local * u_deg * r_deg, u_deg, r_deg, u, i, layout, device)


def hybrid_shard(x: Tensor, dim: int = 1, ulysses_group=None, ring_group=None, layout: str = "zigzag") -> Tensor:
    """This rank's part of the full `x` along `dim` (differentiable)."""
    u_deg, u, r_deg, i = _grid(ulysses_group, ring_group)
    dim = dim % x.dim()
    check_seqlen(x.shape[dim], u_deg * r_deg, layout, name=f"x.shape[{dim}]")
    return x.index_select(dim, hybrid_positions(x.shape[dim], u_deg, r_deg, u, i, layout, x.device))


def hybrid_unshard(x_local: Tensor, dim: int = 1, ulysses_group=None, ring_group=None,
                   layout: str = "zigzag") -> Tensor:
    """The full tensor from every rank's part (two all-gathers: inside the Ulysses group, then the ring)."""
    check_hybrid_layout(layout)
    dim = dim % x_local.dim()
    u_deg, u, r_deg, i = _grid(ulysses_group, ring_group)
    # Inside the group the parts are `layout` over U R ranks restricted to U of them: gather them, sort by
    # position to get the ring shard, then unshard that over the ring.
    ring_shard = unshard(x_local, dim, ulysses_group, "contiguous")  # (.., U s_l, ..) in member order
    seqlen = x_local.shape[dim] * u_deg * r_deg
    pos = torch.cat([hybrid_positions(seqlen, u_deg, r_deg, m, i, layout) for m in range(u_deg)])
    ring_shard = ring_shard.index_select(dim, torch.argsort(pos).to(x_local.device))
    return unshard(ring_shard, dim, ring_group, layout)


def hybrid_attn_func(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, softmax_scale: float | None = None,
                     ulysses_group=None, ring_group=None, layout: str = "zigzag", return_lse: bool = False,
                     backend: str = "auto", window: tuple[int, int] = (-1, -1), deterministic: bool = False):
    """Attention of this rank's queries against the whole sequence over a U x R grid of ranks.

    q (b, s_local, h, d), k/v (b, s_local, h_kv, d): this rank's tokens (see the module docstring; the
    same as `shard` over the parent group with rank ring_rank * U + ulysses_rank). h must be a multiple
    of U. Returns out (b, s_local, h, d) and with return_lse the global lse (b, h, s_local) float32.
    `window` and `deterministic` go to the ring (see `ring_flash_attn_func`).
    """
    window, _ = check_common(q, k, v, causal, layout, backend, window, deterministic)
    check_hybrid_layout(layout)
    u_deg, u, r_deg, i = _grid(ulysses_group, ring_group)
    if u_deg > 1 and r_deg > 1 and (ulysses_group is ring_group or dist.get_world_size() % (u_deg * r_deg)):
        raise ValueError(f"ulysses_group ({u_deg} ranks) and ring_group ({r_deg} ranks) are not the two axes of one "
                         f"2-D split; build them with hybrid_groups(ulysses_degree, group)")
    check_heads(q.shape[2], k.shape[2], u_deg, what="the hybrid's Ulysses group")
    world = u_deg * r_deg
    seqlen = q.shape[1] * world
    check_seqlen(seqlen, world, layout, name=f"global seqlen (q.shape[1]={q.shape[1]} x world {world})")
    scale = resolve_scale(softmax_scale, q.shape[-1])
    members = tuple(i * u_deg + m for m in range(u_deg))
    swap = UlyssesSwap(ulysses_group, HeadSplit(q.shape[2], k.shape[2], u_deg), seqlen, world, members, layout,
                       q.device)
    qh, kh, vh = swap.to_heads(q, k, v)  # (b, s / R, h / U, d): ring shard i in its local (increasing) order
    out, lse = swap.attend(lambda q_, k_, v_: ring_flash_attn_func(
        q_, k_, v_, causal=causal, softmax_scale=scale, group=ring_group, layout=layout, return_lse=True,
        backend=backend, window=window, deterministic=deterministic), qh, kh, vh)
    out = swap.to_seq(out)
    return (out, swap.lse_to_seq(lse)) if return_lse else out
