"""Device script for the e4m3 forward (backend sm90_fp8, issue #8). One call does two parts, each in
its own subprocess with a timeout, so a hung kernel costs only its part.

The check part:
- compares the kernel against float64 on fresh inputs: gaussian and outlier channels, hd 128 and 256,
  full, causal and a window, GQA, odd lengths, s_q != s_k, rows that see no key;
- compares it beside the torch FP8 reference (reference_fp8), which computes the same numerics
  (ops/fp8.py);
- passes a case when ours <= 1.25 x reference_fp8's error + 2e-3, the outputs are finite, and hidden
  rows give out 0 and lse -inf.

The bench part (FA3 convention, 16k tokens per batch, hidden 2048) times, in the same process:
- ours: the kernel alone on prepared e4m3 inputs;
- ours end to end: rotation, quantization and V^T in torch, plus the kernel;
- FA3's e4m3 forward (fa3-fwd wheel, e4m3 inputs, no descale);
- FA3 bf16;
- cuDNN bf16.

    PYTHONUNBUFFERED=1 python3 scripts/check_sm90_fp8.py --out $OUT [--parts check,bench] [--alt-lib NAME=PATH]

The basetime part (`--part basetime [--hds 128] [--seqs ...]`, not among the default parts) times the
kernel alone, each --alt-lib build and FA3's e4m3 under ncu at locked base clocks, for A/B of builds.
The ncu part (`--part ncu [--ncu-seq S] [--causal]`) profiles the hd128 kernel alone and FA3's e4m3 on the
same shape (pipes, warp states, stall samples per SASS instruction).
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from check_sm90 import (alt_backends, basetime_plan, ncu_launches, part_basetime, part_ncu, ref_attention,  # noqa: E402
                        rel_err)

CASES = [dict(name=f"hd{d} {'causal' if c else 'full'} s{s}{' outliers' if o else ''}", shape=(2, s, s, 8, 8, d),
              causal=c, outliers=o)
         for d in (128, 256) for c in (False, True) for s in (1024, 1000) for o in (False, True)] + [
    dict(name="hd128 gqa4 causal sq<sk", shape=(1, 700, 1300, 8, 2, 128), causal=True, outliers=True),
    dict(name="hd128 window 128 left", shape=(1, 2048, 2048, 4, 4, 128), causal=True, window=(128, 0), outliers=False),
    dict(name="hd128 sq>sk causal (hidden rows)", shape=(1, 900, 300, 4, 4, 128), causal=True, outliers=False),
    dict(name="hd256 gqa8 full sq!=sk", shape=(1, 333, 777, 8, 1, 256), causal=False, outliers=True),
    # from 4k keys hd128 runs 224-key blocks (K quantized by them)
    dict(name="hd128 full s4500", shape=(1, 4500, 4500, 4, 4, 128), causal=False, outliers=True),
    dict(name="hd128 causal s4500", shape=(1, 4500, 4500, 4, 4, 128), causal=True, outliers=False),
    dict(name="hd128 gqa4 causal sq<sk 4200", shape=(1, 1000, 4200, 8, 2, 128), causal=True, outliers=True),
]


def inputs(case, gen):
    import torch
    b, s_q, s_k, h, h_kv, d = case["shape"]
    q = torch.randn(b, s_q, h, d, device="cuda", generator=gen)
    k = torch.randn(b, s_k, h_kv, d, device="cuda", generator=gen)
    v = torch.randn(b, s_k, h_kv, d, device="cuda", generator=gen)
    if case["outliers"]:   # a few channels 10-30x larger in Q and K, as in LLM activations
        for x, f in ((q, 10.0), (k, 30.0)):
            x[..., :4] *= f
    return (x.bfloat16() for x in (q, k, v))


def part_check(out_dir):
    import torch
    from ringfa3.ops.backends import BACKENDS
    ours, spec = BACKENDS["sm90_fp8"], BACKENDS["reference_fp8"]
    gen = torch.Generator(device="cuda").manual_seed(8)
    rows = []
    for case in CASES:
        res = dict(name=case["name"])
        try:
            q, k, v = inputs(case, gen)
            causal, window = case["causal"], tuple(case.get("window", (-1, -1)))
            scale = q.shape[-1] ** -0.5
            ref_o, ref_lse = ref_attention(q, k, v, causal, window, scale)
            o, lse = ours.forward(q, k, v, causal, scale, window)
            so, slse = spec.forward(q, k, v, causal, scale, window, False)
            seen = torch.isfinite(ref_lse)
            res.update(ours=rel_err(o, ref_o), spec=rel_err(so, ref_o),
                       lse=rel_err(torch.where(seen, lse, 0), torch.where(seen, ref_lse, 0)),
                       finite=bool(torch.isfinite(o).all()),
                       hidden_ok=bool((o.transpose(1, 2)[~seen] == 0).all() and torch.isneginf(lse[~seen]).all()))
            res["ok"] = res["finite"] and res["hidden_ok"] and res["ours"] <= 1.25 * res["spec"] + 2e-3
        except Exception as e:
            res.update(ok=False, error=repr(e)[:300])
        rows.append(res)
        print(f"{'PASS' if res['ok'] else 'FAIL'} {res['name']:34s} ours {res.get('ours', float('nan')):.3e} "
              f"reference_fp8 {res.get('spec', float('nan')):.3e} lse {res.get('lse', float('nan')):.2e} "
              f"{res.get('error', '')}", flush=True)
    (out_dir / "sm90_fp8_check.json").write_text(json.dumps(rows, indent=1))


def part_bench(out_dir, alt_libs=()):
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from triton.testing import do_bench
    from ringfa3.ops.backends import BACKENDS
    from ringfa3.ops.sm90_fp8 import Sm90Fp8Backend
    ours = BACKENDS["sm90_fp8"]
    # other builds of the library (A/B), timed on the same prepared inputs
    alts = {name: Sm90Fp8Backend(be) for name, be in alt_backends(alt_libs).items()}
    try:
        import fa3_fwd_interface as fa3
    except Exception as e:
        fa3 = None
        print("fa3 import failed:", repr(e)[:200])
    info = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, cudnn=torch.backends.cudnn.version())
    print(json.dumps(info), flush=True)
    rows = []
    for d in (128, 256):
        for s in (1024, 4096, 8192, 16384):
            b, h = 16384 // s, 2048 // d
            for causal in (False, True):
                f = 4 * b * h * s * s * d / (2 if causal else 1)
                tf = lambda ms: round(f / ms / 1e9)  # noqa: E731, B023
                q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
                row = dict(hd=d, seq=s, causal=causal)
                x = ours.prepare(q, k, v, causal=causal)
                row["ours"] = tf(do_bench(lambda: ours.run(x, causal), warmup=25, rep=200, return_mode="median"))  # noqa: B023
                for name, alt in alts.items():
                    try:   # an alternate build may hold only some head dims (build_csrc.py --only)
                        xa = alt.prepare(q, k, v, causal=causal)   # quantized by its own key block
                        row[name] = tf(do_bench(lambda: alt.run(xa, causal), warmup=25, rep=200, return_mode="median"))  # noqa: B023
                    except RuntimeError as e:
                        row[name] = None
                        print(f"{name}: {e}", flush=True)
                row["ours_end_to_end"] = tf(do_bench(lambda: ours.forward(q, k, v, causal), warmup=25, rep=200,  # noqa: B023
                                                     return_mode="median"))
                if fa3 is not None:
                    q8, k8, v8 = (t.to(torch.float8_e4m3fn) for t in (q, k, v))
                    for name, args in (("fa3_fp8", (q8, k8, v8)), ("fa3_bf16", (q, k, v))):
                        try:
                            row[name] = tf(do_bench(lambda: fa3.flash_attn_func(*args, causal=causal),  # noqa: B023
                                                    warmup=25, rep=200, return_mode="median"))
                        except Exception as e:
                            row[name] = "err " + repr(e)[:120]
                qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
                with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                    row["cudnn_bf16"] = tf(do_bench(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal),  # noqa: B023
                                                    warmup=25, rep=200, return_mode="median"))
                rows.append(row)
                print(json.dumps(row), flush=True)
                del q, k, v, x
                torch.cuda.empty_cache()
    (out_dir / "sm90_fp8_bench.json").write_text(json.dumps(dict(info=info, rows=rows), indent=1))


def part_basetime_target(hds, seqs, alt_libs, reps):
    """The launches the basetime part profiles: per row, each build on the same q, k, v (quantized by its own
    key block), then FA3."""
    import torch
    import fa3_fwd_interface as fa3
    from ringfa3.ops.backends import BACKENDS
    from ringfa3.ops.sm90_fp8 import Sm90Fp8Backend
    libs = dict(ours=BACKENDS["sm90_fp8"], **{n: Sm90Fp8Backend(be) for n, be in alt_backends(alt_libs).items()})
    for lib, hd, s, causal in basetime_plan(hds, seqs, alt_libs, anchor="fa3_fp8"):
        if lib == "ours":   # FA3 convention: 16k tokens, hidden 2048
            q, k, v = (torch.randn(16384 // s, s, 2048 // hd, hd, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            q8, k8, v8 = (t.to(torch.float8_e4m3fn) for t in (q, k, v))
        if lib != "fa3_fp8":   # each build quantizes K by its own key block
            x = libs[lib].prepare(q, k, v, causal=causal)
        for _ in range(reps):
            if lib == "fa3_fp8":
                fa3.flash_attn_func(q8, k8, v8, causal=causal)
            else:
                libs[lib].run(x, causal)
        torch.cuda.synchronize()


def part_ncu_target(which, causal, seq):
    """check_sm90.ncu_launches of our kernel alone on prepared inputs, or of FA3's e4m3 forward."""
    import torch
    from ringfa3.ops.backends import BACKENDS

    def make_fn(q, k, v):
        if which == "fa3":
            import fa3_fwd_interface as fa3
            q8, k8, v8 = (t.to(torch.float8_e4m3fn) for t in (q, k, v))
            return lambda: fa3.flash_attn_func(q8, k8, v8, causal=causal)
        ours = BACKENDS["sm90_fp8"]
        x = ours.prepare(q, k, v, causal=causal)
        return lambda: ours.run(x, causal)
    ncu_launches(make_fn, seq)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=".")
    ap.add_argument("--parts", default="check,bench")
    ap.add_argument("--part", help=argparse.SUPPRESS)   # one part, in this process
    ap.add_argument("--timeout", type=float, default=240, help="seconds per part")
    ap.add_argument("--alt-lib", action="append", default=[], help="NAME=PATH: another build, timed beside")
    ap.add_argument("--hds", default="128,256", help="basetime part: head dims")
    ap.add_argument("--seqs", default="1024,4096,8192,16384", help="basetime part: sequence lengths")
    ap.add_argument("--ncu-which", choices=["ours", "fa3"], default="ours", help=argparse.SUPPRESS)
    ap.add_argument("--ncu-seq", type=int, default=16384, help="ncu part: rows per sequence")
    ap.add_argument("--causal", action="store_true", help="ncu part: the causal mask")
    args = ap.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    hds, seqs = [int(x) for x in args.hds.split(",")], [int(x) for x in args.seqs.split(",")]
    if args.part == "basetime_target":
        return part_basetime_target(hds, seqs, args.alt_lib, reps=4)
    if args.part == "ncu_target":
        return part_ncu_target(args.ncu_which, args.causal, args.ncu_seq)
    if args.part == "ncu":
        return part_ncu(out_dir, args.causal, args.ncu_seq, script=__file__, stem="sm90_fp8")
    if args.part == "basetime":
        return part_basetime(out_dir, hds, seqs, args.alt_lib, script=__file__, anchor="fa3_fp8", stem="sm90_fp8")
    if args.part:
        return part_check(out_dir) if args.part == "check" else part_bench(out_dir, args.alt_lib)
    for part in args.parts.split(","):
        t0 = time.time()
        try:
            # the part's own options travel with it (run 164: --parts basetime --hds 128 timed hd256 too)
            opts = [f"--alt-lib={x}" for x in args.alt_lib] + ["--hds", args.hds, "--seqs", args.seqs,
                                                               "--ncu-seq", str(args.ncu_seq)]
            opts += ["--causal"] if args.causal else []
            rc = subprocess.run([sys.executable, __file__, "--part", part, "--out", str(out_dir), *opts],
                                timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        print(f"== part {part}: rc={rc} in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
