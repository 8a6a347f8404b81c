"""Ulysses (DeepSpeed-Ulysses) context parallelism: trade the sequence split for a head split.

Each rank holds its tokens of every head (the same sharding contract as the ring: `shard(x, layout=...)`).
One all-to-all turns that into every token of h / world heads; local attention then runs on the whole
sequence in global order (so the causal mask is the ordinary one), and a second all-to-all turns the
output back into this rank's tokens of every head. The backward is the same two all-to-alls transposed,
through autograd.

GQA: rank r needs only the K/V heads its query heads use. With h_kv >= world (h_kv % world == 0) each
rank gets h_kv / world of them; with fewer K/V heads than ranks each rank gets the one it needs, so a
K/V head is replicated to world / h_kv ranks and no more. Autograd sums the replicas' gradients back
into the source head in float32 (each part is rounded once, by the local op, to the input dtype: in
bf16 dK/dV then carry about 1.4x the single-device rounding error, against 1x without replication). For head counts where the ranges do not line up (3 K/V heads on
4 ranks) the shorter messages are zero-padded (gloo's all-to-all needs equal sizes, the padding is
dropped on arrival) and the local attention runs once per K/V head, each call plain GQA.

The same two steps serve the hybrid (hybrid.py): there the group is the Ulysses group and the gathered
tokens are one ring shard instead of the whole sequence.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from ringfa3.ops import attention, resolve_backend
from ringfa3.ops.checks import resolve_scale

from .checks import check_cp_inputs
from .comm import world_and_rank
from .layout import check_seqlen, global_positions
from .plan import NO_WINDOW


def _a2a(x: Tensor, group) -> Tensor:
    """x (w, ...): slice j goes to rank j; returns y (w, ...) whose slice j came from rank j."""
    x = x.contiguous()
    y = torch.empty_like(x)
    dist.all_to_all_single(y, x, group=group)
    return y


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _a2a(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _a2a(grad, ctx.group), None  # an all-to-all's transpose is the same all-to-all


def all_to_all(x: Tensor, group) -> Tensor:
    """Differentiable all-to-all over dim 0 of x (w, ...); the identity on a group of one."""
    world, _ = world_and_rank(group)
    return x if world == 1 else _AllToAll.apply(x, group)


@dataclass(frozen=True)
class HeadSplit:
    """Which query and K/V heads each rank of a Ulysses group of `world` ranks owns."""
    heads: int
    kv_heads: int
    world: int

    @property
    def q_per_rank(self) -> int:
        return self.heads // self.world

    def kv_range(self, r: int) -> tuple[int, int]:
        """[lo, hi) of the K/V heads used by rank r's query heads (contiguous GQA grouping)."""
        hp, g = self.q_per_rank, self.heads // self.kv_heads
        return r * hp // g, ((r + 1) * hp - 1) // g + 1

    @property
    def kv_msg(self) -> int:
        """K/V heads per message: the most any rank needs."""
        return max(hi - lo for lo, hi in map(self.kv_range, range(self.world)))

    @property
    def replicated(self) -> bool:
        """Whether some K/V head goes to more than one rank."""
        return sum(hi - lo for lo, hi in map(self.kv_range, range(self.world))) > self.kv_heads

    def local_runs(self, r: int) -> list[tuple[int, int, int, int]]:
        """Rank r's local attention calls: (q0, q1, k0, k1) slices of its local query and K/V heads, each
        plain GQA. One call when the GQA grouping lines up with the split; otherwise one per K/V head, so
        that each call sums its query heads' dK/dV in float32 inside the op, rounding once per call."""
        lo, hi = self.kv_range(r)
        hp, g, n = self.q_per_rank, self.heads // self.kv_heads, hi - lo
        kv_of = [(r * hp + i) // g - lo for i in range(hp)]  # local K/V head of each local query head
        if hp % n == 0 and kv_of == [i // (hp // n) for i in range(hp)]:
            return [(0, hp, 0, n)]
        return [(kv_of.index(j), hp - kv_of[::-1].index(j), j, j + 1) for j in range(n)]


def check_heads(heads: int, kv_heads: int, world: int, what: str = "Ulysses") -> None:
    if heads % world != 0:
        raise ValueError(
            f"{what} splits heads over {world} ranks, but nheads of q ({heads}) is not a multiple of {world}; "
            f"use a head count divisible by the group size, or the ring (strategy='ring') / hybrid")


@lru_cache(maxsize=256)
def _orders(seqlen: int, parent_world: int, members: tuple[int, ...], layout: str,
            device) -> tuple[Tensor, Tensor] | None:
    """perm, inv for the tokens gathered from `members` (parent ranks, in group order): gathered[perm]
    is in increasing global order, sorted[inv] is back in gathered order. None when already in order
    (contiguous). Cached per device: no host-to-device copy per call."""
    pos = torch.cat([global_positions(seqlen, parent_world, m, layout) for m in members])
    perm = torch.argsort(pos)
    if torch.equal(perm, torch.arange(perm.numel())):
        return None
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel())
    return perm.to(device), inv.to(device)


def _reorder(x: Tensor, dim: int, index: Tensor | None) -> Tensor:
    return x if index is None else x.index_select(dim, index)


class UlyssesSwap:
    """The two all-to-alls of one Ulysses group, for inputs in `layout` over a parent world.

    members: the parent ranks of this group's ranks, in group order (all ranks for plain Ulysses,
    ring_rank * U + u for the hybrid). After `to_heads` this rank holds every token of the members,
    in increasing global order, for its own heads.
    """

    def __init__(self, group, split: HeadSplit, seqlen: int, parent_world: int, members: tuple[int, ...],
                 layout: str, device):
        self.group, self.split = group, split
        self.world, self.rank = world_and_rank(group)
        orders = _orders(seqlen, parent_world, members, layout, torch.device(device))
        self.perm, self.inv = orders if orders is not None else (None, None)

    def to_heads(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q (b, s_l, h, d), k/v (b, s_l, h_kv, d) -> q (b, w s_l, h/w, d), k/v (b, w s_l, n_kv, d)."""
        sp, hp, n = self.split, self.split.q_per_rank, self.split.kv_msg
        dtype = q.dtype
        if sp.replicated:  # a K/V head's gradient has parts from several ranks: sum them in float32
            k, v = k.float(), v.float()
        pieces = []
        for r in range(self.world):  # one message per destination: its q heads, then its k and v heads
            lo, hi = sp.kv_range(r)
            pad = (0, 0, 0, n - (hi - lo))
            pieces.append(torch.cat([q[:, :, r * hp:(r + 1) * hp], F.pad(k[:, :, lo:hi], pad).to(dtype),
                                     F.pad(v[:, :, lo:hi], pad).to(dtype)], dim=2))
        y = all_to_all(torch.stack(pieces), self.group)  # (w, b, s_l, hp + 2n, d): y[j] from rank j
        y = _reorder(rearrange(y, "w b s h d -> b (w s) h d"), 1, self.perm)  # global order
        lo, hi = sp.kv_range(self.rank)
        return y[:, :, :hp], y[:, :, hp:hp + hi - lo], y[:, :, hp + n:hp + n + hi - lo]

    def attend(self, fn, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """fn(q, k, v) -> (out, lse) on this rank's heads, one call per run of `HeadSplit.local_runs`."""
        runs = self.split.local_runs(self.rank)
        if len(runs) == 1:
            return fn(q, k, v)
        parts = [fn(q[:, :, a:b], k[:, :, c:d], v[:, :, c:d]) for a, b, c, d in runs]
        return torch.cat([o for o, _ in parts], dim=2), torch.cat([lse for _, lse in parts], dim=1)

    def to_seq(self, out: Tensor) -> Tensor:
        """out (b, w s_l, h/w, d) in global order -> (b, s_l, h, d) this rank's tokens, every head."""
        y = rearrange(_reorder(out, 1, self.inv), "b (w s) h d -> w b s h d", w=self.world)
        return rearrange(all_to_all(y, self.group), "w b s h d -> b s (w h) d")

    def lse_to_seq(self, lse: Tensor) -> Tensor:
        """lse (b, h/w, w s_l) in global order -> (b, h, s_l); not differentiable."""
        y = rearrange(_reorder(lse, 2, self.inv), "b h (w s) -> w b h s", w=self.world)
        with torch.no_grad():
            y = all_to_all(y, self.group)
        return rearrange(y, "w b h s -> b (w h) s")


def check_common(q: Tensor, k: Tensor, v: Tensor, causal, layout: str, backend: str, window,
                 deterministic: bool) -> tuple[tuple[int, int], str]:
    """Local checks shared by Ulysses and the hybrid (every rank raises the same, before communicating).
    Returns the normalized window and the local backend's name."""
    window = check_cp_inputs(q, k, v, causal, layout, window)
    # a backend that cannot serve these inputs fails here, not after an all-to-all
    impl = resolve_backend(backend, q, k, v, causal, window, deterministic=deterministic)
    return window, impl.name


def ulysses_attn_func(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, softmax_scale: float | None = None,
                      group=None, layout: str = "zigzag", return_lse: bool = False, backend: str = "auto",
                      window: tuple[int, int] = NO_WINDOW, deterministic: bool = False):
    """Attention of this rank's queries against the whole sequence spread over `group`, by head split.

    Same contract as `ring_flash_attn_func`: q (b, s_local, h, d), k/v (b, s_local, h_kv, d) are this
    rank's tokens in `layout`; causal and the sliding `window` (left, right) refer to global positions
    (the local op sees the sequence in global order, so they are its own masks). Returns out
    (b, s_local, h, d) and with return_lse the global lse (b, h, s_local) float32. h must be a multiple of
    the group size. deterministic=True: a deterministic local backend; the all-to-alls and the float32
    sums of replicated K/V gradients are deterministic already.
    """
    window, name = check_common(q, k, v, causal, layout, backend, window, deterministic)
    world, _ = world_and_rank(group)
    check_heads(q.shape[2], k.shape[2], world)
    seqlen = q.shape[1] * world
    check_seqlen(seqlen, world, layout, name=f"global seqlen (q.shape[1]={q.shape[1]} x world {world})")
    scale = resolve_scale(softmax_scale, q.shape[-1])
    swap = UlyssesSwap(group, HeadSplit(q.shape[2], k.shape[2], world), seqlen, world, tuple(range(world)),
                       layout, q.device)
    qh, kh, vh = swap.to_heads(q, k, v)  # (b, s, h/w, d), (b, s, n_kv, d)
    # auto is resolved again on the gathered shapes; an explicit or deterministic choice is kept
    out, lse = swap.attend(lambda q_, k_, v_: attention(q_, k_, v_, causal=causal, softmax_scale=scale, window=window,
                                                        backend=name if deterministic else backend,
                                                        deterministic=deterministic), qh, kh, vh)
    out = swap.to_seq(out)
    return (out, swap.lse_to_seq(lse)) if return_lse else out
