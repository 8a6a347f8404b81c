"""What a ring step costs against one long call, on one GPU with the sm90 backend.

The ring's steps at rank 0 of the zigzag ring in bench_ring.py are full-attention merges of --queries
queries against --block keys each. This script times five things, in rotated rounds:
- those steps, merged one launch per block into one accumulator;
- the same launches without the merge (each writes a bf16 output);
- the same queries against all the steps' keys in one call;
- one call of --block queries against --block keys;
- the ring benchmark's monolithic call (--mono tokens, causal).
So a gap between the ring and the monolithic call splits into the merge's cost, the launches' and
tiles' costs (steps against one call) and the mask's own rate (full against causal).

    python scripts/ring_step_cost.py --queries 8192 --block 16384 --steps 7 --mono 131072 --json out.json
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import attn_flops, environment, median_ms, write_json  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=8192)
    ap.add_argument("--block", type=int, default=16384, help="keys per step")
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--mono", type=int, default=131072, help="tokens of the causal monolithic call")
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--headdim", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    from ringfa3.ops import sm90
    be = sm90.BACKEND
    if be is None:
        sys.exit("sm90 backend unavailable")
    h, d, s_q, blk, n = args.heads, args.headdim, args.queries, args.block, args.steps
    new = lambda s: torch.randn(1, s, h, d, device="cuda", dtype=torch.bfloat16)  # noqa: E731  (1, s, h, d)
    q, k, v = new(s_q), new(blk * n), new(blk * n)
    out_acc = torch.empty(1, s_q, h, d, device="cuda")                # (1, s_q, h, d) fp32
    lse_acc = torch.empty(1, h, s_q, device="cuda")                   # (1, h, s_q) fp32
    qm, km, vm = new(args.mono), new(args.mono), new(args.mono)
    blocks = [(k[:, i * blk:(i + 1) * blk], v[:, i * blk:(i + 1) * blk]) for i in range(n)]   # views, (1, blk, h, d)

    def steps():
        out_acc.zero_()
        lse_acc.fill_(-math.inf)
        for kb, vb in blocks:
            be.forward_merge(q, kb, vb, False, None, (-1, -1), out_acc, lse_acc)

    def steps_plain():   # the same launches without the merge: each writes its own bf16 output
        for kb, vb in blocks:
            be.forward(q, kb, vb, False)

    cases = {
        "steps": (steps, attn_flops(1, h, s_q, blk * n, d, False)),
        "steps_plain": (steps_plain, attn_flops(1, h, s_q, blk * n, d, False)),
        "one_call": (lambda: be.forward(q, k, v, False), attn_flops(1, h, s_q, blk * n, d, False)),
        "block_square": (lambda: be.forward(k[:, :blk], k[:, :blk], v[:, :blk], False), attn_flops(1, h, blk, blk, d, False)),
        "mono_causal": (lambda: be.forward(qm, km, vm, True), attn_flops(1, h, args.mono, args.mono, d, True)),
    }
    names = list(cases)
    rounds = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn, flops = cases[name]
            rounds[name].append(round(flops / median_ms(fn) / 1e9, 1))
    res = dict(environment(), queries=s_q, block=blk, steps=n, mono=args.mono, heads=h, headdim=d,
               tflops={name: statistics.median(x) for name, x in rounds.items()}, rounds=rounds)
    t = res["tflops"]
    print(f"TF/s: steps {t['steps']:.0f}, without the merge {t['steps_plain']:.0f}, one call {t['one_call']:.0f} (steps / one call "
          f"{t['steps'] / t['one_call']:.3f}), {blk} x {blk} full {t['block_square']:.0f}, "
          f"causal {args.mono} {t['mono_causal']:.0f} (steps / it {t['steps'] / t['mono_causal']:.3f})")
    write_json(args.json, res)


if __name__ == "__main__":
    main()
