"""The global batch of a step, cut into this rank's micro-batches: dp ranks take different sequences,
cp ranks the same sequences sharded along the sequence in the layout (inputs and labels alike).

Sample indices are global (step * batch_size + i), so the union over dp ranks is the same batch
whatever dp is, and a resumed run continues with exactly the next samples.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ringfa3.parallel import shard

from .config import Config
from .passkey import Passkey
from .tokens import TokenShards


def make_dataset(cfg: Config):
    d = cfg.data
    if d.name == "passkey":
        ds = Passkey(seq_len=d.seq_len, key_len=d.key_len, key_values=d.key_values, filler_vocab=d.filler_vocab,
                     filler_len=d.filler_len, queries=d.train_queries, ramp_steps=d.ramp_steps,
                     min_window=d.min_window, full_prob=d.full_prob, seed=d.seed)
    else:
        ds = TokenShards(d.path, d.seq_len, seed=d.seed)
    if ds.vocab_size > cfg.model.vocab_size:
        raise ValueError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the data's vocabulary "
                         f"({ds.vocab_size}); use model.vocab_size={ds.vocab_size} or more")
    return ds


@dataclass
class Sharder:
    """Where this rank's sequences come from and how its part of each is cut."""

    batch_size: int  # global sequences per step
    grad_accum: int
    dp: int
    dp_rank: int
    cp_group: object
    layout: str
    device: torch.device

    @property
    def per_micro(self) -> int:
        """Sequences per micro-batch on this rank."""
        return self.batch_size // (self.dp * self.grad_accum)

    def indices(self, step: int, micro: int) -> range:
        """Global sample indices of this rank's micro-batch."""
        first = step * self.batch_size + micro * self.dp * self.per_micro + self.dp_rank * self.per_micro
        return range(first, first + self.per_micro)

    def local(self, samples: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """Stack full sequences and keep this cp rank's part. Each (b, s_local) int64."""
        x = torch.stack([s[0] for s in samples])  # (b, s)
        y = torch.stack([s[1] for s in samples])  # (b, s)
        x = shard(x, dim=1, group=self.cp_group, layout=self.layout)
        y = shard(y, dim=1, group=self.cp_group, layout=self.layout)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def train_batch(self, ds, step: int, micro: int) -> tuple[Tensor, Tensor]:
        return self.local([ds.train_sample(i, step) for i in self.indices(step, micro)])
