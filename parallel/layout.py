"""How a global sequence is split across the ranks of a context-parallel group.

Layouts (rank r of a world of w, sequence length s):
  contiguous  rank r holds chunk r of w equal chunks.
  zigzag      2w chunks; rank r holds chunks r and 2w-1-r (balances causal work).
  stripe      token i goes to rank i % w.
Every rank's tokens stay in increasing global order, which the ring's mask planning relies on.
The ring, the attention layer (RoPE positions) and the data loader all use this one module.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from .comm import world_and_rank

LAYOUTS = ("contiguous", "zigzag", "stripe")


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not known; use one of {', '.join(map(repr, LAYOUTS))}")


def split_parts(world: int, layout: str) -> int:
    """How many equal chunks `layout` cuts a sequence into over `world` ranks (lengths must divide)."""
    check_layout(layout)
    return 2 * world if layout == "zigzag" else world


def check_seqlen(seqlen: int, world: int, layout: str, name: str = "seqlen") -> None:
    """Raise ValueError unless `layout` can split a sequence of `seqlen` tokens over `world` ranks."""
    parts = split_parts(world, layout)
    if seqlen % parts != 0:
        raise ValueError(
            f"{name}={seqlen} cannot be split by layout={layout!r} over {world} ranks: it must be a "
            f"multiple of {parts} ({'2 x ' if layout == 'zigzag' else ''}world size); pad or change the length"
        )


def global_positions(seqlen: int, world: int, rank: int, layout: str, device=None) -> Tensor:
    """Global token positions held by `rank`, in local order. (seqlen // world,) int64."""
    check_seqlen(seqlen, world, layout)
    if layout == "stripe":
        return torch.arange(rank, seqlen, world, device=device)
    if layout == "contiguous":
        n = seqlen // world
        return torch.arange(rank * n, (rank + 1) * n, device=device)
    c = seqlen // (2 * world)
    first = torch.arange(rank * c, (rank + 1) * c, device=device)
    second = torch.arange((2 * world - 1 - rank) * c, (2 * world - rank) * c, device=device)
    return torch.cat([first, second])


def local_positions(seqlen_local: int, group=None, layout: str = "zigzag", device=None) -> Tensor:
    """Global positions of this rank's `seqlen_local` tokens. (seqlen_local,) int64."""
    world, rank = world_and_rank(group)
    return global_positions(seqlen_local * world, world, rank, layout, device)


def _take(x: Tensor, dim: int, seqlen: int, world: int, rank: int, layout: str) -> Tensor:
    if layout == "contiguous":
        n = seqlen // world
        return x.narrow(dim, rank * n, n)
    if layout == "zigzag":
        c = seqlen // (2 * world)
        return torch.cat([x.narrow(dim, rank * c, c), x.narrow(dim, (2 * world - 1 - rank) * c, c)], dim)
    idx = global_positions(seqlen, world, rank, layout, x.device)
    return x.index_select(dim, idx)


def shard(x: Tensor, dim: int = 1, group=None, layout: str = "zigzag") -> Tensor:
    """This rank's part of the full tensor `x` along `dim` (differentiable)."""
    world, rank = world_and_rank(group)
    dim = dim % x.dim()
    check_seqlen(x.shape[dim], world, layout, name=f"x.shape[{dim}]")
    return _take(x, dim, x.shape[dim], world, rank, layout)


def _gather_full(x_local: Tensor, dim: int, group, layout: str) -> Tensor:
    world, _ = world_and_rank(group)
    if world == 1:
        return x_local
    parts = [torch.empty_like(x_local) for _ in range(world)]
    dist.all_gather(parts, x_local.contiguous(), group=group)
    seqlen = x_local.shape[dim] * world
    order = torch.cat([global_positions(seqlen, world, r, layout) for r in range(world)])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(seqlen)
    return torch.cat(parts, dim).index_select(dim, inverse.to(x_local.device))


class _Unshard(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_local, dim, group, layout):
        ctx.dim, ctx.group, ctx.layout = dim, group, layout
        return _gather_full(x_local, dim, group, layout)

    @staticmethod
    def backward(ctx, grad_full):
        # Every rank holds the same full gradient only if the loss used the full tensor identically on
        # each rank; the local share of it is what flows back to this rank's input.
        world, rank = world_and_rank(ctx.group)
        g = _take(grad_full, ctx.dim, grad_full.shape[ctx.dim], world, rank, ctx.layout)
        return g, None, None, None


def unshard(x_local: Tensor, dim: int = 1, group=None, layout: str = "zigzag") -> Tensor:
    """The full tensor from every rank's part along `dim` (an all-gather; differentiable)."""
    check_layout(layout)
    dim = dim % x_local.dim()
    return _Unshard.apply(x_local, dim, group, layout)
