"""FA2's varlen kernel emulated on CPU with the reference backend, segment by segment, with its
conventions: windows aligned bottom-right per segment, lse = +inf on rows without keys, a window at
least max_k wide taken as unbounded. Lets the varlen path of the batched block entry run on CPU."""
from __future__ import annotations

import math

import torch

from ringfa3.ops import reference
from ringfa3.ops.segments import varlen_backward, varlen_forward

INF = math.inf


def call_segments(call):
    """[(q0, q1, k0, k1)] of a VarlenCall and its (left, right) as the kernel applies it."""
    left = -1 if call.left >= call.max_k else call.left
    right = -1 if call.right >= call.max_k else call.right
    cq, ck = call.cu_q.tolist(), call.cu_k.tolist()
    return [(cq[i], cq[i + 1], ck[i], ck[i + 1]) for i in range(len(cq) - 1)], (left, right)


def emulated_fwd(q, k, v, call, scale):
    out, lse = torch.zeros_like(q), torch.full((q.shape[1], q.shape[0]), INF)  # rows without keys: 0, +inf
    segs, window = call_segments(call)
    for a, b, c, d in segs:
        if b > a and d > c:
            o, lg = reference.forward(q[None, a:b], k[None, c:d], v[None, c:d], False, scale, window, False)
            out[a:b], lse[:, a:b] = o[0], torch.where(lg[0] == -INF, INF, lg[0])
    return out, lse


def emulated_bwd(dout, q, k, v, out, lse, call, scale):
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    segs, window = call_segments(call)
    for a, b, c, d in segs:
        if b > a and d > c:
            g = reference.backward(dout[None, a:b], q[None, a:b], k[None, c:d], v[None, c:d], out[None, a:b],
                                   lse[None, :, a:b], False, scale, window, False)
            dq[a:b], dk[c:d], dv[c:d] = g[0][0], g[1][0], g[2][0]
    return dq, dk, dv


class EmulatedVarlen:
    """The reference backend with a batched entry that runs through the varlen path."""
    name = "emulated_varlen"
    forward, backward = staticmethod(reference.forward), staticmethod(reference.backward)

    def unsupported(self, q, k, v, causal, window):
        return None

    def forward_blocks(self, q, k, v, blocks, scale, out_acc, lse_acc):
        varlen_forward(emulated_fwd, q, k, v, blocks, scale, out_acc, lse_acc)

    def backward_blocks(self, dout, q, k, v, out, lse, blocks, scale, dq_acc, deterministic=False):
        return varlen_backward(emulated_bwd, dout, q, k, v, out, lse, blocks, scale, dq_acc)
