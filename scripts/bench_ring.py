"""Decomposition cost of the ring on one GPU: one rank's work in a virtual world of N against one
monolithic call, forward and forward+backward.

The ring engine runs unchanged on a VirtualRing, whose exchanges hand over pre-made K/V shards, so the
measurement holds everything but the network: the per-step local calls, the float32 LSE merges, the
float32 dK/dV accumulation. Efficiency = (ring TFLOP/s on the rank's unmasked work) / (monolithic
TFLOP/s of the whole sequence), per direction.

  python scripts/bench_ring.py --virtual 8 --tokens 131072 --layout zigzag --causal --json out.json
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
from ringfa3.parallel.plan import ring_blocks  # noqa: E402
from ringfa3.parallel.ring import ring_attention  # noqa: E402
from ringfa3.parallel.virtual import VirtualRing  # noqa: E402


def rank_flops(world, rank, s_local, layout, causal, b, h, d) -> float:
    total = 0.0
    for step in range(world):
        for blk in ring_blocks(s_local, world, rank, (rank - step) % world, layout, causal):
            total += attn_flops(b, h, blk.q1 - blk.q0, blk.k1 - blk.k0, d, blk.causal)
    return total


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
    impl = resolve_backend(args.backend, q, k, v, args.causal, (-1, -1))
    ring = VirtualRing(n, args.rank, shards)
    scale = d ** -0.5
    ring_out = lambda q, k, v: ring_attention(q, k, v, args.causal, scale, ring, args.layout, impl)[0]  # noqa: E731

    f_rank = rank_flops(n, args.rank, s_local, args.layout, args.causal, b, h, d)
    res = dict(world=n, tokens=args.tokens, headdim=d, heads=h, layout=args.layout, causal=args.causal,
               backend=impl.name, rank_tflop=f_rank / 1e12)
    with torch.no_grad():
        res["ring_fwd"] = f_rank / median_ms(lambda: ring_out(q, k, v)) / 1e9
    res["ring_fwdbwd"] = 3.5 * f_rank / median_ms(grad_fn(ring_out, q, k, v, dout)) / 1e9
    del shards, ring, q, k, v, dout
    torch.cuda.empty_cache()

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
    print(f"virtual ring N={n} {args.layout} {'causal' if args.causal else 'full'} {args.tokens} tokens hd{d} "
          f"[{impl.name}]: fwd {res['ring_fwd']:.0f} vs {res['mono_fwd']:.0f} TF/s (eff {res['eff_fwd']:.3f}); "
          f"fwd+bwd {res['ring_fwdbwd']:.0f} vs {res['mono_fwdbwd']:.0f} TF/s (eff {res['eff_fwdbwd']:.3f})")
    write_json(args.json, dict(environment(), **res))


if __name__ == "__main__":
    main()
