"""Activation offload: tensors saved for the backward (with per-block activation checkpointing, the
blocks' inputs) go to pinned host memory on a side stream and come back one ahead of their use.

    with OffloadActivations():
        loss = model(x)      # saved tensors above min_bytes leave the GPU as they are saved
    loss.backward()           # each comes back while the block after it (in backward order) runs

The copies overlap compute: device-to-host starts on a side stream once the tensor is produced, and
unpacking tensor i starts the host-to-device copy of tensor i - 1 (the next one the backward needs,
unless the backward already took it: tensors saved together, e.g. by one autograd Function, may come
back in another order).
On CPU tensors it does nothing. `max_bytes` caps the host side: once that much is offloaded, later
tensors stay on the GPU (the first blocks' inputs go to the host, the last ones, needed first by the
backward, stay), so GPU and host memory can be filled together.
"""
from __future__ import annotations

import torch
from torch import Tensor


class _Offloaded:
    __slots__ = ("host", "device", "d2h_done", "gpu", "h2d_done", "index")


class OffloadActivations(torch.autograd.graph.saved_tensors_hooks):
    def __init__(self, min_bytes: int = 1 << 20, max_bytes: int = 0):
        self.min_bytes, self.max_bytes, self.offloaded_bytes = min_bytes, max_bytes, 0
        self.stream = torch.cuda.Stream() if torch.cuda.is_available() else None
        self.items: list[_Offloaded] = []
        super().__init__(self._pack, self._unpack)

    def _pack(self, t: Tensor):
        size = t.numel() * t.element_size()
        if not t.is_cuda or size < self.min_bytes:
            return t
        if self.max_bytes and self.offloaded_bytes + size > self.max_bytes:
            return t
        self.offloaded_bytes += size
        e = _Offloaded()
        e.device, e.gpu, e.h2d_done, e.index = t.device, None, None, len(self.items)
        e.host = torch.empty_like(t, device="cpu", pin_memory=True)
        self.stream.wait_stream(torch.cuda.current_stream(t.device))  # t is complete on its stream
        with torch.cuda.stream(self.stream):
            e.host.copy_(t, non_blocking=True)
            e.d2h_done = torch.cuda.Event()
            e.d2h_done.record()
        t.record_stream(self.stream)  # the allocator keeps t's memory until the copy has read it
        self.items.append(e)
        return e

    def _fetch(self, e: _Offloaded) -> None:
        if e.gpu is not None or e.host is None:  # on its way back, or already handed to the backward
            return
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(e.d2h_done)
            e.gpu = torch.empty_like(e.host, device=e.device)
            e.gpu.copy_(e.host, non_blocking=True)
            e.h2d_done = torch.cuda.Event()
            e.h2d_done.record()

    def _unpack(self, e):
        if not isinstance(e, _Offloaded):
            return e
        self._fetch(e)
        if e.index > 0:
            self._fetch(self.items[e.index - 1])  # prefetch: backward runs in reverse order of saving
        current = torch.cuda.current_stream(e.device)
        current.wait_event(e.h2d_done)
        e.gpu.record_stream(current)
        gpu, e.gpu, e.host = e.gpu, None, None  # each saved tensor is unpacked once (no retain_graph)
        return gpu
