"""Device script for the sm90 backward (issue #7): gradients against float64 next to cuDNN's on the same
inputs, then timing of ours (default unordered and deterministic dQ) next to cuDNN's backward and FA3's
(flash-attn3-jax wheel, own subprocess), then SASS facts of the backward kernels. One call:

    PYTHONUNBUFFERED=1 python3 scripts/check_sm90_bwd.py --out $OUT

The forward's out and lse fed to every backward come from the float64 reference (rounded to the input
dtype / fp32), so a backward is checked on its own. Each part runs in its own subprocess with a timeout.
Writes $OUT/sm90_bwd_check.json, sm90_bwd_bench.json, sm90_bwd_fa3.json, sm90_bwd_sass.json.
`--part ncu --seqs S [--causal] [--ncu-which default,deterministic,fa3]` (not in `all`) profiles the
main kernel of each at S rows: sm90_bwd_ncu_<which>_<S>[_causal].txt and per-instruction stall CSVs.
`--part basetime [--hd D] [--alt-lib NAME=PATH]` (not in `all`): our backward's kernels per call at
locked base clocks (ncu), both dQ modes, for each library: sm90_bwd_basetime.json.
`--part fa3_basetime --seqs ...` (not in `all`): the main kernel alone, ours against FA3's, at base clocks:
sm90_bwd_fa3_basetime.json.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from check_sm90 import alt_backends, ncu_base_durations, ncu_profile, rel_err   # same folder: the forward's check

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "ringfa3" / "lib" / "libringfa3_sm90.so"
FA3_ANCHOR = ROOT.parent / "shared" / "tools" / "fa3_anchor.py"

# (b, s_q, s_k, h, h_kv, d) + options. Odd lengths, s_q != s_k both ways (dead rows when s_q > s_k
# under causal), GQA / MQA, windows, a non-default scale, fp32 grads, fp32 out (a merged ring output).
CASES = [
    dict(name="full", shape=(2, 1024, 1024, 8, 8, 128)),
    dict(name="causal", shape=(2, 1024, 1024, 8, 8, 128), causal=True),
    dict(name="gqa_odd_causal", shape=(2, 1000, 1000, 8, 2, 128), causal=True),
    dict(name="sq<sk_causal", shape=(1, 300, 777, 4, 4, 128), causal=True),
    dict(name="sq>sk_causal_dead_rows", shape=(1, 777, 300, 4, 2, 128), causal=True),
    dict(name="window_256_0", shape=(1, 1500, 1500, 4, 4, 128), window=(256, 0)),
    dict(name="window_100_50_sq<sk", shape=(1, 900, 1300, 4, 2, 128), window=(100, 50)),
    dict(name="mqa_scale", shape=(1, 513, 700, 4, 1, 128), scale=0.05),
    dict(name="full_sq>sk_gqa", shape=(1, 1000, 300, 8, 2, 128)),
    dict(name="full_groups_8_3", shape=(1, 1500, 1300, 4, 2, 128)),  # deterministic launch groups of 8 and 3
    dict(name="grads_fp32_gqa", shape=(2, 1000, 1000, 8, 2, 128), causal=True, grads_fp32=True),
    dict(name="out_fp32", shape=(1, 777, 777, 4, 4, 128), causal=True, out_fp32=True),
    dict(name="fp16_causal", shape=(2, 1024, 1024, 8, 8, 128), causal=True, dtype="fp16"),
    dict(name="atomic_dq", shape=(2, 1000, 1000, 8, 2, 128), causal=True, atomic=True),
    dict(name="hd64_full_gqa", shape=(2, 1000, 1000, 8, 4, 64)),
    dict(name="hd64_causal", shape=(2, 1024, 1024, 8, 8, 64), causal=True),
    dict(name="hd64_fp16_window", shape=(1, 1100, 1100, 4, 2, 64), window=(200, 0), dtype="fp16"),
    dict(name="hd64_atomic", shape=(2, 1000, 1000, 8, 4, 64), causal=True, atomic=True),
    dict(name="long_causal", shape=(1, 4096, 4096, 4, 4, 128), causal=True),
    # Unmasked atomic calls whose last wave is split into pieces over query rows (csrc/bwd/bwd_split.h).
    dict(name="split_gqa", shape=(3, 2000, 1900, 8, 2, 128), atomic=True),
    dict(name="split_hd64_fp32", shape=(2, 1500, 1500, 8, 2, 64), atomic=True, grads_fp32=True),
    # Head dim 256 (bwd_traits_d256.h: 64 keys per CTA, the warpgroups split d).
    dict(name="hd256_full", shape=(2, 512, 512, 4, 4, 256)),
    dict(name="hd256_causal_gqa_odd", shape=(1, 777, 777, 4, 2, 256), causal=True),
    dict(name="hd256_sq<sk_window", shape=(1, 300, 650, 4, 4, 256), window=(100, 20)),
    dict(name="hd256_sq>sk_causal", shape=(1, 650, 300, 4, 1, 256), causal=True),
    dict(name="hd256_fp16_grads_fp32", shape=(1, 513, 513, 4, 2, 256), causal=True, dtype="fp16", grads_fp32=True),
    dict(name="hd256_atomic", shape=(2, 1000, 1000, 4, 4, 256), causal=True, atomic=True),
    dict(name="hd256_split_fp16", shape=(1, 1000, 1000, 8, 4, 256), atomic=True, dtype="fp16"),
]


def load_backend():
    from ringfa3.ops import sm90 as mod
    if mod.BACKEND is None:
        sys.exit(f"sm90 backend unavailable (library at {LIB} missing or no CUDA)")
    return mod.BACKEND


def ref_grads(q, k, v, dout, causal, window, scale):
    """float64 out, lse and (dq, dk, dv): the tests' ground truth (tests/reference.py)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from reference import reference64
    r = reference64(q, k, v, dout, causal, scale, window)
    return r["out"], r["lse"], (r["dq"], r["dk"], r["dv"])


def check_case(be, case, gen):
    import torch
    from ringfa3.ops.aten_backends import AtenBackend
    from ringfa3.ops import reference as reference_backend
    b, s_q, s_k, h, h_kv, d = case["shape"]
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16}[case.get("dtype", "bf16")]
    causal, window = case.get("causal", False), tuple(case.get("window", (-1, -1)))
    scale = case.get("scale", d ** -0.5)
    q = torch.randn(b, s_q, h, d, device="cuda", dtype=dt, generator=gen)
    k = torch.randn(b, s_k, h_kv, d, device="cuda", dtype=dt, generator=gen)
    v = torch.randn(b, s_k, h_kv, d, device="cuda", dtype=dt, generator=gen)
    dout = torch.randn(b, s_q, h, d, device="cuda", dtype=dt, generator=gen)
    out64, lse64, ref = ref_grads(q, k, v, dout, causal, window, scale)
    out = out64.float() if case.get("out_fp32") else out64.to(dt)
    lse = lse64.float().contiguous()
    res = dict(name=case["name"], shape=case["shape"], dtype=case.get("dtype", "bf16"), causal=causal,
               window=window, scale=scale)
    det = not case.get("atomic", False)
    grads_fp32 = case.get("grads_fp32", False)
    outs = []
    for _ in range(2):   # twice: repeatability
        outs.append(be.backward(dout, q, k, v, out, lse, causal, scale, window, grads_fp32, det))
        torch.cuda.synchronize()
    dq, dk, dv = outs[0]
    res["ours"] = [rel_err(x, r) for x, r in zip((dq, dk, dv), ref)]
    res["finite"] = all(bool(torch.isfinite(x).all()) for x in (dq, dk, dv))
    res["dtype_ok"] = all(x.dtype == (torch.float32 if grads_fp32 else dt) for x in (dq, dk, dv))
    res["bitwise_repeat"] = all(torch.equal(x, y) for x, y in zip(outs[0], outs[1]))
    cud = AtenBackend("cudnn")
    why = cud.unsupported(q, k, v, causal, window)
    if why is None:
        try:
            g = cud.backward(dout, q, k, v, out.to(dt), lse, causal, scale, window, False)
            res["cudnn"] = [rel_err(x, r) for x, r in zip(g, ref)]
        except Exception as e:
            res["cudnn_err"] = repr(e)[:200]
    # Second anchor for every case (windows, s_q != s_k causal too): the blockwise fp32 reference
    # backend on the same 16-bit inputs, rounded to the input dtype.
    g = reference_backend.backward(dout, q, k, v, out.to(dt), lse, causal, scale, window, False)
    res["torch_fp32"] = [rel_err(x.to(dt), r) for x, r in zip(g, ref)]
    anchor = res.get("cudnn", res["torch_fp32"])
    # Pass: finite, right dtype, every gradient within 2x the anchor's error plus bf16 rounding slack,
    # and bitwise repeatable in deterministic mode.
    slack = 2e-3 if dt == torch.bfloat16 else 3e-4
    res["ok"] = bool(res["finite"] and res["dtype_ok"] and
                     all(o <= 2.0 * a + slack for o, a in zip(res["ours"], anchor)) and
                     (case.get("atomic", False) or res["bitwise_repeat"]))
    return res


def part_check(out_dir):
    import torch
    be = load_backend()
    gen = torch.Generator(device="cuda").manual_seed(7)
    results = []
    # atomic-dQ cases first: should the deterministic order ever hang, they are done already
    for case in sorted(CASES, key=lambda c: not c.get("atomic", False)):
        try:
            r = check_case(be, case, gen)
        except Exception as e:
            r = dict(name=case["name"], ok=False, error=repr(e)[:400])
        results.append(r)
        fmt = lambda xs: "/".join(f"{x:.2e}" for x in xs) if xs else "-"
        print(f"{'PASS' if r['ok'] else 'FAIL'} {r['name']:26s} ours dq/dk/dv {fmt(r.get('ours'))}  "
              f"cudnn {fmt(r.get('cudnn'))}  torch_fp32 {fmt(r.get('torch_fp32'))}  "
              f"repeat={r.get('bitwise_repeat')} {r.get('error', '')}", flush=True)
        torch.cuda.empty_cache()
    # Packed documents through the backward's varlen form, whether or not backward_blocks takes it yet.
    sys.path.insert(0, str(ROOT / "tests"))
    from varlen_cases import VARLEN_CASES, run_backward_case
    be.varlen_backward_blocks = True
    for case in (c for c in VARLEN_CASES if c["d"] in (64, 128)):
        for det in (False, True):
            try:
                r = run_backward_case(be, case, gen, deterministic=det)
            except Exception as e:   # noqa: BLE001
                r = dict(name=case["name"], deterministic=det, **{"pass": False, "error": repr(e)[:400]})
            r["name"], r["ok"] = "varlen " + r["name"], r.pop("pass")
            results.append(r)
            print(f"{'PASS' if r['ok'] else 'FAIL'} {r['name']:26s} det={det} dq/dk/dv "
                  f"{r.get('dq', float('nan')):.2e}/{r.get('dk', float('nan')):.2e}/{r.get('dv', float('nan')):.2e} "
                  f"limit {r.get('dq_limit', float('nan')):.2e} {r.get('error', '')}", flush=True)
    (out_dir / "sm90_bwd_check.json").write_text(json.dumps(results, indent=1))


def part_bench(out_dir, seqs, hd64=True, hd256=False):
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel, SDPBackend
    from triton.testing import do_bench
    from ringfa3.ops.aten_backends import AtenBackend
    be = load_backend()
    info = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, cudnn=torch.backends.cudnn.version())
    print(json.dumps(info), flush=True)
    rows = []
    for hd, seq_list in ((128, seqs), (64, [4096, 16384] if hd64 else []), (256, [4096, 16384] if hd256 else [])):
        for s in seq_list:
            b, h = 16384 // s, 2048 // hd
            for causal in (False, True):
                f = 4 * b * h * s * s * hd / (2 if causal else 1)
                bf = 2.5 * f
                q, k, v, dout = (torch.randn(b, s, h, hd, device="cuda", dtype=torch.bfloat16) for _ in range(4))
                # out / lse from cuDNN's forward: the backwards compared here share them exactly
                out, lse = AtenBackend("cudnn").forward(q, k, v, causal, hd ** -0.5, (-1, -1), False)
                row = dict(hd=hd, seq=s, causal=causal)
                for mode, det in (("ours", False), ("ours_det", True)):   # default: unordered dQ sums
                    fn = lambda: be.backward(dout, q, k, v, out, lse, causal, hd ** -0.5, (-1, -1), False, det)  # noqa: B023
                    ms = do_bench(fn, warmup=25, rep=100, return_mode="median")
                    row[mode] = round(bf / ms / 1e9)
                g_ours = be.backward(dout, q, k, v, out, lse, causal, hd ** -0.5, (-1, -1), False, True)
                qt, kt, vt = (x.transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))
                with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                    o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
                    gt = dout.transpose(1, 2).contiguous()
                    ms = do_bench(lambda: torch.autograd.grad(o, (qt, kt, vt), gt, retain_graph=True),
                                  warmup=25, rep=100, return_mode="median")
                    g_cud = torch.autograd.grad(o, (qt, kt, vt), gt)
                row["cudnn"] = round(bf / ms / 1e9)
                row["vs_cudnn"] = round(row["ours"] / row["cudnn"], 3)
                # ours vs cuDNN on the same inputs (each with its own forward's out/lse)
                row["diff_vs_cudnn"] = [round(rel_err(x, y.transpose(1, 2).double()), 5) for x, y in zip(g_ours, g_cud)]
                rows.append(row)
                print(json.dumps(row), flush=True)
                del q, k, v, dout, out, lse, qt, kt, vt, o, g_ours, g_cud
                torch.cuda.empty_cache()
    (out_dir / "sm90_bwd_bench.json").write_text(json.dumps(dict(info=info, rows=rows), indent=1))


def part_sass(out_dir):
    from loop_anatomy import sass_counts
    lib = os.environ.get("RINGFA3_SM90_LIB", str(LIB))   # the library the other parts loaded
    counts = sass_counts(lib, "bwd", dict(hgmma=r"\bHGMMA\b", ldl=r"\bLDL\b", stl=r"\bSTL\b",
                                          setmaxnreg=r"USETMAXREG", red=r"\bRED\b"))
    facts = {name[:120]: c for name, c in counts.items()}
    (out_dir / "sm90_bwd_sass.json").write_text(json.dumps(facts, indent=1))
    for n, f in facts.items():
        print(n[:90], f)


def part_ncu_target(which, seq, causal, d=128):
    """Three backwards at head dim d, `seq` rows per sequence (16k tokens in all), for ncu to profile the
    third: ours (default or deterministic dQ), or FA3's (flash-attn3-jax, fwd+bwd under jax.grad)."""
    b, h = 16384 // seq, 16
    if which == "fa3":
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        import jax
        import jax.numpy as jnp
        from flash_attn3_jax import flash_mha
        q, k, v = (jax.random.normal(x, (b, seq, h, d), dtype=jnp.bfloat16)
                   for x in jax.random.split(jax.random.PRNGKey(0), 3))
        loss = lambda q, k, v: (flash_mha(q, k, v, is_causal=causal).astype(jnp.float32) ** 2).sum()   # noqa: E731
        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        for _ in range(3):
            jax.block_until_ready(grad(q, k, v))
        return
    import torch
    be = load_backend()
    q, k, v, dout = (torch.randn(b, seq, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    out, lse = be.forward(q, k, v, causal, None, (-1, -1), False)
    for _ in range(3):
        be.backward(dout, q, k, v, out, lse, causal, d ** -0.5, (-1, -1), False, which == "deterministic")
    torch.cuda.synchronize()


def part_ncu(out_dir, which, seq, causal, d=128):
    """ncu of a backward main kernel at head dim d: ours with unordered (default) or deterministic dQ, or FA3's
    (its main kernel by mangled name). ncu locks the clocks at base, so durations compare work per clock.
    Writes the summary sections and the warp-stall samples per SASS instruction (CSV)."""
    sections = ["SpeedOfLight", "ComputeWorkloadAnalysis", "WarpStateStats", "SchedulerStats", "MemoryWorkloadAnalysis",
                "SourceCounters"]
    for mode in which:
        target = [sys.executable, __file__, "--part", "ncu_target", "--ncu-which", mode, "--seqs", str(seq), "--hd", str(d)]
        target += ["--causal"] if causal else []
        kernel = "mangled:BwdSm90" if mode == "fa3" else "bwd_kernel"
        tag = f"{mode}_{seq}{'_causal' if causal else ''}{'' if d == 128 else f'_hd{d}'}"
        keep = ncu_profile(kernel, target, out_dir / f"sm90_bwd_ncu_{tag}.txt",
                           out_dir / f"sm90_bwd_ncu_source_{tag}.csv", sections,
                           r"Duration|Throughput|Pipe|Issue|Eligible|Executed Ipc|Hit Rate|L2|DRAM|Registers")
        print(f"--- {tag}")
        print("\n".join(keep[:40]))


def basetime_plan(seqs, alt_libs):
    """(library, mode, seq, causal) of every timed group of --part basetime, in launch order."""
    libs = ["ours"] + [spec.split("=", 1)[0] for spec in alt_libs]
    return [(lib, mode, s, causal) for s in seqs for causal in (False, True) for lib in libs
            for mode in ("default", "deterministic")]


def part_basetime_target(seqs, alt_libs, d, reps):
    """Backwards for --part basetime (FA3 convention at head dim d): each group of `reps` calls follows a
    marker launch (torch.cuda._sleep's spin kernel), so that the profile splits into groups."""
    import torch
    libs = dict(ours=load_backend(), **alt_backends(alt_libs))
    for lib, mode, s, causal in basetime_plan(seqs, alt_libs):
        if lib == "ours" and mode == "default":
            q, k, v, dout = (torch.randn(16384 // s, s, 2048 // d, d, device="cuda", dtype=torch.bfloat16)
                             for _ in range(4))
            out, lse = libs["ours"].forward(q, k, v, causal, None, (-1, -1), False)
        torch.cuda._sleep(1000)
        for _ in range(reps):
            libs[lib].backward(dout, q, k, v, out, lse, causal, d ** -0.5, (-1, -1), False, mode == "deterministic")
        torch.cuda.synchronize()


def part_basetime(out_dir, seqs, alt_libs, d, reps=4):
    """Our backward's kernels (preprocess, main, dQ conversion) timed under ncu at locked base clocks, per
    call summed, for each library and dQ mode: work per clock, for A/B of builds whose difference
    do_bench's noise at the power cap hides. The first call of each group is a warm-up; the median of
    the rest is kept."""
    import statistics
    target = [sys.executable, __file__, "--part", "basetime_target", "--seqs", ",".join(map(str, seqs)),
              "--hd", str(d)]
    for spec in alt_libs:
        target += ["--alt-lib", spec]
    launches, err = ncu_base_durations(target, "bwd_|spin_kernel", out_dir / "sm90_bwd_basetime_raw.csv")
    groups = []
    for name, us in launches:
        if "spin_kernel" in name:
            groups.append([])
        elif groups:
            groups[-1].append(us)
    plan = basetime_plan(seqs, alt_libs)
    if len(groups) != len(plan) or any(not g or len(g) % reps for g in groups):
        print(f"basetime: {len(groups)} marked groups of {[len(g) for g in groups]} launches, "
              f"{len(plan)} groups of {reps} calls expected")
        print(err[-3000:])
        return 1
    out = []
    for (lib, mode, s, causal), g in zip(plan, groups):
        per = len(g) // reps   # kernels per call
        us = statistics.median(sum(g[i * per:(i + 1) * per]) for i in range(1, reps))
        flops = 2.5 * 4 * 16384 * s * 2048 / (2 if causal else 1)
        out.append(dict(lib=lib, mode=mode, hd=d, seq=s, causal=causal, kernels=per, us=round(us, 2),
                        tflops_base=round(flops / us / 1e6, 1)))
    (out_dir / "sm90_bwd_basetime.json").write_text(json.dumps(out, indent=1))
    cols = [(x["lib"], x["mode"]) for x in out if x["seq"] == seqs[0] and not x["causal"]]
    print(f"hd{d} {'seq':>6} {'mask':>6} " + " ".join(f"{lib[:8] + ('/det' if m != 'default' else ''):>14}" for lib, m in cols)
          + "   (TF/s at base clock; ratio to ours)")
    for s in seqs:
        for causal in (False, True):
            grp = [x for x in out if x["seq"] == s and x["causal"] == causal]
            base = grp[0]["tflops_base"]
            print(f"     {s:>6} {'causal' if causal else 'full':>6} " +
                  " ".join(f"{x['tflops_base']:>7.0f}({x['tflops_base'] / base:.3f})" for x in grp))
    return 0


def part_fa3_basetime(out_dir, seqs):
    """The main kernel alone, ours (default dQ) and FA3's, at locked base clocks (ncu), hd128 bf16 at each
    seq, full and causal: work per clock against FA3's, apart from the power cap and from the preprocess
    and conversion passes around it. Launch 1 of 3 is a warm-up; the median of the other two is kept."""
    import statistics
    out = []
    for s in seqs:
        for causal in (False, True):
            flops = 2.5 * 4 * 16384 * s * 2048 / (2 if causal else 1)
            row = dict(seq=s, causal=causal)
            for which, regex in (("ours", "bwd_kernel"), ("fa3", "BwdSm90")):
                target = [sys.executable, __file__, "--part", "ncu_target", "--ncu-which",
                          "fa3" if which == "fa3" else "default", "--seqs", str(s)] + (["--causal"] if causal else [])
                tag = f"{which}_{s}{'_causal' if causal else ''}"
                launches, err = ncu_base_durations(target, f"mangled:{regex}", out_dir / f"sm90_bwd_fa3_basetime_raw_{tag}.csv")
                us = [t for _, t in launches]
                if len(us) < 2:
                    print(f"{which} {s}: {len(us)} launches profiled\n{err[-2000:]}")
                    continue
                row[which] = round(flops / statistics.median(us[1:]) / 1e6, 1)
            if "ours" in row and "fa3" in row:
                row["ours_per_fa3"] = round(row["ours"] / row["fa3"], 3)
            out.append(row)
            print(json.dumps(row), flush=True)
    (out_dir / "sm90_bwd_fa3_basetime.json").write_text(json.dumps(out, indent=1))


def part_profile(out_dir, seqs):
    """Per-kernel device time of one backward call (torch.profiler), hd128 full and causal at each
    length: how much the preprocess, the dQ conversion and the zeroing take beside the main kernel."""
    import torch
    from bench_common import kernel_times
    be = load_backend()
    rows = []
    for s in seqs:
        b, h, d = 16384 // s, 16, 128
        for causal in (False, True):
            q, k, v, dout = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(4))
            out, lse = be.forward(q, k, v, causal, None, (-1, -1), False)
            call = lambda: be.backward(dout, q, k, v, out, lse, causal, d ** -0.5, (-1, -1), False, False)  # noqa: E731,B023
            kernels = kernel_times(call, calls=10)   # name -> [us per call, launches per call]
            row = dict(seq=s, causal=causal, us_per_call=kernels, total_us=round(sum(us for us, _ in kernels.values()), 1))
            rows.append(row)
            print(json.dumps(row), flush=True)
    (out_dir / "sm90_bwd_profile.json").write_text(json.dumps(rows, indent=1))


def part_fa3(out_dir, limit):
    """FA3 fwd+bwd (flash-attn3-jax) in its own process; rows are streamed to a file, so the ones done
    before the time limit survive it."""
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    # ../shared/tools/fa3_anchor.py here; on the device a copy carried in .whl_bwd/ or .whl/ (../shared
    # does not travel)
    anchor = next((a for a in (FA3_ANCHOR, ROOT / ".whl_bwd" / "fa3_anchor.py") if a.exists()),
                  ROOT / ".whl" / "fa3_anchor.py")
    log = out_dir / "sm90_bwd_fa3.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-u", str(anchor), "jax"], stdout=f, stderr=subprocess.STDOUT, env=env)
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            print(f"FA3 anchor stopped after {limit} s", flush=True)
    text = log.read_text()
    rows = [json.loads(l) for l in text.splitlines() if l.startswith("{")]
    (out_dir / "sm90_bwd_fa3.json").write_text(json.dumps(rows, indent=1))
    print(text[-2500:])


def table(out_dir):
    try:
        bench = json.loads((out_dir / "sm90_bwd_bench.json").read_text())["rows"]
    except Exception:
        return
    fa3 = {}
    try:
        for r in json.loads((out_dir / "sm90_bwd_fa3.json").read_text()):
            if "fa3jax_bwd_est" in r:
                fa3[(r["seq"], r["causal"])] = r["fa3jax_bwd_est"]
    except Exception:
        pass
    print("\nTFLOP/s (bwd = 2.5 x fwd flops)\n"
          "hd seq causal | ours (unordered dQ, default), ours deterministic | cuDNN FA3 | ours/cuDNN ours/FA3 det/ours")
    for r in bench:
        f = fa3.get((r["seq"], r["causal"])) if r["hd"] == 128 else None
        o = r["ours"]
        print(f"{r['hd']} {r['seq']} {r['causal']!s:5} | {o} {r['ours_det']} | {r['cudnn']} {f or '-'} | "
              f"{round(o / r['cudnn'], 3)} {round(o / f, 3) if f else '-'} {round(r['ours_det'] / o, 3)}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/sm90_bwd")
    ap.add_argument("--part", default="all", choices=["all", "check", "bench", "sass", "fa3", "ncu", "ncu_target", "profile",
                                                             "basetime", "basetime_target", "fa3_basetime"])
    ap.add_argument("--ncu-which", default="default,deterministic",
                    help="--part ncu: backwards profiled, of default, deterministic, fa3")
    ap.add_argument("--causal", action="store_true", help="--part ncu: the causal mask")
    ap.add_argument("--hd", type=int, default=128, choices=[64, 128, 256], help="--part ncu / basetime: the head dim")
    ap.add_argument("--alt-lib", action="append", default=[],
                    help="--part basetime: NAME=PATH, another build of the library timed beside the default")
    ap.add_argument("--seqs", default="1024,4096,8192,16384")
    ap.add_argument("--fa3", action="store_true", help="also run the FA3 (JAX) anchor subprocess")
    ap.add_argument("--no-hd64", action="store_true", help="--part bench: head dim 128 only (an hd128-only build)")
    ap.add_argument("--hd256", action="store_true", help="--part bench: head dim 256 rows too")
    ap.add_argument("--budget", type=float, default=600, help="seconds for all parts together")
    args = ap.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    seqs = [int(x) for x in args.seqs.split(",") if x]   # empty: no hd128 rows (--part bench)
    if args.part == "check":
        return part_check(out_dir)
    if args.part == "bench":
        return part_bench(out_dir, seqs, not args.no_hd64, args.hd256)
    if args.part == "sass":
        return part_sass(out_dir)
    if args.part == "profile":
        return part_profile(out_dir, seqs)
    if args.part == "fa3":
        return part_fa3(out_dir, args.budget)
    if args.part == "ncu":
        return part_ncu(out_dir, args.ncu_which.split(","), seqs[0], args.causal, args.hd)
    if args.part == "ncu_target":
        return part_ncu_target(args.ncu_which, seqs[0], args.causal, args.hd)
    if args.part == "basetime":
        return part_basetime(out_dir, seqs, args.alt_lib, args.hd)
    if args.part == "fa3_basetime":
        return part_fa3_basetime(out_dir, seqs)
    if args.part == "basetime_target":
        return part_basetime_target(seqs, args.alt_lib, args.hd, 4)
    # Shares of the budget (a cold machine spends ~60 s of the check on first launches); the FA3 anchor
    # gets what is left.
    parts = [("check", 0.3), ("bench", 0.4), ("sass", 0.05)] + ([("fa3", 0)] if args.fa3 else [])
    t0 = time.time()
    for part, share in parts:
        limit = int(share * args.budget)
        if part == "fa3":
            limit = int(args.budget - (time.time() - t0))
            if limit < 30:
                print("no time left for the FA3 anchor", flush=True)
                continue
        cmd = [sys.executable, __file__, "--part", part, "--out", str(out_dir), "--seqs", args.seqs,
               "--budget", str(limit)]
        try:
            subprocess.run(cmd, timeout=limit + 10)
        except subprocess.TimeoutExpired:
            print(f"part {part} timed out after {limit} s", flush=True)
    table(out_dir)


if __name__ == "__main__":
    main()
