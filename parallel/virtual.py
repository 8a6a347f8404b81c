"""A simulated ring for one GPU: one rank of a virtual world of N, whose exchanges hand over pre-made
shards instead of communicating. The ring engine runs unchanged on it, so a benchmark measures the
decomposition cost of the ring (per-step local calls and float32 merges) without the network."""
from __future__ import annotations

import torch


class _VirtualExchange:
    def __init__(self, supply):
        self._supply, self._n, self._sent = supply, 0, None

    def start(self, send: torch.Tensor, recv=None) -> None:
        self._sent = send

    def wait(self) -> torch.Tensor:
        self._n += 1
        return self._supply(self._n, self._sent)


class VirtualRing:
    """Rank `rank` of a virtual world of `world`; kv_shards[r] is rank r's stacked (2, b, s, h_kv, d) K/V."""

    def __init__(self, world: int, rank: int, kv_shards: list[torch.Tensor]):
        self.world, self.rank, self.group = world, rank, None
        self._kv = kv_shards
        self._dkv = None

    def exchange(self, tag: int, shift: int = 1) -> _VirtualExchange:
        if tag in (0, 1):  # K/V: the n-th receive brings rank (rank - n)'s shard
            return _VirtualExchange(lambda n, _: self._kv[(self.rank - n) % self.world])
        return _VirtualExchange(self._partial_dkv)  # dK/dV partials: a float32 buffer of the right shape

    def _partial_dkv(self, n, like):
        if self._dkv is None or self._dkv.shape != like.shape:
            self._dkv = torch.zeros_like(like)
        return self._dkv
