"""The passkey task: a key planted at a random depth of a long filler text, asked for later.

Token ids (the filler is one fixed "sentence" repeated, as in the passkey test of Mohtashami & Jaggi
2023; the same KEY marker introduces the key and asks for it):

    BOS filler... KEY k1 k2 k3 k4 filler... KEY k1 k2 k3 k4 filler... KEY k1 k2 k3 k4 | filler...

Each key position j has its own `key_values` symbols, so symbol j is one content lookup; what is
tested is reaching back across the whole context. Only the answers (k1..k4 after a question's KEY)
are labelled (-100 elsewhere).

Training sequences use a length curriculum inside the fixed seq_len: the last question ends at a
window `t`, drawn up to a maximum that grows from `min_window` to seq_len over `ramp_steps`, and then
is the full length with probability `full_prob`. Tokens after t are filler without labels, which the
causal model never sees from a question. Short windows give the retrieval gradient a strong signal
(attention spread over t tokens, not seq_len); long ones teach it at full length. `queries` questions
per sequence give more labels per token. Eval sequences have one question at the very end, with the
key at a fixed depth (0 = start of the context, 1 = just before the question). Every sample is a
pure function of (seed, index, step), so any rank can make any sample, the same in every run.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

BOS, KEY = 1, 2
FIRST_KEY_ID = 3


def _generator(seed: int, stream: int, index: int) -> torch.Generator:
    """A generator for sample `index` of `stream`, the same in every process (no Python hash())."""
    return torch.Generator().manual_seed((seed * 0x9E3779B1 + stream * 0x85EBCA77 + index) % (1 << 62))


@dataclass(frozen=True)
class Passkey:
    seq_len: int
    key_len: int = 4
    key_values: int = 10
    filler_vocab: int = 64
    filler_len: int = 12
    queries: int = 4
    ramp_steps: int = 0
    min_window: int = 64
    full_prob: float = 0.5
    seed: int = 0

    @property
    def vocab_size(self) -> int:
        return FIRST_KEY_ID + self.key_len * self.key_values + self.filler_vocab

    @property
    def min_seq_len(self) -> int:
        return (self.queries + 1) * (self.key_len + 1) + 2

    def _filler(self) -> Tensor:
        """The fixed filler sentence, repeated to seq_len + 1 tokens. (seq_len + 1,) int64."""
        first = FIRST_KEY_ID + self.key_len * self.key_values
        g = _generator(self.seed, 0, 0)
        sentence = torch.randint(first, first + self.filler_vocab, (self.filler_len,), generator=g)
        return sentence.repeat(self.seq_len // self.filler_len + 2)[: self.seq_len + 1]

    def _key(self, g: torch.Generator) -> Tensor:
        """A random key; symbol j is drawn from slot j's own ids. (key_len,) int64."""
        digits = torch.randint(0, self.key_values, (self.key_len,), generator=g)
        return FIRST_KEY_ID + self.key_values * torch.arange(self.key_len) + digits

    def _build(self, key: Tensor, key_at: int, asks: list[int]) -> tuple[Tensor, Tensor]:
        toks = self._filler()
        toks[0] = BOS
        n = self.key_len
        for at in [key_at] + asks:
            toks[at] = KEY
            toks[at + 1: at + 1 + n] = key
        inputs, targets = toks[:-1], toks[1:]  # (seq_len,) each: position i predicts token i + 1
        labels = torch.full_like(targets, -100)
        for a in asks:
            labels[a: a + n] = targets[a: a + n]  # KEY predicts k1, k1 predicts k2, ...
        return inputs, labels

    def max_window(self, step: int) -> int:
        """Longest window (tokens up to the end of the last question) at training `step`."""
        if step >= self.ramp_steps:
            return self.seq_len
        lo = min(self.min_window, self.seq_len)
        return lo + (self.seq_len - lo) * step // self.ramp_steps

    def train_sample(self, index: int, step: int) -> tuple[Tensor, Tensor]:
        """(inputs, labels), each (seq_len,) int64, for global sample `index` at training `step`."""
        g = _generator(self.seed, 1, index)
        hi = max(self.max_window(step), self.min_seq_len)
        if step >= self.ramp_steps and torch.rand((), generator=g).item() < self.full_prob:
            t = hi
        else:
            t = int(torch.randint(self.min_seq_len, hi + 1, (1,), generator=g))
        slot = self.key_len + 1
        last = (t - 1) // slot - 1  # slots are counted after BOS; the last question fills the last one
        key_slot = int(torch.randint(0, last - self.queries + 1, (1,), generator=g))
        between = torch.randperm(last - key_slot - 1, generator=g)[: self.queries - 1] + key_slot + 1
        asks = sorted(between.tolist()) + [last]
        return self._build(self._key(g), 1 + key_slot * slot, [1 + s * slot for s in asks])

    def eval_sample(self, index: int, depth: float) -> tuple[Tensor, Tensor]:
        """One question at the very end; the key at `depth` (0..1) of the context before it."""
        g = _generator(self.seed, 2, index)
        ask = self.seq_len - self.key_len  # KEY + key fill the last key_len + 1 inputs
        room = ask - (self.key_len + 1) - 1
        return self._build(self._key(g), 1 + int(round(depth * room)), [ask])
