"""Decomposition cost of the ring on one GPU: one rank's work in a virtual world of N against one
monolithic call, forward and forward+backward.

The ring engine runs unchanged on a VirtualRing, whose exchanges hand over pre-made K/V shards, so the
measurement holds everything but the network: the per-step local calls, the float32 LSE merges, the
float32 dK/dV accumulation. Efficiency = (ring TFLOP/s on the rank's unmasked work) / (monolithic
TFLOP/s of the whole sequence), per direction.

  python scripts/bench_ring.py --virtual 8 --tokens 131072 --layout zigzag --causal --json out.json

--window L (causal sliding window of L keys) and --docs DIST (a packed batch of documents drawn as in
scripts/varlen_balance.py) time the same tokens with those masks, next to the dense causal ring, to
show the work the plan skips.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_common import attn_flops, environment, median_ms, write_json  # noqa: E402

from ringfa3.ops import attention, resolve_backend  # noqa: E402
from ringfa3.parallel.plan import NO_WINDOW, ring_blocks  # noqa: E402
from ringfa3.parallel.ring import ring_attention  # noqa: E402
from ringfa3.parallel.virtual import VirtualRing  # noqa: E402


def rank_flops(world, rank, s_local, layout, causal, b, h, d, window=NO_WINDOW, docs=None) -> float:
    total = 0.0
    for step in range(world):
        for blk in ring_blocks(s_local, world, rank, (rank - step) % world, layout, causal, window, docs):
            total += attn_flops(b, h, blk.q1 - blk.q0, blk.k1 - blk.k0, d, blk.causal)
    return total


def doc_bounds(dist: str, tokens: int, world: int, layout: str):
    import random

    from ringfa3.parallel.varlen import padded_bounds
    from varlen_balance import lengths
    cu = [0]
    for n in lengths(dist, tokens, random.Random(0)):
        cu.append(cu[-1] + n)
    return padded_bounds(cu, world, layout)


def grad_fn(fn, q, k, v, dout):
    return lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), dout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--virtual", type=int, required=True, help="virtual world size N")
    ap.add_argument("--tokens", type=int, default=131072, help="total sequence length")
    ap.add_argument("--headdim", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layout", default="zigzag")
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--window", type=int, default=-1, help="causal sliding window (keys to the left)")
    ap.add_argument("--docs", choices=["lognormal", "long_tail"], help="packed documents instead of one sequence")
    ap.add_argument("--no-mono", action="store_true", help="skip the monolithic comparison")
    ap.add_argument("--fwd-only", action="store_true", help="time the forward only (implies --no-mono)")
    ap.add_argument("--json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_ring.py needs a CUDA GPU")
    n, d, h, b = args.virtual, args.headdim, args.hidden // args.headdim, 1
    s_local = args.tokens // n
    dt = torch.bfloat16
    new = lambda *shape: torch.randn(*shape, device="cuda", dtype=dt)  # noqa: E731

    shards = [new(2, b, s_local, h, d) for _ in range(n)]  # (2, b, s_local, h, d) per virtual rank
    q, dout = new(b, s_local, h, d).requires_grad_(), new(b, s_local, h, d)
    k, v = (shards[args.rank][i].clone().requires_grad_() for i in (0, 1))
    window = (args.window, -1) if args.window >= 0 else NO_WINDOW
    docs = doc_bounds(args.docs, args.tokens, n, args.layout) if args.docs else None
    impl = resolve_backend(args.backend, q, k, v, args.causal, window)
    ring = VirtualRing(n, args.rank, shards)
    scale = d ** -0.5
    ring_out = lambda q, k, v: ring_attention(q, k, v, args.causal, scale, ring, args.layout, impl, window, docs)[0]  # noqa: E731

    f_rank = rank_flops(n, args.rank, s_local, args.layout, args.causal, b, h, d, window, docs)
    res = dict(world=n, tokens=args.tokens, headdim=d, heads=h, layout=args.layout, causal=args.causal,
               window=args.window, docs=args.docs, backend=impl.name, rank_tflop=f_rank / 1e12)
    with torch.no_grad():
        res["ring_fwd_ms"] = median_ms(lambda: ring_out(q, k, v))
        res["ring_fwd"] = f_rank / res["ring_fwd_ms"] / 1e9
    if not args.fwd_only:
        res["ring_fwdbwd_ms"] = median_ms(grad_fn(ring_out, q, k, v, dout))
        res["ring_fwdbwd"] = 3.5 * f_rank / res["ring_fwdbwd_ms"] / 1e9
    del shards, ring, q, k, v, dout
    torch.cuda.empty_cache()
    if args.no_mono or args.fwd_only:
        print(json.dumps(res))
        return write_json(args.json, dict(environment(), **res))

    Q, Dout = new(b, args.tokens, h, d).requires_grad_(), new(b, args.tokens, h, d)
    K, V = new(b, args.tokens, h, d).requires_grad_(), new(b, args.tokens, h, d).requires_grad_()
    mono = lambda q, k, v: attention(q, k, v, causal=args.causal, backend=impl.name)[0]  # noqa: E731
    f_mono = attn_flops(b, h, args.tokens, args.tokens, d, args.causal)
    with torch.no_grad():
        res["mono_fwd"] = f_mono / median_ms(lambda: mono(Q, K, V)) / 1e9
    res["mono_fwdbwd"] = 3.5 * f_mono / median_ms(grad_fn(mono, Q, K, V, Dout)) / 1e9
    res["eff_fwd"] = res["ring_fwd"] / res["mono_fwd"]
    res["eff_fwdbwd"] = res["ring_fwdbwd"] / res["mono_fwdbwd"]
    res = {k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}
    print(json.dumps(res))
    print(f"virtual ring N={n} {args.layout} {'causal' if args.causal else 'full'} window {args.window} docs {args.docs} "
          f"{args.tokens} tokens hd{d}: ring fwd {res['ring_fwd_ms']:.2f} ms, fwd+bwd {res['ring_fwdbwd_ms']:.2f} ms; "
          f"[{impl.name}]: fwd {res['ring_fwd']:.0f} vs {res['mono_fwd']:.0f} TF/s (eff {res['eff_fwd']:.3f}); "
          f"fwd+bwd {res['ring_fwdbwd']:.0f} vs {res['mono_fwdbwd']:.0f} TF/s (eff {res['eff_fwdbwd']:.3f})")
    write_json(args.json, dict(environment(), **res))


if __name__ == "__main__":
    main()
