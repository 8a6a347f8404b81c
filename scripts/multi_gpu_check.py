"""Context parallelism over real process groups (issue #9, item 1): ring (three layouts), Ulysses, the
2-D hybrid and packed varlen, forward and backward, against the float64 single-process reference.

    torchrun --nproc_per_node 8 scripts/multi_gpu_check.py --out OUTDIR          # NCCL on GPUs
    torchrun --nproc_per_node 3 scripts/multi_gpu_check.py --seqlen 96 --dim 16  # gloo on CPU

Every rank draws the same full tensors, runs its shard, and the gathered results are compared on
rank 0 with the tests' rule: error <= 2 x the same-dtype single-process op's error + a floor. Writes
OUTDIR/multi_gpu_check.json; exits 1 if any case fails.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from reference import random_qkv, reference64, rel_err, tolerance  # noqa: E402

from ringfa3.ops import attention  # noqa: E402
from ringfa3.parallel.shutdown import exit_rank  # noqa: E402
from ringfa3.parallel import (hybrid_attn_func, hybrid_groups, hybrid_shard, hybrid_unshard,  # noqa: E402
                              ring_flash_attn_func, ring_flash_attn_varlen_func, shard, shard_varlen, ulysses_attn_func,
                              unshard, unshard_varlen)


def cases(world: int, heads: int) -> list[dict]:
    out = [dict(kind="ring", layout=lay, causal=c, gqa=g)
           for lay in ("contiguous", "zigzag", "stripe") for c in (False, True) for g in (1, 4)]
    if heads % world == 0:
        out.append(dict(kind="ulysses", layout="zigzag", causal=True, gqa=1))
    if world >= 4 and world % 2 == 0 and heads % 2 == 0:
        out.append(dict(kind="hybrid", layout="zigzag", causal=True, gqa=1))
    out.append(dict(kind="varlen", layout="stripe", causal=True, gqa=2))
    return out


def doc_bounds(total: int) -> list[int]:
    """Packed documents of uneven lengths (none a multiple of anything) filling `total` tokens."""
    bounds, pos, n = [0], 0, 0
    while pos < total:
        pos = min(total, pos + max(1, total // 3 - 7 * n))
        bounds.append(pos)
        n += 1
    return bounds


def run_case(case, q, k, v, dout, groups):
    """This rank's part: shard, attend, backward; gathered full out/dq/dk/dv (on every rank)."""
    lay, causal = case["layout"], case["causal"]
    if case["kind"] == "varlen":
        cu = doc_bounds(q.shape[1])
        loc = [shard_varlen(x[0], cu, 0, None, lay).clone().requires_grad_() for x in (q, k, v)]
        out = ring_flash_attn_varlen_func(*loc, cu, causal=causal, layout=lay)
        out.backward(shard_varlen(dout[0], cu, 0, None, lay))
        back = lambda t: unshard_varlen(t, cu, 0, None, lay)[None]  # noqa: E731
        return dict(out=back(out.detach()), dq=back(loc[0].grad), dk=back(loc[1].grad), dv=back(loc[2].grad))
    if case["kind"] == "hybrid":
        ug, rg = groups
        loc = [hybrid_shard(x, 1, ug, rg, lay).clone().requires_grad_() for x in (q, k, v)]
        out = hybrid_attn_func(*loc, causal=causal, ulysses_group=ug, ring_group=rg, layout=lay)
        out.backward(hybrid_shard(dout, 1, ug, rg, lay))
        back = lambda t: hybrid_unshard(t, 1, ug, rg, lay)  # noqa: E731
    else:
        fn = ring_flash_attn_func if case["kind"] == "ring" else ulysses_attn_func
        loc = [shard(x, 1, None, lay).clone().requires_grad_() for x in (q, k, v)]
        out = fn(*loc, causal=causal, layout=lay)
        out.backward(shard(dout, 1, None, lay))
        back = lambda t: unshard(t, 1, None, lay)  # noqa: E731
    return dict(out=back(out.detach()), dq=back(loc[0].grad), dk=back(loc[1].grad), dv=back(loc[2].grad))


def yardsticks(case, q, k, v, dout):
    """(float64 reference, the same-dtype single-process op) of the full problem; for packed documents
    the reference masks across document bounds and the op runs document by document."""
    bounds = doc_bounds(q.shape[1]) if case["kind"] == "varlen" else [0, q.shape[1]]
    doc = torch.zeros(q.shape[1], dtype=torch.long, device=q.device)
    for a in bounds[1:-1]:
        doc[a:] += 1
    ref = reference64(q, k, v, dout, case["causal"], mask=doc[:, None] == doc[None, :])
    qs, ks, vs = (x.clone().requires_grad_() for x in (q, k, v))
    outs = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        out, _ = attention(qs[:, a:b], ks[:, a:b], vs[:, a:b], causal=case["causal"])
        outs.append(out)
    single = torch.cat(outs, 1)
    single.backward(dout)
    return ref, dict(out=single, dq=qs.grad, dk=ks.grad, dv=vs.grad)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=".")
    ap.add_argument("--seqlen", type=int, default=4096, help="global tokens (a multiple of 2 x world)")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--seed", type=int, help="default: fresh, drawn by rank 0")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dev = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    dtype = torch.bfloat16 if cuda else torch.float32
    seed = [args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")]
    dist.broadcast_object_list(seed, src=0)   # every rank must draw the same full tensors
    args.seed = seed[0]
    todo = cases(world, args.heads)
    groups = hybrid_groups(2) if any(c["kind"] == "hybrid" for c in todo) else None
    rows, ok = [], True
    for i, case in enumerate(todo):
        q, k, v, dout = (x.to(dev) for x in random_qkv(args.seed + i, 1, args.seqlen, args.heads,
                                                        args.heads // case["gqa"], args.dim, dtype))
        t = time.time()
        got = run_case(case, q, k, v, dout, groups)
        row = dict(case, seconds=round(time.time() - t, 3))
        if rank == 0:
            ref, base = yardsticks(case, q, k, v, dout)
            for name in ("out", "dq", "dk", "dv"):
                err, limit = rel_err(got[name], ref[name]), tolerance(rel_err(base[name], ref[name]), dtype)
                row[name] = dict(err=err, limit=limit)
                ok &= err <= limit
            row["pass"] = all(row[n]["err"] <= row[n]["limit"] for n in ("out", "dq", "dk", "dv"))
            print(f"{'PASS' if row['pass'] else 'FAIL'} {case['kind']:8} {case['layout']:10} "
                  f"{'causal' if case['causal'] else 'full':6} gqa{case['gqa']} "
                  + " ".join(f"{n} {row[n]['err']:.2e}/{row[n]['limit']:.2e}" for n in ("out", "dq", "dk", "dv")),
                  flush=True)
        rows.append(row)
    if rank == 0:
        meta = dict(world=world, backend=dist.get_backend(), device=torch.cuda.get_device_name(dev) if cuda else "cpu",
                    torch=torch.__version__, seqlen=args.seqlen, heads=args.heads, dim=args.dim, dtype=str(dtype),
                    seed=args.seed, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "multi_gpu_check.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
        print(f"{sum(r['pass'] for r in rows)}/{len(rows)} pass (world {world}, {meta['backend']})")
    exit_rank(0 if ok else 1)


if __name__ == "__main__":
    main()
