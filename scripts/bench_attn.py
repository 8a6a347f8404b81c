"""Local attention backends side by side on the FA3 convention, with the FA3 anchors when installed.

batch * seqlen = 16384 tokens, hidden 2048 (nheads = 2048 / headdim), fresh random inputs, median of
many runs. Prints TFLOP/s per backend and the ratio to cuDNN (and to FA3), writes JSON with --json.

  python scripts/bench_attn.py --headdims 128 --json bench/results/attn.json
  python scripts/bench_attn.py --fa3-jax      # also FA3 fwd+bwd through the flash-attn3-jax wheel
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_common import attn_flops, environment, median_ms, write_json  # noqa: E402

TOKENS, HIDDEN = 16384, 2048


def shapes(seqs, headdims):
    for d in headdims:
        for s in seqs:
            for causal in (False, True):
                yield TOKENS // s, s, HIDDEN // d, d, causal


def bench_ours(backends, seqs, headdims, dtype, bwd):
    from ringfa3.ops import BACKENDS, attention, attention_backward
    rows = []
    for b, s, h, d, causal in shapes(seqs, headdims):
        q, k, v, dout = (torch.randn(b, s, h, d, device="cuda", dtype=dtype) for _ in range(4))
        f = attn_flops(b, h, s, s, d, causal)
        row = dict(seq=s, headdim=d, causal=causal, batch=b, heads=h)
        for name in backends:
            if name not in BACKENDS or BACKENDS[name].unsupported(q, k, v, causal, (-1, -1)):
                continue
            out, lse = attention(q, k, v, causal=causal, backend=name)
            row[f"{name}_fwd"] = round(f / median_ms(lambda: attention(q, k, v, causal=causal, backend=name)) / 1e9, 1)
            if bwd:
                ms = median_ms(lambda: attention_backward(dout, q, k, v, out, lse, causal=causal, backend=name))
                row[f"{name}_bwd"] = round(2.5 * f / ms / 1e9, 1)
        row.update(fa3_fwd(q, k, v, causal, f))
        rows.append(row)
        print(json.dumps(row), flush=True)
        del q, k, v, dout
        torch.cuda.empty_cache()
    return rows


def fa3_fwd(q, k, v, causal, flops) -> dict:
    """FA3 forward through the fa3-fwd wheel (torch op), if it is installed."""
    try:
        import fa3_fwd_interface as fa3
    except ImportError:
        return {}
    ms = median_ms(lambda: fa3.flash_attn_func(q, k, v, causal=causal))
    return {"fa3_fwd": round(flops / ms / 1e9, 1)}


def jax_worker(seqs, headdims):
    """FA3 fwd and fwd+bwd through flash-attn3-jax (hd128 only); run in its own process."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax
    import jax.numpy as jnp
    from flash_attn3_jax import flash_mha

    def timed(fn, *args, n=30):
        jax.block_until_ready(fn(*args))
        samples = []
        for _ in range(5):  # n queued calls per sample keeps host dispatch off the clock
            t = time.perf_counter()
            for _ in range(n):
                r = fn(*args)
            jax.block_until_ready(r)
            samples.append((time.perf_counter() - t) / n)
        return sorted(samples)[len(samples) // 2] * 1e3

    for b, s, h, d, causal in shapes(seqs, [hd for hd in headdims if hd == 128]):
        keys = jax.random.split(jax.random.PRNGKey(s + causal), 3)
        q, k, v = (jax.random.normal(kk, (b, s, h, d), dtype=jnp.bfloat16) for kk in keys)
        fwd = jax.jit(lambda q, k, v: flash_mha(q, k, v, is_causal=causal))
        grad = jax.jit(jax.grad(lambda q, k, v: (flash_mha(q, k, v, is_causal=causal).astype(jnp.float32) ** 2).sum(),
                                argnums=(0, 1, 2)))
        f = attn_flops(b, h, s, s, d, causal)
        ms_f, ms_fb = timed(fwd, q, k, v), timed(grad, q, k, v)
        print("JAXROW " + json.dumps(dict(seq=s, headdim=d, causal=causal, fa3jax_fwd=round(f / ms_f / 1e9, 1),
                                          fa3jax_bwd=round(2.5 * f / (ms_fb - ms_f) / 1e9, 1))), flush=True)


def fa3_jax_rows(seqs, headdims) -> list[dict]:
    cmd = [sys.executable, __file__, "--jax-worker", "--seqs", *map(str, seqs), "--headdims", *map(str, headdims)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false"))
    rows = [json.loads(line[7:]) for line in res.stdout.splitlines() if line.startswith("JAXROW ")]
    if res.returncode != 0:
        print("fa3 jax anchor failed:", res.stderr[-600:])
    return rows


def table(rows, backends):
    cols = [c for c in [f"{n}_{p}" for n in backends for p in ("fwd", "bwd")] + ["fa3_fwd", "fa3jax_fwd", "fa3jax_bwd"]
            if any(c in r for r in rows)]
    print("\nTFLOP/s (ratio to cudnn of the same direction)")
    print(f"{'hd':>4} {'seq':>6} {'mask':>6} " + " ".join(f"{c:>18}" for c in cols))
    for r in rows:
        cells = []
        for c in cols:
            val = r.get(c)
            base = r.get("cudnn_" + c.split("_")[-1])
            cells.append("-" if val is None else f"{val:7.1f} ({val / base:4.2f})" if base else f"{val:7.1f}")
        print(f"{r['headdim']:>4} {r['seq']:>6} {'causal' if r['causal'] else 'full':>6} " + " ".join(f"{c:>18}" for c in cells))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seqs", type=int, nargs="+", default=[1024, 4096, 8192, 16384])
    ap.add_argument("--headdims", type=int, nargs="+", default=[128])
    ap.add_argument("--backends", nargs="+", default=["sm90", "cudnn", "flash"])
    ap.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    ap.add_argument("--no-bwd", action="store_true")
    ap.add_argument("--fa3-jax", action="store_true", help="also run the flash-attn3-jax anchor (own process)")
    ap.add_argument("--jax-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.jax_worker:
        return jax_worker(args.seqs, args.headdims)
    if not torch.cuda.is_available():
        sys.exit("bench_attn.py needs a CUDA GPU")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    rows = bench_ours(args.backends, args.seqs, args.headdims, dtype, not args.no_bwd)
    if args.fa3_jax:
        jax = {(r["seq"], r["headdim"], r["causal"]): r for r in fa3_jax_rows(args.seqs, args.headdims)}
        for r in rows:
            r.update({k: v for k, v in jax.get((r["seq"], r["headdim"], r["causal"]), {}).items() if k.startswith("fa3jax")})
    table(rows, args.backends)
    write_json(args.json, dict(environment(), dtype=args.dtype, tokens=TOKENS, hidden=HIDDEN, rows=rows))


if __name__ == "__main__":
    main()
