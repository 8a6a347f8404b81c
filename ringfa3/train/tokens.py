"""Memory-mapped token shards made by scripts/prepare_tokens.py: DIR/{train,val}.bin + DIR/meta.json.

meta.json: {"dtype": "uint16" | "uint32", "vocab_size": int, "tokenizer": str}. A training sample is
a window of seq_len + 1 tokens at a position drawn from (seed, index); eval windows are fixed,
evenly spaced over val.bin. Nothing is read until a window is sliced (np.memmap).
"""
from __future__ import annotations

import json
import os

import torch
from torch import Tensor

from .passkey import _generator


class TokenShards:
    def __init__(self, path: str, seq_len: int, seed: int = 0):
        import numpy as np  # only this dataset needs it
        meta_path = os.path.join(path, "meta.json")
        if not os.path.isdir(path) or not os.path.exists(meta_path):
            raise ValueError(f"data.path={path!r} does not exist or has no meta.json; make it with "
                             f"`python scripts/prepare_tokens.py --out DIR FILES...` and set data.path=DIR")
        with open(meta_path) as f:
            meta = json.load(f)
        self.vocab_size = int(meta["vocab_size"])
        self.seq_len, self.seed = seq_len, seed
        self.train = np.memmap(os.path.join(path, "train.bin"), dtype=meta["dtype"], mode="r")
        val = os.path.join(path, "val.bin")
        self.val = np.memmap(val, dtype=meta["dtype"], mode="r") if os.path.exists(val) else self.train
        for name, arr in (("train.bin", self.train), ("val.bin", self.val)):
            if len(arr) < seq_len + 1:
                raise ValueError(f"data.path={path!r}: {name} has {len(arr)} tokens, fewer than data.seq_len+1="
                                 f"{seq_len + 1}; use a smaller data.seq_len or more text")

    def _window(self, arr, start: int) -> tuple[Tensor, Tensor]:
        w = torch.from_numpy(arr[start: start + self.seq_len + 1].astype("int64"))
        return w[:-1], w[1:]  # (seq_len,) inputs, (seq_len,) labels

    def train_sample(self, index: int, step: int) -> tuple[Tensor, Tensor]:
        g = _generator(self.seed, 1, index)
        start = int(torch.randint(0, len(self.train) - self.seq_len, (1,), generator=g))
        return self._window(self.train, start)

    def eval_sample(self, index: int, count: int) -> tuple[Tensor, Tensor]:
        """Window `index` of `count` evenly spaced windows over val.bin."""
        span = len(self.val) - self.seq_len - 1
        return self._window(self.val, span * index // max(1, count - 1) if count > 1 else 0)
