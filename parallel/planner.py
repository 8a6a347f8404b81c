"""Choose ring, Ulysses or the 2-D hybrid for a context-parallel attention call, and say why.

Cost model (per rank, one layer, forward): the ring sends its K/V shard R - 1 times, overlapped with the
compute on the shard it holds. It is free when a step's compute outlasts its transfer:
    compute 4 s_l^2 h d flops (half under causal)  vs  transfer 2 s_l h_kv d elements,
i.e. when s_l >= RING_OVERLAP_TOKENS * (h_kv / h) * (2 if causal else 1); below that its transfers are
exposed and latency-bound. Ulysses sends about 4 s_l h d elements in two all-to-alls, never overlapped
but independent of the world size, and needs h % world == 0. So:
  * one rank: nothing to split (ring, which is then plain local attention);
  * shards long enough to hide the ring: ring (no head constraint, no all-to-all);
  * otherwise heads divide over the world: Ulysses;
  * otherwise heads divide over part of it (U | gcd(h, world)): hybrid, Ulysses over U, ring over world / U;
  * otherwise ring.
All strategies take the same input sharding (`shard(x, group=group, layout=layout)`), so the choice never
changes what the caller feeds. An explicit strategy that cannot serve the inputs raises ValueError.
`window` and `deterministic` pass through to every strategy; the cost model ignores windows (a window
much shorter than a shard lets the ring stop early, which would favor it further).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from torch import Tensor

from .comm import world_and_rank
from .hybrid import HYBRID_LAYOUTS, hybrid_attn_func, hybrid_groups
from .layout import check_layout, check_seqlen
from .ring import ring_flash_attn_func
from .ulysses import ulysses_attn_func

log = logging.getLogger("ringfa3")

STRATEGIES = ("auto", "ring", "ulysses", "hybrid")
# flops / (bytes per element x link bytes/s) / 2 for an H100 (~600 TFLOP/s bf16 attention, ~200 GB/s
# per direction between NVLink peers): local tokens at which one ring step's compute covers its transfer
RING_OVERLAP_TOKENS = 3072


@dataclass(frozen=True)
class Plan:
    """strategy: "ring" | "ulysses" | "hybrid"; ulysses_degree x ring_degree == world; reason: why."""
    strategy: str
    ulysses_degree: int
    ring_degree: int
    reason: str


def _hybrid_degrees(world: int, heads: int) -> list[int]:
    """Ulysses degrees U with 1 < U < world that divide both the world and the heads, largest first."""
    g = math.gcd(world, heads)
    return [u for u in range(g, 1, -1) if g % u == 0 and u < world]


def plan_strategy(world: int, heads: int, kv_heads: int, seqlen: int, causal: bool = True, layout: str = "zigzag",
                  strategy: str = "auto", ulysses_degree: int | None = None) -> Plan:
    """The plan for `world` ranks, `heads` query / `kv_heads` K/V heads and a global sequence of `seqlen`."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not known; use one of {', '.join(map(repr, STRATEGIES))}")
    if ulysses_degree is not None and strategy != "hybrid":
        raise ValueError(f"ulysses_degree={ulysses_degree} only applies to strategy='hybrid', got strategy={strategy!r}")
    check_layout(layout)
    check_seqlen(seqlen, world, layout)
    if kv_heads < 1 or heads % kv_heads != 0:
        raise ValueError(f"heads={heads} must be a multiple of kv_heads={kv_heads}")
    if strategy == "ring":
        return Plan("ring", 1, world, "requested")
    if strategy == "ulysses":
        if heads % world != 0:
            raise ValueError(f"strategy='ulysses' needs the heads ({heads}) to divide over the {world} ranks; "
                             f"use strategy='ring', 'hybrid' or 'auto'")
        return Plan("ulysses", world, 1, "requested")
    if strategy == "hybrid":
        return _explicit_hybrid(world, heads, layout, ulysses_degree)
    return _auto(world, heads, kv_heads, seqlen, causal, layout)


def _explicit_hybrid(world, heads, layout, ulysses_degree) -> Plan:
    if layout not in HYBRID_LAYOUTS:
        raise ValueError(f"strategy='hybrid' cannot use layout={layout!r}; use {' or '.join(map(repr, HYBRID_LAYOUTS))}")
    if ulysses_degree is None:
        degrees = _hybrid_degrees(world, heads)
        if world == 1:
            return Plan("hybrid", 1, 1, "requested (one rank)")
        if not degrees:
            raise ValueError(f"strategy='hybrid' found no Ulysses degree 1 < U < {world} dividing both the world "
                             f"({world}) and the heads ({heads}); pass ulysses_degree or use 'ring' or 'ulysses'")
        ulysses_degree = degrees[0]
    if isinstance(ulysses_degree, bool) or not isinstance(ulysses_degree, int) or ulysses_degree < 1 \
            or world % ulysses_degree or heads % ulysses_degree:
        raise ValueError(f"ulysses_degree={ulysses_degree!r} must divide both the world size ({world}) and the "
                         f"heads ({heads})")
    return Plan("hybrid", ulysses_degree, world // ulysses_degree, "requested")


def _auto(world, heads, kv_heads, seqlen, causal, layout) -> Plan:
    if world == 1:
        return Plan("ring", 1, 1, "one rank: nothing to split, local attention")
    local = seqlen // world
    hide = math.ceil(RING_OVERLAP_TOKENS * kv_heads / heads * (2 if causal else 1))
    if local >= hide:
        return Plan("ring", 1, world, f"{local} tokens per rank >= {hide}: each ring step's compute hides its K/V "
                                      f"transfer, and the ring needs no head divisibility or all-to-all")
    short = f"{local} tokens per rank < {hide} would leave the ring's K/V transfers exposed"
    if heads % world == 0:
        rep = max(1, world // kv_heads)
        kv = f"; K/V heads {kv_heads} each go to {rep} rank(s)" if kv_heads < world else ""
        return Plan("ulysses", world, 1, f"{short}; the {heads} heads divide over {world} ranks{kv}")
    degrees = _hybrid_degrees(world, heads) if layout in HYBRID_LAYOUTS else []
    if degrees:
        u = degrees[0]
        return Plan("hybrid", u, world // u, f"{short}; the {heads} heads divide over only {u} of {world} ranks: "
                                             f"Ulysses over {u}, ring over {world // u}")
    why = "layout 'stripe' has no 2-D split" if layout not in HYBRID_LAYOUTS else \
        f"the {heads} heads divide over no subgroup of {world} ranks"
    return Plan("ring", 1, world, f"{short}, but {why}")


_logged: set = set()
_groups: dict = {}


def _hybrid_groups_cached(group, ulysses_degree: int):
    """The 2-D groups are built once per (group, U): new_group is collective, and every rank reaches
    this point in the same order because the plan depends only on shapes every rank shares."""
    key = (id(group), ulysses_degree)
    if key not in _groups:
        _groups[key] = (group, hybrid_groups(ulysses_degree, group))
    return _groups[key][1]


def context_parallel_attn(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, softmax_scale: float | None = None,
                          group=None, layout: str = "zigzag", return_lse: bool = False, backend: str = "auto",
                          window: tuple[int, int] = (-1, -1), deterministic: bool = False, strategy: str = "auto",
                          ulysses_degree: int | None = None):
    """Context-parallel attention by `strategy` ("auto" plans it; see the module docstring).

    Same contract and arguments as `ring_flash_attn_func`: this rank's tokens of
    `shard(x, group=group, layout=layout)`; every strategy gives the same math.
    """
    world, _ = world_and_rank(group)
    plan = plan_strategy(world, q.shape[2], k.shape[2], q.shape[1] * world, causal, layout, strategy,
                         ulysses_degree)
    key = (plan, world, q.shape[2], k.shape[2], q.shape[1], causal, layout)
    if key not in _logged:
        _logged.add(key)
        log.info("ringfa3: context parallel %s (ulysses %d x ring %d) for %d ranks, %d/%d heads, %d tokens: %s",
                 plan.strategy, plan.ulysses_degree, plan.ring_degree, world, q.shape[2], k.shape[2],
                 q.shape[1] * world, plan.reason)
    kw = dict(causal=causal, softmax_scale=softmax_scale, layout=layout, return_lse=return_lse, backend=backend,
              window=window, deterministic=deterministic)
    if plan.strategy == "ring":
        return ring_flash_attn_func(q, k, v, group=group, **kw)
    if plan.strategy == "ulysses":
        return ulysses_attn_func(q, k, v, group=group, **kw)
    ulysses_group, ring_group = _hybrid_groups_cached(group, plan.ulysses_degree)
    return hybrid_attn_func(q, k, v, ulysses_group=ulysses_group, ring_group=ring_group, **kw)
