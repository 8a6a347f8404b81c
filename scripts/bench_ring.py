"""Decomposition cost of the ring on one GPU: one rank's work in a virtual world of N against one
monolithic call, forward and forward+backward.

The ring engine runs unchanged on a VirtualRing, whose exchanges hand over pre-made K/V shards, so the
measurement holds everything but the network: the per-step local calls, the float32 LSE merges, the
float32 dK/dV accumulation. Efficiency = (ring TFLOP/s on the rank's unmasked work) / (monolithic
TFLOP/s of the whole sequence), per direction.

  python scripts/bench_ring.py --virtual 8 --tokens 131072 --layout zigzag --causal --json out.json

Launched by torchrun instead (no --virtual), the same measurement runs on the real ring of the job's
ranks (NCCL on GPUs, gloo on CPU for a smoke test): every rank times its steps with a fixed number of
calls (the ring's collectives need the same count everywhere), the slowest rank's time counts, and
rank 0 times the monolithic call alone on its device (issue #9, item 3):

  torchrun --nproc_per_node 8 scripts/bench_ring.py --tokens 1048576 --layout zigzag --causal --json out.json

There --tokens and --masks sweep lengths and masks in one process; --mono-work rank times the anchor
on the rank's work (T/sqrt(N) tokens) instead of the whole sequence; --torch-cp times torch's
context_parallel beside it; --trace writes a profiler trace per rank and reports the overlap
(scripts/ring_overlap.py).

--window L (causal sliding window of L keys) and --docs DIST (a packed batch of documents drawn as in
scripts/varlen_balance.py) time the same tokens with those masks, next to the dense causal ring, to
show the work the plan skips. --loop hides the backend's batched block entry (one call per block, the
old path); --split splits varlen launches by segment length (segments.split_by_size, off by default).
--suite masks runs, in one process (one warm-up of the compiled merge), the dense causal ring with its
monolithic anchor and then the window and packed-document rows on the same tokens, and writes them as
one JSON list (rows under "rows").
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(__file__))
from bench_common import attn_flops, environment, kernel_times, median_ms, write_json  # noqa: E402
from ring_overlap import trace_overlap  # noqa: E402
from torch_cp_anchor import torch_cp_times  # noqa: E402

from ringfa3.ops import attention, resolve_backend, segments  # noqa: E402
from ringfa3.ops.masks import effective_window  # noqa: E402
from ringfa3.parallel.comm import Ring  # noqa: E402
from ringfa3.parallel.plan import NO_WINDOW, ring_blocks  # noqa: E402
from ringfa3.parallel.ring import ring_attention  # noqa: E402
from ringfa3.parallel.shutdown import exit_rank  # noqa: E402
from ringfa3.parallel.virtual import VirtualRing  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def real_ring() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def wall_ms(fn, warmup: int, iters: int) -> float:
    """Mean time of fn() over a fixed number of calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1e3 / iters


def collective_ms(fn, warmup: int = 2, iters: int = 5) -> float:
    """wall_ms of the slowest rank (fn holds collectives, so every rank must call it equally often;
    do_bench picks its own count per rank)."""
    for _ in range(warmup):
        fn()
    dist.barrier()
    ms = torch.tensor([wall_ms(fn, 0, iters)], device=DEVICE)
    dist.all_reduce(ms, op=dist.ReduceOp.MAX)
    return float(ms)


def block_pairs(blk) -> int:
    """Unmasked (row, key) pairs of a block (bottom-right causal / window inside it)."""
    sq, sk = blk.q1 - blk.q0, blk.k1 - blk.k0
    left, right = effective_window(blk.causal, blk.window)
    diag = torch.arange(sq) + (sk - sq)
    lo = (diag - left).clamp(min=0) if left >= 0 else torch.zeros_like(diag)
    hi = (diag + right).clamp(max=sk - 1) if right >= 0 else torch.full_like(diag, sk - 1)
    return int((hi - lo + 1).clamp(min=0).sum())


def rank_flops(world, rank, s_local, layout, causal, b, h, d, window=NO_WINDOW, docs=None) -> float:
    """Forward FLOPs of the rank's unmasked pairs over all steps (4 * d per pair and head)."""
    total = 0
    for step in range(world):
        for blk in ring_blocks(s_local, world, rank, (rank - step) % world, layout, causal, window, docs):
            total += block_pairs(blk)
    return 4.0 * b * h * d * total


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


class LoopOnly:
    """A backend without its batched block entry: the ring then makes one call per block."""

    def __init__(self, impl):
        self.impl, self.name = impl, impl.name + "(loop)"

    def __getattr__(self, attr):
        if attr in ("forward_blocks", "backward_blocks"):
            raise AttributeError(attr)
        return getattr(self.impl, attr)


def run(args) -> dict:
    """One configuration: the ring's times (and the monolithic anchor unless --no-mono)."""
    real = real_ring()
    n = dist.get_world_size() if real else args.virtual
    rank = dist.get_rank() if real else args.rank
    d, h, b = args.headdim, args.hidden // args.headdim, 1
    s_local = args.tokens // n
    dt = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    new = lambda *shape: torch.randn(*shape, device=DEVICE, dtype=dt)  # noqa: E731

    # (2, b, s_local, h, d) per rank: all of them for a virtual ring, this rank's own for a real one
    shards = [new(2, b, s_local, h, d) for _ in range(1 if real else n)]
    q, dout = new(b, s_local, h, d).requires_grad_(), new(b, s_local, h, d)
    k, v = (shards[0 if real else rank][i].clone().requires_grad_() for i in (0, 1))
    window = (args.window, -1) if args.window >= 0 else NO_WINDOW
    docs = doc_bounds(args.docs, args.tokens, n, args.layout) if args.docs else None
    impl = resolve_backend(args.backend, q, k, v, args.causal, window)
    if args.loop:
        impl = LoopOnly(impl)
    segments.SPLIT_BY_SIZE = args.split
    segments._CACHE.clear()
    ring = Ring(None) if real else VirtualRing(n, rank, shards)
    scale = d ** -0.5
    time_ms = (lambda fn: collective_ms(fn, args.warmup, args.iters)) if real else median_ms
    ring_out = lambda q, k, v: ring_attention(q, k, v, args.causal, scale, ring, args.layout, impl, window, docs)[0]  # noqa: E731

    f_rank = rank_flops(n, rank, s_local, args.layout, args.causal, b, h, d, window, docs)
    res = dict(world=n, ring="real" if real else "virtual", tokens=args.tokens, headdim=d, heads=h,
               layout=args.layout, causal=args.causal,
               window=args.window, docs=args.docs, backend=impl.name, split_by_size=args.split,
               rank_tflop=f_rank / 1e12,
               docs_count=len(docs) - 1 if docs else None)
    with torch.no_grad():
        res["ring_fwd_ms"] = time_ms(lambda: ring_out(q, k, v))
        res["ring_fwd"] = f_rank / res["ring_fwd_ms"] / 1e9
    if not args.fwd_only:
        res["ring_fwdbwd_ms"] = time_ms(grad_fn(ring_out, q, k, v, dout))
        res["ring_fwdbwd"] = 3.5 * f_rank / res["ring_fwdbwd_ms"] / 1e9
    if args.trace and not real:   # per-kernel device time of one fwd+bwd of the virtual rank
        res["kernels_us"] = kernel_times(grad_fn(ring_out, q, k, v, dout))
    if args.trace and real:
        mine = trace_overlap(grad_fn(ring_out, q, k, v, dout), f"{args.trace}.rank{rank}.json", 2 * n)
        res["overlap_fwdbwd"] = [None] * n
        dist.all_gather_object(res["overlap_fwdbwd"], mine)
    del shards, ring, q, k, v, dout
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    if args.torch_cp and real:
        try:
            t = torch_cp_times(args.tokens, h, d, args.causal, time_ms)
            f_gpu = attn_flops(b, h, args.tokens, args.tokens, d, args.causal) / n
            res.update(torch_cp_fwd_ms=t["fwd_ms"], torch_cp_fwd=f_gpu / t["fwd_ms"] / 1e9,
                       torch_cp_fwdbwd_ms=t["fwdbwd_ms"], torch_cp_fwdbwd=3.5 * f_gpu / t["fwdbwd_ms"] / 1e9)
        except Exception as e:  # an anchor that fails costs its row, not the run
            res["torch_cp_error"] = f"{type(e).__name__}: {e}"[:300]
        torch.cuda.empty_cache()
    if args.no_mono or rank != 0:   # the monolithic anchor: one device, rank 0 alone
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}

    # The anchor's length: the whole sequence, or (--mono-work rank) the one whose causal or full work
    # equals this rank's, T / sqrt(N) rounded to 128, the single-GPU kernel on the same per-rank work.
    t_mono = args.tokens if args.mono_work == "whole" else max(128, round(args.tokens / n ** 0.5 / 128) * 128)
    Q, Dout = new(b, t_mono, h, d).requires_grad_(), new(b, t_mono, h, d)
    K, V = new(b, t_mono, h, d).requires_grad_(), new(b, t_mono, h, d).requires_grad_()
    mono_name = impl.impl.name if args.loop else impl.name
    mono = lambda q, k, v: attention(q, k, v, causal=args.causal, backend=mono_name)[0]  # noqa: E731
    f_mono = attn_flops(b, h, t_mono, t_mono, d, args.causal)
    res["mono_tokens"] = t_mono
    mono_ms = (lambda fn: wall_ms(fn, args.warmup, args.iters)) if real else median_ms
    with torch.no_grad():
        res["mono_fwd_ms"] = mono_ms(lambda: mono(Q, K, V))
    res["mono_fwd"] = f_mono / res["mono_fwd_ms"] / 1e9
    res["eff_fwd"] = res["ring_fwd"] / res["mono_fwd"]
    if not args.fwd_only:
        res["mono_fwdbwd_ms"] = mono_ms(grad_fn(mono, Q, K, V, Dout))
        res["mono_fwdbwd"] = 3.5 * f_mono / res["mono_fwdbwd_ms"] / 1e9
        res["eff_fwdbwd"] = res["ring_fwdbwd"] / res["mono_fwdbwd"]
    del Q, K, V, Dout
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}


def describe(r: dict) -> str:
    mask = (f"docs {r['docs']} ({r['docs_count']}){' split' if r['split_by_size'] else ''}" if r["docs"] else
            f"window {r['window']}" if r["window"] >= 0 else "causal" if r["causal"] else "full")
    line = (f"N={r['world']} {r['layout']:>10} {mask:<24} [{r['backend']}] rank work {r['rank_tflop']:.2f} TFLOP: "
            f"ring fwd {r['ring_fwd_ms']:.2f} ms")
    if "ring_fwdbwd_ms" in r:
        line += f", fwd+bwd {r['ring_fwdbwd_ms']:.2f} ms"
    if "eff_fwd" in r:
        line += f"; fwd {r['ring_fwd']:.0f} vs mono {r['mono_fwd']:.0f} TF/s (eff {r['eff_fwd']:.3f})"
    if "eff_fwdbwd" in r:
        line += f", fwd+bwd {r['ring_fwdbwd']:.0f} vs {r['mono_fwdbwd']:.0f} TF/s (eff {r['eff_fwdbwd']:.3f})"
    if "torch_cp_fwdbwd" in r:
        line += f"; torch context_parallel fwd {r['torch_cp_fwd']:.0f}, fwd+bwd {r['torch_cp_fwdbwd']:.0f} TF/s"
    if "torch_cp_error" in r:
        line += f"; torch context_parallel failed: {r['torch_cp_error']}"
    for rank, o in enumerate(r.get("overlap_fwdbwd") or []):
        line += (f"\n  rank {rank} trace: window {o['window_ms']} ms, compute {o['compute_ms']} ms, nccl {o['nccl_ms']} ms "
                 f"({o['nccl_concurrent_frac']:.0%} concurrent with compute), exposed {o['exposed_ms']} ms "
                 f"({o['exposed_per_step_ms']} ms per step)")
    return line


def suite_masks(args) -> list[dict]:
    """Dense causal zigzag with its monolithic anchor, then windows and packed documents on the same
    tokens (their time against the dense row is the skipped work)."""
    rows = []

    def case(**kw):
        a = copy.copy(args)
        a.causal, a.no_mono, a.fwd_only, a.loop, a.window, a.docs = True, True, False, False, -1, None
        a.split = False
        for key, val in kw.items():
            setattr(a, key, val)
        try:
            rows.append(run(a))
            print(describe(rows[-1]), flush=True)
        except Exception as e:  # one broken row must not cost the others (device time is scarce)
            rows.append(dict(kw, error=f"{type(e).__name__}: {e}"))
            print(f"FAILED {kw}: {rows[-1]['error']}", flush=True)
            torch.cuda.empty_cache()

    case(layout="zigzag", no_mono=False)
    for layout in ("zigzag", "contiguous"):
        case(layout=layout, window=args.suite_window)
    for dist in ("lognormal", "long_tail"):
        case(layout="stripe", docs=dist)
        case(layout="stripe", docs=dist, split=True)  # short and long documents in separate launches
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--virtual", type=int, help="virtual world size N (omit under torchrun: the real ring)")
    ap.add_argument("--tokens", type=int, nargs="+", default=[131072], help="total sequence length(s)")
    ap.add_argument("--headdim", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layout", default="zigzag")
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--masks", nargs="+", choices=["causal", "full"], help="sweep these masks (with --tokens)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--window", type=int, default=-1, help="causal sliding window (keys to the left)")
    ap.add_argument("--docs", choices=["lognormal", "long_tail"], help="packed documents instead of one sequence")
    ap.add_argument("--loop", action="store_true", help="one local call per block (hide the batched entry)")
    ap.add_argument("--split", action="store_true",
                    help="split varlen calls by segment length (segments.split_by_size)")
    ap.add_argument("--no-mono", action="store_true", help="skip the monolithic comparison")
    ap.add_argument("--fwd-only", action="store_true", help="time the forward only (ring and monolithic)")
    ap.add_argument("--suite", choices=["masks"], help="run a set of configurations in one process")
    ap.add_argument("--suite-window", type=int, default=4096, help="the window of the masks suite")
    ap.add_argument("--mono-work", choices=["whole", "rank"], default="whole",
                    help="monolithic anchor on the whole sequence, or on T/sqrt(N) tokens (the rank's work)")
    ap.add_argument("--warmup", type=int, default=2, help="real ring: untimed calls per measurement")
    ap.add_argument("--iters", type=int, default=5, help="real ring: timed calls per measurement")
    ap.add_argument("--trace", help="real ring: profile one fwd+bwd into TRACE.rankR.json, report the overlap; "
                    "virtual: device time per kernel of one fwd+bwd (in the JSON)")
    ap.add_argument("--torch-cp", action="store_true", help="real ring: time torch's context_parallel SDPA too")
    ap.add_argument("--json")
    args = ap.parse_args()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if DEVICE == "cuda" else "gloo", timeout=datetime.timedelta(minutes=5))
        if DEVICE == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    elif args.virtual is None:
        sys.exit("--virtual N is required unless launched by torchrun (the real ring)")
    elif DEVICE != "cuda":
        sys.exit("the virtual ring benchmark needs a CUDA GPU")
    lead = not real_ring() or dist.get_rank() == 0
    if args.suite == "masks":
        args.tokens = args.tokens[0]
        rows = suite_masks(args)
        if lead:
            print(json.dumps(rows))
            write_json(args.json, dict(environment(), rows=rows))
    elif len(args.tokens) == 1 and not args.masks:
        args.tokens = args.tokens[0]
        res = run(args)
        if lead:
            print(json.dumps(res))
            print(describe(res))
            write_json(args.json, dict(environment(), **res))
    else:   # a sweep over lengths and masks in one process (one NCCL set-up, one warm-up of the merge)
        rows = []
        for mask in args.masks or ["causal" if args.causal else "full"]:
            for tokens in args.tokens:
                a = copy.copy(args)
                a.tokens, a.causal = tokens, mask == "causal"
                rows.append(run(a))
                if lead:
                    print(describe(rows[-1]), flush=True)
        if lead:
            write_json(args.json, dict(environment(), rows=rows))
    if real_ring():
        exit_rank()


if __name__ == "__main__":
    main()
