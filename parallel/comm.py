"""Process-group helpers and the ring's point-to-point exchange.

Without an initialized process group everything runs as world size 1, rank 0, and the ring never
communicates. The same code runs over gloo (CPU tests) and NCCL.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def world_and_rank(group=None) -> tuple[int, int]:
    """(world size, rank) of `group`; (1, 0) when torch.distributed is not initialized."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def global_rank(group, group_rank: int) -> int:
    """Rank in the default group of `group_rank` in `group` (P2P ops address global ranks)."""
    if group is None or group is dist.group.WORLD:
        return group_rank
    return dist.get_global_rank(group, group_rank)


class RingExchange:
    """Sends a tensor `shift` ranks ahead while receiving the tensor of the rank `shift` behind (same shape).

    `start(t)` posts the batched isend/irecv and returns at once; `wait()` blocks until the receive
    has landed and returns the received tensor. One instance is one stream of messages (its own tag),
    so two exchanges (K/V and dK/dV) can be in flight together without mixing.
    """

    def __init__(self, group=None, tag: int = 0, shift: int = 1):
        self.group = group
        self.world, self.rank = world_and_rank(group)
        self.next = global_rank(group, (self.rank + shift) % self.world)
        self.prev = global_rank(group, (self.rank - shift) % self.world)
        self.tag = tag
        self._reqs: list = []
        self._recv: torch.Tensor | None = None

    def start(self, send: torch.Tensor, recv: torch.Tensor | None = None) -> None:
        if self._reqs:
            raise RuntimeError("RingExchange.start called twice without wait()")
        send = send.contiguous()
        self._recv = torch.empty_like(send) if recv is None else recv
        ops = [
            dist.P2POp(dist.isend, send, self.next, self.group, self.tag),
            dist.P2POp(dist.irecv, self._recv, self.prev, self.group, self.tag),
        ]
        self._reqs = dist.batch_isend_irecv(ops)
        self._send = send  # keep the buffer alive until the send completes

    def wait(self) -> torch.Tensor:
        for r in self._reqs:
            r.wait()
        self._reqs, self._send = [], None
        recv, self._recv = self._recv, None
        return recv


class Ring:
    """The ring of a process group: its size, this rank, and a message stream per tag."""

    def __init__(self, group=None):
        self.group = group
        self.world, self.rank = world_and_rank(group)

    def exchange(self, tag: int, shift: int = 1) -> RingExchange:
        return RingExchange(self.group, tag, shift)
