"""Work balance of packed variable-length batches across the ring's ranks, per layout.

Work of a rank = unmasked (query, key) pairs over all ring steps (causal, per document). The imbalance
factor is max over ranks / mean; the slowest rank sets the step time, so 1.0 is ideal.

  python scripts/varlen_balance.py --tokens 131072 --world 8
"""
from __future__ import annotations

import argparse
import json
import random

from ringfa3.parallel.layout import LAYOUTS, global_positions
from ringfa3.parallel.plan import visible_ranges
from ringfa3.parallel.varlen import padded_bounds


def lengths(dist: str, total: int, rng: random.Random) -> list[int]:
    """Document lengths packed into `total` tokens (the last one cut to fit)."""
    out = []
    while sum(out) < total:
        if dist == "lognormal":  # pretraining-like: median ~ 1k tokens, long tail
            n = int(rng.lognormvariate(7.0, 1.2))
        elif dist == "long_tail":  # mostly short chat-like documents, a few book-length ones
            n = rng.randint(20_000, 60_000) if rng.random() < 0.03 else rng.randint(50, 800)
        else:  # "single": one document filling the batch
            n = total
        out.append(max(1, min(n, total - sum(out))))
    return out


def rank_work(bounds, world, layout) -> list[int]:
    s_local = bounds[-1] // world
    pos = [global_positions(bounds[-1], world, r, layout).tolist() for r in range(world)]
    return [sum(hi - lo for src in range(world) for lo, hi in visible_ranges(pos[r], pos[src], True, (-1, -1), bounds))
            for r in range(world)] if s_local else [0] * world


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=131072)
    ap.add_argument("--world", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = []
    for dist in ("lognormal", "long_tail", "single"):
        docs = lengths(dist, args.tokens, random.Random(args.seed))
        cu = [0]
        for n in docs:
            cu.append(cu[-1] + n)
        for layout in LAYOUTS:
            work = rank_work(padded_bounds(cu, args.world, layout), args.world, layout)
            mean = sum(work) / len(work)
            rows.append(dict(dist=dist, docs=len(docs), longest=max(docs), layout=layout,
                             imbalance=round(max(work) / mean, 3)))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nimbalance (max/mean rank work), {args.tokens} tokens, world {args.world}, causal per document")
    for r in rows:
        print(f"{r['dist']:>10} ({r['docs']:>4} docs, longest {r['longest']:>6}) {r['layout']:>10}: {r['imbalance']:.3f}")


if __name__ == "__main__":
    main()
