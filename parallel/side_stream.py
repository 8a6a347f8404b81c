"""A second CUDA stream for work the attention kernels need not wait for.

The ring's float32 dK/dV adds read and write the whole traveling buffer: bandwidth-bound work that,
queued behind a compute-bound backward kernel on one stream, adds its full time to every step. On a
side stream it runs beside the next step's kernel instead, and the partial's send is ordered after it
(NCCL orders a collective after the stream current when it is posted). On CPU everything runs inline.
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor

_STREAMS: dict[int, torch.cuda.Stream] = {}


class SideStream:
    def __init__(self, device: torch.device):
        self.side = None
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            self.main = torch.cuda.current_stream(index)
            self.side = _STREAMS.setdefault(index, torch.cuda.Stream(index))

    @contextlib.contextmanager
    def after_main(self, *inputs: Tensor):
        """Work in the block runs on the side stream, after everything queued on the main stream so
        far; `inputs` (made on the main stream) stay allocated until the side stream has used them."""
        if self.side is None:
            yield
            return
        self.side.wait_stream(self.main)
        for t in inputs:
            t.record_stream(self.side)
        with torch.cuda.stream(self.side):
            yield

    def join(self, *outputs: Tensor) -> None:
        """The main stream waits for the side stream's work; `outputs` (made on the side stream) stay
        allocated until the main stream has used them."""
        if self.side is None:
            return
        self.main.wait_stream(self.side)
        for t in outputs:
            t.record_stream(self.main)
