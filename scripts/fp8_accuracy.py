"""Accuracy study of FP8 attention (ringfa3/ops/fp8.py) against float64, on inputs with outliers.

    python scripts/fp8_accuracy.py --out bench/results/fp8_accuracy.json

For each input family it reports the relative error ||out - out64|| / ||out64|| of bf16 attention,
naive FP8 (one scale per tensor), FP8 with block scales only, with incoherent processing only, and
with both (ours). Runs on CPU (the numerics are emulated exactly as the kernel rounds them).
"""
import argparse
import json
import platform
import time

import torch

from ringfa3.ops import fp8, reference

# name -> (what it models, how Q/K/V are made)
FAMILIES = {
    "gaussian": "N(0,1) entries, no outliers",
    "sparse_entries_x10": "N(0,1) plus 0.1% of Q/K/V entries drawn from N(0,10^2) (the FA3 paper's test)",
    "channels_x10": "4 of the head dim's channels of Q and K 10x larger (LLM outlier features)",
    "channels_x30": "4 channels of Q and K 30x larger",
    "channels_x100": "4 channels of Q and K 100x larger",
    "tokens_x100": "1% of tokens of K and V 100x larger (massive activations on a few tokens)",
}

VARIANTS = {  # name -> attention_fp8 keyword arguments
    "fp8_naive_per_tensor": dict(incoherent=False, per_tensor=True),
    "fp8_block": dict(incoherent=False),
    "fp8_incoherent_per_tensor": dict(incoherent=True, per_tensor=True),
    "fp8_block_incoherent": dict(incoherent=True),
}


def make_inputs(family: str, b: int, s: int, h: int, d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, s, h, d, generator=g, dtype=torch.float64) for _ in range(3))
    if family == "sparse_entries_x10":
        for x in (q, k, v):
            hit = torch.rand(x.shape, generator=g) < 1e-3
            x[hit] = torch.randn(int(hit.sum()), generator=g, dtype=torch.float64) * 10
    elif family.startswith("channels_x"):
        ch = torch.randperm(d, generator=g)[:4]
        q[..., ch] *= float(family[10:])
        k[..., ch] *= float(family[10:])
    elif family == "tokens_x100":
        tok = torch.randperm(s, generator=g)[: max(1, s // 100)]
        k[:, tok] *= 100
        v[:, tok] *= 100
    return q, k, v


def rel_err(out, ref) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="fp8_accuracy.json")
    ap.add_argument("--seqlen", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dims", default="128,256")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--block-k", type=int, default=128,
                    help="keys per K scale (the sm90 kernel's key block: 224 at hd128 from 4k keys, else 128)")
    args = ap.parse_args()
    rows = []
    for d in (int(x) for x in args.head_dims.split(",")):
        for family in FAMILIES:
            for causal in (False, True):
                errs = {name: [] for name in ["bf16", *VARIANTS]}
                for seed in range(args.seeds):
                    q, k, v = make_inputs(family, 1, args.seqlen, args.heads, d, seed)
                    scale = d ** -0.5
                    ref, _ = reference.forward(q, k, v, causal, scale, (-1, -1), False)
                    bf, _ = reference.forward(q.bfloat16(), k.bfloat16(), v.bfloat16(), causal, scale, (-1, -1), False)
                    errs["bf16"].append(rel_err(bf, ref))
                    for name, kw in VARIANTS.items():
                        out, _ = fp8.attention_fp8(q.float(), k.float(), v.float(), causal, scale, seed=seed,
                                                   block_k=args.block_k, **kw)
                        errs[name].append(rel_err(out, ref))
                row = dict(head_dim=d, family=family, causal=causal, **{n: max(e) for n, e in errs.items()})
                row["ours_over_naive"] = row["fp8_block_incoherent"] / row["fp8_naive_per_tensor"]
                rows.append(row)
                print(f"hd{d:<4}{family:<20}{'causal' if causal else 'full':<7}"
                      + "  ".join(f"{n} {row[n]:.2e}" for n in errs) + f"  ours/naive {row['ours_over_naive']:.2f}",
                      flush=True)
    meta = dict(date=time.strftime("%Y-%m-%d"), machine=platform.machine(), torch=torch.__version__,
                command="python scripts/fp8_accuracy.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
                metric="max over seeds of ||out - out_float64|| / ||out_float64||", families=FAMILIES,
                block_q=128, block_k=args.block_k, v_scale="per head")
    with open(args.out, "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
