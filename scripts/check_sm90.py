"""Device script for the sm90 backend: correctness against float64 (dense and packed documents), then
timing of ours, cuDNN and FA3 side by side (FA3 convention), packed documents through our varlen kernel
beside FA2's, then SASS facts and ncu of ours and of FA3's kernel on the same inputs (summary +
warp-stall samples per SASS instruction). One call does all:

    PYTHONUNBUFFERED=1 python3 scripts/check_sm90.py --out $OUT [--parts sass,check,bench,varlen,ncu]
        [--alt-lib NAME=PATH ...]   # other builds of the library, checked and timed on the same inputs

The library is ringfa3/lib/libringfa3_sm90.so, or $RINGFA3_SM90_LIB. Each part runs in its own
subprocess with a timeout, so a hung kernel costs that part only. Writes $OUT/sm90_check.json,
sm90_bench.json, sm90_varlen_bench.json, sm90_sass.json, sm90_ncu{,_fa3}.txt,
sm90_ncu_source{,_fa3}.csv; prints a ratio table last. `--part clock` (not in `all`): sustained runs at
the power cap with NVML's SM clock and power beside (sm90_clock.json; needs the nvidia-ml-py wheel).
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIB = Path(os.environ.get("RINGFA3_SM90_LIB", ROOT / "ringfa3" / "lib" / "libringfa3_sm90.so"))


def load_backend():
    from ringfa3.ops import sm90 as mod
    if mod.BACKEND is None:
        sys.exit(f"sm90 backend unavailable (library at {LIB} missing or no CUDA)")
    return mod.BACKEND


# ----------------------------------------------------------------------------------------- checks
def ref_attention(q, k, v, causal, window, scale):
    """float64 out (b, s_q, h, d) and lse (b, h, s_q): the tests' ground truth (tests/reference.py)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from reference import attention64
    return attention64(q.double(), k.double(), v.double(), causal, scale, window)


def rel_err(x, ref):
    return float((x.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def check_case(be, case, gen):
    import torch
    import torch.nn.functional as F
    b, s_q, s_k, h, h_kv, d = case["shape"]
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16}[case.get("dtype", "bf16")]
    causal, window = case.get("causal", False), tuple(case.get("window", (-1, -1)))
    out_fp32, merge = case.get("out_fp32", False), case.get("merge", False)
    q = torch.randn(b, s_q, h, d, device="cuda", dtype=dt, generator=gen)
    k = torch.randn(b, s_k, h_kv, d, device="cuda", dtype=dt, generator=gen)
    v = torch.randn(b, s_k, h_kv, d, device="cuda", dtype=dt, generator=gen)
    scale = d ** -0.5
    ref_o, ref_lse = ref_attention(q, k, v, causal, window, scale)
    res = dict(case)
    if merge:
        # Keys split in two: first part seen fully, second part with the case's mask (bottom-right
        # aligned for the full key length, so the diagonal lands in the second part).
        split = case["split"]
        out = torch.zeros(b, s_q, h, d, device="cuda", dtype=torch.float32)
        lse = torch.full((b, h, s_q), -math.inf, device="cuda")
        be.forward_merge(q, k[:, :split], v[:, :split], False, scale, (-1, -1), out, lse)
        be.forward_merge(q, k[:, split:], v[:, split:], causal, scale, window, out, lse)
    else:
        out, lse = be.forward(q, k, v, causal, scale, window, out_fp32)
    torch.cuda.synchronize()
    dead = torch.isinf(ref_lse)                                           # fully masked rows
    res["dead_rows"] = int(dead.sum())
    res["nan"] = bool(torch.isnan(out).any() or torch.isnan(lse).any())
    res["err"] = rel_err(out, ref_o)
    live = ~dead
    res["lse_err"] = float((lse.double() - ref_lse)[live].abs().max()) if live.any() else 0.0
    res["dead_ok"] = bool(torch.isneginf(lse[dead]).all() and
                          (out.transpose(1, 2)[dead] == 0).all()) if dead.any() else True
    res["round_err"] = rel_err(ref_o.to(dt), ref_o)                       # dtype rounding floor
    cudnn_ok = s_q == s_k and window == (-1, -1) and not merge
    if cudnn_ok:
        try:
            from torch.nn.attention import sdpa_kernel, SDPBackend
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                o2 = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                    is_causal=causal, scale=scale, enable_gqa=h != h_kv)
            res["cudnn_err"] = rel_err(o2.transpose(1, 2), ref_o)
        except Exception as e:   # noqa: BLE001 - record why the anchor is missing, keep checking
            res["cudnn_err"] = None
            res["cudnn_note"] = repr(e)[:120]
    base = res.get("cudnn_err")
    limit = 1.5 * base + 1e-4 if base else 4.0 * res["round_err"] + 1e-4
    if out_fp32 or merge:
        limit = max(limit, 3.0 * res["round_err"] + 1e-4)
    res["limit"] = limit
    res["pass"] = (not res["nan"]) and res["err"] <= limit and res["lse_err"] < 2e-2 and res["dead_ok"]
    return res


CASES = [
    dict(name="hd128 full", shape=(2, 1024, 1024, 4, 4, 128)),
    dict(name="hd128 causal", shape=(2, 1024, 1024, 4, 4, 128), causal=True),
    dict(name="hd128 odd full", shape=(1, 1000, 1000, 3, 3, 128)),
    dict(name="hd128 odd causal", shape=(1, 1000, 1000, 3, 3, 128), causal=True),
    dict(name="sq<sk causal", shape=(2, 300, 777, 2, 2, 128), causal=True),
    dict(name="sq<sk full", shape=(2, 300, 777, 2, 2, 128)),
    dict(name="sq>sk causal (dead rows)", shape=(1, 777, 300, 2, 2, 128), causal=True),
    dict(name="gqa 8/2 causal", shape=(2, 512, 512, 8, 2, 128), causal=True),
    dict(name="mqa 4/1 full", shape=(1, 640, 640, 4, 1, 128)),
    dict(name="window (128,64)", shape=(1, 1024, 1024, 2, 2, 128), window=(128, 64)),
    dict(name="causal+window 200", shape=(1, 1024, 1024, 2, 2, 128), causal=True, window=(200, -1)),
    dict(name="tiny s=1", shape=(3, 1, 1, 2, 2, 128)),
    dict(name="fp16 causal", shape=(2, 1024, 1024, 4, 4, 128), dtype="fp16", causal=True),
    dict(name="out fp32 causal", shape=(2, 1024, 1024, 4, 4, 128), causal=True, out_fp32=True),
    dict(name="hd64 causal", shape=(2, 1024, 1024, 4, 4, 64), causal=True),
    dict(name="hd64 odd full", shape=(1, 999, 999, 4, 4, 64)),
    dict(name="hd256 causal", shape=(2, 1024, 1024, 4, 4, 256), causal=True),
    dict(name="hd256 odd full", shape=(1, 999, 999, 2, 2, 256)),
    dict(name="fp16 hd64 gqa", shape=(1, 512, 512, 4, 2, 64), dtype="fp16"),
    dict(name="merge full", shape=(2, 512, 1024, 4, 4, 128), merge=True, split=512),
    dict(name="merge causal", shape=(2, 512, 1024, 4, 4, 128), merge=True, split=512, causal=True),
    dict(name="merge gqa odd", shape=(1, 333, 900, 4, 2, 128), merge=True, split=400),
    dict(name="merge window right", shape=(1, 512, 1024, 2, 2, 128), merge=True, split=512, window=(-1, 100)),
    dict(name="many tiles (persistent)", shape=(4, 2048, 2048, 16, 4, 128), causal=True),
    # from 8k keys hd128 runs 176-key blocks (full and causal; the merge of a ring step too)
    dict(name="long full", shape=(1, 8200, 8200, 2, 2, 128)),
    dict(name="long causal", shape=(1, 8200, 8200, 2, 2, 128), causal=True),
    dict(name="long sq<sk causal gqa", shape=(1, 5000, 9000, 4, 2, 128), causal=True),
    dict(name="long merge causal", shape=(1, 4096, 12288, 2, 2, 128), merge=True, split=8192, causal=True),
    # hd64 runs 3 consumer warpgroups (192-row tiles) since run 4: tails, masks, dead rows, merge
    dict(name="hd64 odd causal", shape=(2, 1000, 1000, 4, 4, 64), causal=True),
    dict(name="hd64 sq>sk causal dead", shape=(1, 777, 300, 2, 2, 64), causal=True),
    dict(name="hd64 gqa window", shape=(1, 1500, 1500, 8, 2, 64), window=(300, 200)),
    dict(name="hd64 merge causal", shape=(2, 512, 1024, 4, 4, 64), merge=True, split=512, causal=True),
    dict(name="hd64 many tiles", shape=(3, 1536, 1536, 16, 16, 64), causal=True),
    dict(name="hd64 full many", shape=(2, 2000, 2000, 16, 16, 64)),
    dict(name="hd128 full sq<sk odd", shape=(2, 300, 777, 2, 2, 128)),
    dict(name="hd128 full many", shape=(2, 2000, 2000, 16, 16, 128)),
    # full attention from 1k keys with an even number of query blocks: 2-CTA clusters (RINGFA3_CLUSTER;
    # 128-key and 176-key blocks, key and query tails, GQA, fp16, ring-step merges)
    dict(name="cluster full", shape=(1, 4096, 4100, 4, 4, 128)),
    dict(name="cluster long gqa fp16", shape=(1, 8192, 9000, 4, 2, 128), dtype="fp16"),
    dict(name="cluster long query tail", shape=(1, 8100, 8200, 2, 2, 128)),
    dict(name="cluster long merge", shape=(1, 4096, 16384, 2, 2, 128), merge=True, split=8192),
    # causal and right-only windows from 8k keys: the pair walks the union of its tiles' key blocks;
    # rows < 1950 see no key, so query blocks 14 and 15 pair an empty tile with a live one
    dict(name="cluster long causal fp16", shape=(1, 8192, 8192, 2, 2, 128), dtype="fp16", causal=True),
    dict(name="cluster causal half-empty pair", shape=(1, 10400, 8450, 1, 1, 128), causal=True),
    dict(name="cluster right window", shape=(1, 8192, 8192, 2, 2, 128), window=(-1, 300)),
    dict(name="cluster causal merge", shape=(1, 4096, 16384, 2, 2, 128), merge=True, split=8192, causal=True),
    # many tiles, several launches in a row: the dynamic counter must come back to zero each time
    dict(name="dynamic sched again 1", shape=(3, 1536, 1536, 16, 16, 128), causal=True),
    dict(name="dynamic sched again 2", shape=(3, 1536, 1536, 16, 16, 128)),
]


def alt_backends(alt_libs):
    """name -> backend for each NAME=PATH of --alt-lib (other builds timed beside the default)."""
    from ringfa3.ops.sm90 import backend_from
    out = {}
    for spec in alt_libs:
        name, path = spec.split("=", 1)
        be = backend_from(path)
        if be is None:
            print(f"alt lib {name}: {path} not loadable")
        else:
            out[name] = be
    return out


# The subset an --alt-lib build is checked on: every head dim, tails, masks, merge, many tiles.
ALT_CASES = {"long causal", "long sq<sk causal gqa", "hd128 odd full", "hd128 odd causal", "window (128,64)", "causal+window 200", "hd64 odd full",
             "hd64 odd causal", "hd64 gqa window", "hd256 odd full", "hd256 causal", "merge gqa odd",
             "hd128 full many", "hd64 many tiles", "hd128 full", "merge full", "hd64 full many", "cluster full",
             "cluster long gqa fp16", "cluster long query tail", "cluster long merge", "cluster long causal fp16",
             "cluster causal half-empty pair", "cluster right window", "cluster causal merge"}


def part_check(out_dir, alt_libs=()):
    import torch
    be = load_backend()
    gen = torch.Generator(device="cuda")
    gen.manual_seed(int(time.time()))   # fresh inputs every run
    results = []
    runs = [(case, "", be) for case in CASES]
    for name, alt in alt_backends(alt_libs).items():   # an A/B build must be right too (its head dims)
        runs += [(dict(case, name=f"[{name}] {case['name']}"), name, alt) for case in CASES
                 if case["name"] in ALT_CASES]
    for case, lib_name, b in runs:
        try:
            r = check_case(b, case, gen)
        except Exception as e:   # noqa: BLE001
            if lib_name and "unsupported" in repr(e):
                continue   # head dim not built into this A/B library
            r = dict(case, **{"pass": False, "error": repr(e)[:300]})
        results.append(r)
        print(f"  {'PASS' if r['pass'] else 'FAIL'} {r['name']:28s} err={r.get('err', float('nan')):.2e} "
              f"cudnn={r.get('cudnn_err') or float('nan'):.2e} round={r.get('round_err', float('nan')):.2e} "
              f"lse={r.get('lse_err', float('nan')):.1e} dead={r.get('dead_rows', '-')} {r.get('error', '')}", flush=True)
    # Packed documents through the varlen kernel.
    sys.path.insert(0, str(ROOT / "tests"))
    from varlen_cases import VARLEN_CASES, run_case
    for case in VARLEN_CASES:
        try:
            r = run_case(be, case, gen)
        except Exception as e:   # noqa: BLE001
            r = dict(name=case["name"], **{"pass": False, "error": repr(e)[:300]})
        r["name"] = "varlen " + r["name"]
        results.append(r)
        print(f"  {'PASS' if r['pass'] else 'FAIL'} {r['name']:40s} err={r.get('err', float('nan')):.2e} "
              f"limit={r.get('limit', float('nan')):.2e} lse={r.get('lse_err', float('nan')):.1e} "
              f"{r.get('error', '')}", flush=True)
    # Repeatability: same inputs twice must give bit-identical outputs (a moving result is a race).
    q, k, v = (torch.randn(4, 2048, 16, 128, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))
    o1, _ = be.forward(q, k, v, True, None, (-1, -1), False)
    o2, _ = be.forward(q, k, v, True, None, (-1, -1), False)
    same = bool(torch.equal(o1, o2))
    print(f"  repeatable (bitwise, causal 4x2048x16x128): {same}")
    (Path(out_dir) / "sm90_check.json").write_text(json.dumps(dict(cases=results, repeatable=same), indent=1))
    print(f"correctness: {sum(r['pass'] for r in results)}/{len(results)} pass")


# ------------------------------------------------------------------------------------------ bench
def graph_replay(fn):
    """fn captured in a CUDA graph; returns its replay: the kernel without Python/launch overhead."""
    import torch
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def time_rotated(fns, flops, rounds):
    """TFLOP/s of every callable in fns (name -> fn), the median over `rounds` rounds whose order is
    rotated each round: at the power cap one kernel's do_bench moves by up to +-7% with its place in
    the sequence (bench/NOTES.md run 89), so no contender always runs first. Names ending in "_graph"
    are timed as CUDA-graph replays. The per-round values come back too ("<name>_rounds")."""
    import statistics
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from triton.testing import do_bench
    out, timed = {}, {}
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        for name, fn in fns.items():
            try:
                timed[name] = graph_replay(fn) if name.endswith("_graph") else fn
            except Exception as e:   # noqa: BLE001 - keep timing the rest
                out[name + "_error"] = repr(e)[:160]
        names = list(timed)
        for r in range(rounds if names else 0):
            for name in names[r % len(names):] + names[:r % len(names)]:
                if name + "_error" in out:
                    continue
                try:
                    ms = do_bench(timed[name], warmup=25, rep=200, return_mode="median")
                    out.setdefault(name + "_rounds", []).append(round(flops / ms / 1e9, 1))
                except Exception as e:   # noqa: BLE001
                    out[name + "_error"] = repr(e)[:160]
    for name in fns:   # a contender that failed reads nan, its error beside it
        out[name] = statistics.median(out[name + "_rounds"]) if name + "_rounds" in out else float("nan")
    return out


def part_bench(out_dir, seqs, hds, extra_hds, extra_seqs, alt_libs=(), rounds=3):
    import torch
    import torch.nn.functional as F
    be = load_backend()
    alts = alt_backends(alt_libs)
    try:
        import fa3_fwd_interface as fa3
    except Exception as e:   # noqa: BLE001
        fa3 = None
        print("fa3 import failed:", repr(e)[:200])
    meta = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, cudnn=torch.backends.cudnn.version(),
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    print(json.dumps(meta))
    rows = []
    plan = [(hd, s) for hd in hds for s in seqs] + [(hd, s) for hd in extra_hds for s in extra_seqs]
    for hd, s in plan:
        b, h = 16384 // s, 2048 // hd
        for causal in (False, True):
            flops = 4 * b * h * s * s * hd / (2 if causal else 1)
            q, k, v = (torch.randn(b, s, h, hd, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            row = dict(hd=hd, seq=s, causal=causal, rounds=rounds)
            qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))   # (b, h, s, d) as in the anchor
            fns = dict(ours=lambda: be.forward(q, k, v, causal, None, (-1, -1), False))
            for name, alt in alts.items():   # other builds, same inputs, same run
                fns[f"ours_{name}"] = lambda alt=alt: alt.forward(q, k, v, causal, None, (-1, -1), False)
            fns["cudnn"] = lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
            if fa3 is not None:
                fns["fa3"] = lambda: fa3.flash_attn_func(q, k, v, causal=causal)
            if hd == 128:   # the same without host overhead (CUDA graph replay)
                fns.update({name + "_graph": fns[name] for name in ("ours", "cudnn", "fa3") if name in fns})
            row.update(time_rotated(fns, flops, rounds))
            rows.append(row)
            print(json.dumps(row), flush=True)
            del q, k, v, qt, kt, vt
            torch.cuda.empty_cache()
    (Path(out_dir) / "sm90_bench.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))


# ----------------------------------------------------------------------------------------- varlen
def part_varlen(out_dir):
    """Block lists of one local problem (16k tokens, hd128, 16 heads) merged into fp32 accumulators
    through forward_blocks, on the same inputs: sm90's varlen kernel (one launch per step, also where
    blocks.few_large would keep sm90 on one dense call per block), sm90 one call per block, FA2's
    varlen kernel (flash), and cudnn (its own kernel per block for a few large ones, else FA2's varlen).
    Problems: packed causal documents of three mean lengths, and zigzag causal steps of an 8-rank
    virtual ring over 128k tokens (the diagonal step: 2 blocks; an off-diagonal one: 1 block)."""
    import random
    import torch
    from triton.testing import do_bench
    from ringfa3.ops import BACKENDS
    from ringfa3.ops import sm90 as sm90_mod
    from ringfa3.ops.blocks import Block, forward_blocks
    from ringfa3.ops.masks import tile_mask
    from ringfa3.parallel.plan import ring_blocks
    be = load_backend()
    few_large_default = sm90_mod.few_large
    s, h, d = 16384, 16, 128
    q, k, v = (torch.randn(1, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    acc = torch.zeros(1, s, h, d, device="cuda")                # (1, s, h, d)
    lacc = torch.full((1, h, s), -math.inf, device="cuda")      # (1, h, s)
    problems = []
    for mean in (256, 1024, 4096):   # document lengths uniform in [mean / 4, 7 mean / 4]
        rng, bounds = random.Random(mean), [0]
        while bounds[-1] < s:
            bounds.append(min(s, bounds[-1] + rng.randint(mean // 4, 7 * mean // 4)))
        problems.append((f"docs mean {mean}", tuple(Block(a, b, a, b, causal=True)
                                                    for a, b in zip(bounds[:-1], bounds[1:]))))
    for rank, src in ((3, 3), (3, 1)):
        problems.append((f"ring8 zigzag r{rank} s{src}", ring_blocks(s, 8, rank, src, "zigzag", True)))
    rows = []
    for name, blocks in problems:
        pairs = sum(int(tile_mask(0, b.q1 - b.q0, 0, b.k1 - b.k0, b.q1 - b.q0, b.k1 - b.k0, b.causal, b.window,
                                  "cuda").sum()) for b in blocks)
        row = dict(problem=name, blocks=len(blocks))
        variants = (("sm90_varlen", be, True), ("sm90_per_block", be, False), ("fa2_varlen", BACKENDS.get("flash"), None),
                    ("cudnn", BACKENDS.get("cudnn"), None))
        for variant, impl, varlen in variants:
            if impl is None:
                continue
            if varlen is not None:
                be.varlen_blocks = varlen
            sm90_mod.few_large = (lambda blocks: False) if varlen else few_large_default   # noqa: B023
            try:
                ms = do_bench(lambda: forward_blocks(impl, q, k, v, blocks, d ** -0.5, acc, lacc),  # noqa: B023
                              warmup=10, rep=100, return_mode="median")
                row[variant] = round(4 * h * d * pairs / ms / 1e9, 1)
            except Exception as e:   # noqa: BLE001 - keep timing the rest
                row[variant + "_error"] = repr(e)[:160]
        sm90_mod.few_large = few_large_default
        rows.append(row)
        print(json.dumps(row), flush=True)
    (Path(out_dir) / "sm90_varlen_bench.json").write_text(json.dumps(rows, indent=1))


# ------------------------------------------------------------------------------------------- sass
def part_sass(out_dir):
    from loop_anatomy import sass_counts
    counts = sass_counts(str(LIB), "", dict(HGMMA=r"\bHGMMA\b", LDL=r"\bLDL\b", STL=r"\bSTL\b", SETMAXREG=r"SETMAXREG",
                                             UTMALDG=r"UTMALDG", SYNCS=r"\bSYNCS\."))
    facts = {}
    for name, c in counts.items():
        m = re.search(r"(Fwd|Bwd)Traits\w*?(bfloat16|half)\w*?ELi(\d+)ELi(\d+)ELi(\d+)ELi(\d+)E", name)
        key = (f"{m.group(1).lower()}_{'bf16' if m.group(2) == 'bfloat16' else 'fp16'}_hd{m.group(3)}_m{m.group(4)}"
               f"n{m.group(5)}s{m.group(6)}") if m else name[:60]
        facts[key] = c
    print("sass:", json.dumps(facts))
    (Path(out_dir) / "sm90_sass.json").write_text(json.dumps(facts, indent=1))


# ------------------------------------------------------------------------------------------ clock
def part_clock(out_dir, seconds=3.0):
    """Sustained runs of ours, cuDNN and FA3 (hd128 16k, full and causal; twice each, alternating)
    while NVML samples the SM clock, the power and the clock-limit reasons every 20 ms: whether a
    kernel's speed at boost clocks is set by the power limit (under ncu, at locked base clocks, ours
    and FA3's forward take the same time). Writes sm90_clock.json."""
    import threading
    import pynvml
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel, SDPBackend
    import fa3_fwd_interface as fa3
    be = load_backend()
    pynvml.nvmlInit()
    dev = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())

    def sustained(fn, flops):   # TF/s of back-to-back calls for `seconds`, with NVML samples beside
        samples, stop = [], threading.Event()

        def sample():
            while not stop.is_set():
                samples.append((pynvml.nvmlDeviceGetClockInfo(dev, pynvml.NVML_CLOCK_SM),
                                pynvml.nvmlDeviceGetPowerUsage(dev) / 1000,
                                pynvml.nvmlDeviceGetCurrentClocksEventReasons(dev)))
                time.sleep(0.02)
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        thread = threading.Thread(target=sample)
        thread.start()
        n, t0 = 0, time.time()
        while time.time() - t0 < seconds:
            for _ in range(10):
                fn()
            n += 10
            torch.cuda.synchronize()
        dt = time.time() - t0
        stop.set()
        thread.join()
        steady = samples[len(samples) // 4:]   # past the ramp
        med = lambda xs: sorted(xs)[len(xs) // 2]   # noqa: E731
        reasons = 0
        for *_, r in steady:
            reasons |= r
        return dict(tflops=round(flops * n / dt / 1e12, 1), sm_mhz=med([c for c, _, _ in steady]),
                    watts=round(med([w for _, w, _ in steady]), 1), reasons=hex(reasons), samples=len(steady))

    rows = []
    s, hd, h = 16384, 128, 16
    q, k, v = (torch.randn(1, s, h, hd, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    for causal in (False, True):
        flops = 4 * h * s * s * hd / (2 if causal else 1)

        def cudnn():
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
        fns = dict(ours=lambda: be.forward(q, k, v, causal, None, (-1, -1), False), cudnn=cudnn,
                   fa3=lambda: fa3.flash_attn_func(q, k, v, causal=causal))
        for rnd in range(2):
            for name, fn in fns.items():
                row = dict(kernel=name, causal=causal, round=rnd, **sustained(fn, flops))
                rows.append(row)
                print(json.dumps(row), flush=True)
    (Path(out_dir) / "sm90_clock.json").write_text(json.dumps(dict(gpu=torch.cuda.get_device_name(), rows=rows),
                                                              indent=1))


# -------------------------------------------------------------------------------------------- ncu
def ncu_launches(make_fn, seq):
    """Three launches of make_fn(q, k, v)() at hd128, `seq` rows per sequence (16k tokens in all, FA3
    convention), for ncu to profile the third (launches 0-1 are warm-up)."""
    import torch
    q, k, v = (torch.randn(16384 // seq, seq, 16, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    fn = make_fn(q, k, v)
    for _ in range(3):
        fn()
    torch.cuda.synchronize()


def part_ncu_target(which="ours", causal=False, seq=16384):
    """ncu_launches of ours, or of FA3's kernel on the same inputs (the anchor's counters beside ours)."""
    def make_fn(q, k, v):
        if which == "fa3":
            import fa3_fwd_interface as fa3
            return lambda: fa3.flash_attn_func(q, k, v, causal=causal)
        be = load_backend()
        return lambda: be.forward(q, k, v, causal, None, (-1, -1), False)
    ncu_launches(make_fn, seq)


def ncu_profile(kernel, target_cmd, out_txt, out_csv, sections, keep_pattern):
    """ncu of the third launch of `kernel` (a regex of function names; "mangled:REGEX" of mangled ones)
    in `target_cmd` (launches 0-1 are warm-up): the sections' details page into out_txt and warp-stall
    samples per SASS instruction into out_csv (for reading on the CPU machine); returns the details
    lines matching keep_pattern."""
    rep = Path("/tmp") / Path(out_txt).stem   # the report stays there; its text pages come back
    base, kernel = kernel.split(":", 1) if kernel.startswith("mangled:") else ("function", kernel)
    cmd = ["ncu", "--kernel-name-base", base, "--kernel-name", f"regex:{kernel}", "--launch-skip", "2",
           "--launch-count", "1", "-f", "-o", str(rep)]
    for sec in sections:
        cmd += ["--section", sec]
    r = subprocess.run(cmd + target_cmd, capture_output=True, text=True)
    r2 = subprocess.run(["ncu", "-i", f"{rep}.ncu-rep", "--page", "details"], capture_output=True, text=True)
    Path(out_txt).write_text(r.stdout + r.stderr + r2.stdout + r2.stderr)
    r3 = subprocess.run(["ncu", "-i", f"{rep}.ncu-rep", "--page", "source", "--csv", "--print-source", "sass"],
                        capture_output=True, text=True)
    Path(out_csv).write_text(r3.stdout + r3.stderr)
    return [ln for ln in r2.stdout.splitlines() if re.search(keep_pattern, ln)]


def part_ncu(out_dir, causal=False, seq=16384, script=__file__, stem="sm90"):
    """ncu of ours and of FA3 at hd128, `seq` rows (full, or causal): the summary sections, and warp-stall samples
    per SASS instruction (where the consumer warps wait), exported as CSV for reading on the CPU machine.
    ncu locks the clocks at base: for the power cap's share see --part clock (run 17). `script`'s
    `--part ncu_target` makes the launches (check_sm90_fp8.py reuses this for e4m3, files {stem}_ncu*)."""
    sections = ["SpeedOfLight", "ComputeWorkloadAnalysis", "WarpStateStats", "SchedulerStats", "Occupancy",
                "SourceCounters"]
    for which, kernel in (("ours", "fwd_kernel"), ("fa3", "device_kernel")):
        suffix = ("" if which == "ours" else "_fa3") + ("_causal" if causal else "") + ("" if seq == 16384 else f"_{seq}")
        target = [sys.executable, script, "--part", "ncu_target", "--ncu-which", which, "--ncu-seq", str(seq)]
        target += ["--causal"] if causal else []
        keep = ncu_profile(kernel, target,
                           Path(out_dir) / f"{stem}_ncu{suffix}.txt", Path(out_dir) / f"{stem}_ncu_source{suffix}.csv",
                           sections, r"Duration|Throughput|Pipe|Issue|Stall|Eligible|Active Warps|No Eligible|"
                                     r"Executed Ipc|Registers")
        print(f"--- {which}")
        print("\n".join(keep[:40]))


def basetime_plan(hds, seqs, alt_libs, anchor="fa3"):
    """(label, hd, seq, causal) of every timed launch group of --part basetime, in launch order: ours,
    each --alt-lib build, then the anchor."""
    libs = ["ours"] + [spec.split("=", 1)[0] for spec in alt_libs] + [anchor]
    return [(lib, hd, s, causal) for hd in hds for s in seqs for causal in (False, True) for lib in libs]


def part_basetime_target(hds, seqs, alt_libs, reps):
    """Launches for --part basetime: per (hd, seq, mask), each library then FA3, `reps` times each."""
    import torch
    import fa3_fwd_interface as fa3
    libs = dict(ours=load_backend(), **alt_backends(alt_libs))
    for lib, hd, s, causal in basetime_plan(hds, seqs, alt_libs):
        if lib == "ours" and not causal:   # FA3 convention: 16k tokens, hidden 2048
            q, k, v = (torch.randn(16384 // s, s, 2048 // hd, hd, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        for _ in range(reps):
            if lib == "fa3":
                fa3.flash_attn_func(q, k, v, causal=causal)
            else:
                libs[lib].forward(q, k, v, causal, None, (-1, -1), False)
        torch.cuda.synchronize()


def parse_ncu_durations(raw_csv):
    """(kernel name, µs) per profiled launch, in launch order, from ncu's `--csv --page raw` output of the
    metric gpu__time_duration.sum (its first row gives the unit)."""
    import csv
    import io
    rows = list(csv.DictReader(io.StringIO(raw_csv)))
    scale = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}
    unit = scale.get(rows[0].get("gpu__time_duration.sum", "").strip() if rows else "", None)
    if unit is None:
        return []
    return [(x["Kernel Name"], float(x["gpu__time_duration.sum"].replace(",", "")) * unit) for x in rows[1:]]


def ncu_base_durations(target_cmd, kernel_regex, raw_path):
    """Runs target_cmd under ncu with the clocks locked at base, timing the launches whose function name
    matches kernel_regex ("mangled:REGEX" for mangled names); keeps the raw CSV at raw_path; returns
    parse_ncu_durations of it and ncu's stderr."""
    base, kernel_regex = kernel_regex.split(":", 1) if kernel_regex.startswith("mangled:") else ("function", kernel_regex)
    cmd = ["ncu", "--kernel-name-base", base, "--kernel-name", f"regex:{kernel_regex}", "--metrics",
           "gpu__time_duration.sum", "--clock-control", "base", "--csv", "--page", "raw"]
    r = subprocess.run(cmd + target_cmd, capture_output=True, text=True)
    raw = "\n".join(ln for ln in r.stdout.splitlines() if ln.startswith('"'))
    Path(raw_path).write_text(raw)
    return parse_ncu_durations(raw), r.stderr


def part_basetime(out_dir, hds, seqs, alt_libs, reps=4, script=__file__, anchor="fa3", stem="sm90"):
    """Kernel durations under ncu at locked base clocks (FA3 convention), for A/B of builds whose
    difference do_bench's noise at the power cap hides: work per clock, not the clock the power cap
    allows. The first launch of each group is a warm-up; the median of the rest is kept. `script`'s
    `--part basetime_target` makes the launches of basetime_plan(..., anchor) (check_sm90_fp8.py reuses
    this for e4m3); the results go to {stem}_basetime.json."""
    import statistics
    target = [sys.executable, script, "--part", "basetime_target", "--seqs", ",".join(map(str, seqs)),
              "--hds", ",".join(map(str, hds))]
    for spec in alt_libs:
        target += ["--alt-lib", spec]
    launches, err = ncu_base_durations(target, "fwd_kernel|device_kernel", Path(out_dir) / f"{stem}_basetime_raw.csv")
    us = [t for _, t in launches]
    plan = basetime_plan(hds, seqs, alt_libs, anchor)
    if len(us) != len(plan) * reps:
        print(f"basetime: {len(us)} launches profiled, {len(plan) * reps} expected")
        print(err[-3000:])
        return 1
    out = []
    for i, (lib, hd, s, causal) in enumerate(plan):
        t = statistics.median(us[i * reps + 1:(i + 1) * reps])
        flops = 4 * 16384 * s * 2048 / (2 if causal else 1)
        out.append(dict(lib=lib, hd=hd, seq=s, causal=causal, us=round(t, 2), tflops_base=round(flops / t / 1e6, 1)))
    (Path(out_dir) / f"{stem}_basetime.json").write_text(json.dumps(out, indent=1))
    print(f"{'hd':>4} {'seq':>6} {'mask':>6} " + " ".join(f"{lib:>11}" for lib in dict.fromkeys(x['lib'] for x in out))
          + "   (TF/s at base clock; ratio to ours)")
    for hd in hds:
        for s in seqs:
            for causal in (False, True):
                grp = [x for x in out if x["hd"] == hd and x["seq"] == s and x["causal"] == causal]
                base = grp[0]["tflops_base"]
                print(f"{hd:>4} {s:>6} {'causal' if causal else 'full':>6} " +
                      " ".join(f"{x['tflops_base']:>5.0f}({x['tflops_base'] / base:.3f})" for x in grp))
    return 0


def table(out_dir):
    p = Path(out_dir) / "sm90_bench.json"
    if not p.exists():
        return
    data = json.loads(p.read_text())
    print(f"\n{data['meta']['gpu']}  torch {data['meta']['torch']}  cuDNN {data['meta']['cudnn']}  (TFLOP/s, bf16)")
    alts = sorted({k[5:] for r in data["rows"] for k in r if k.startswith("ours_") and k != "ours_graph"
                   and not k.endswith(("_error", "_rounds"))})
    print("plain = do_bench of the python call; graph = CUDA-graph replay (no host overhead); "
          "other 'ours' columns = --alt-lib builds timed on the same inputs; each the median of "
          f"{data['rows'][0].get('rounds', 1)} rounds in rotated order")
    print(f"{'hd':>4} {'seq':>6} {'mask':>6} {'ours':>6} " + "".join(f"{a[:8]:>9}" for a in alts) +
          f" {'cuDNN':>6} {'FA3':>6} {'/cuDNN':>6} {'/FA3':>5} | {'ours_g':>6} {'cudnn_g':>7} {'fa3_g':>6} {'/FA3_g':>6}")
    for r in data["rows"]:
        fa, og, fg = r.get("fa3"), r.get("ours_graph"), r.get("fa3_graph")
        print(f"{r['hd']:>4} {r['seq']:>6} {'causal' if r['causal'] else 'full':>6} {r['ours']:>6} "
              + "".join(f"{r.get('ours_' + a, '-'):>9}" for a in alts) + f" {r['cudnn']:>6} "
              f"{fa if fa else '-':>6} {r['ours'] / r['cudnn']:>6.3f} {(r['ours'] / fa) if fa else float('nan'):>5.3f} | "
              f"{og or '-':>6} {r.get('cudnn_graph', '-'):>7} {fg or '-':>6} {(og / fg) if og and fg else float('nan'):>6.3f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--part", choices=["check", "bench", "varlen", "sass", "ncu", "ncu_target", "clock", "basetime", "basetime_target", "all"], default="all")
    ap.add_argument("--ncu-which", choices=["ours", "fa3"], default="ours", help="kernel launched by --part ncu_target")
    ap.add_argument("--causal", action="store_true", help="--part ncu / ncu_target: profile the causal mask")
    ap.add_argument("--ncu-seq", type=int, default=16384, help="--part ncu / ncu_target: rows per sequence")
    ap.add_argument("--seqs", default="1024,4096,8192,16384")
    ap.add_argument("--hds", default="128")
    ap.add_argument("--extra-hds", default="64,256", help="also timed, at --extra-seqs only")
    ap.add_argument("--extra-seqs", default="4096,16384")
    ap.add_argument("--rounds", type=int, default=3, help="--part bench: rounds in rotated order per row")
    ap.add_argument("--check-timeout", type=int, default=150)
    ap.add_argument("--bench-timeout", type=int, default=240)
    ap.add_argument("--parts", default="sass,check,bench,varlen,ncu", help="parts run by --part all, in this order")
    ap.add_argument("--alt-lib", action="append", default=[],
                    help="NAME=PATH: another build of the library, checked and timed beside the default")
    args = ap.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    seqs, hds = [int(x) for x in args.seqs.split(",")], [int(x) for x in args.hds.split(",")]
    if args.part == "check":
        return part_check(args.out, args.alt_lib)
    if args.part == "bench":
        return part_bench(args.out, seqs, hds, [int(x) for x in args.extra_hds.split(",") if x],
                          [int(x) for x in args.extra_seqs.split(",") if x], args.alt_lib, args.rounds)
    if args.part == "varlen":
        return part_varlen(args.out)
    if args.part == "sass":
        return part_sass(args.out)
    if args.part == "ncu":
        return part_ncu(args.out, args.causal, args.ncu_seq)
    if args.part == "clock":
        return part_clock(args.out)
    if args.part == "basetime":
        return part_basetime(args.out, hds, seqs, args.alt_lib)
    if args.part == "basetime_target":
        return part_basetime_target(hds, seqs, args.alt_lib, 4)
    if args.part == "ncu_target":
        return part_ncu_target(args.ncu_which, args.causal, args.ncu_seq)
    me = [sys.executable, __file__, "--out", args.out, "--seqs", args.seqs, "--hds", args.hds,
          "--extra-hds", args.extra_hds, "--extra-seqs", args.extra_seqs]
    for spec in args.alt_lib:
        me += ["--alt-lib", spec]
    limits = dict(sass=60, check=args.check_timeout, bench=args.bench_timeout, varlen=90, ncu=200)
    for part in args.parts.split(","):
        limit = limits[part]
        t = time.time()
        try:
            rc = subprocess.run(me + ["--part", part], timeout=limit).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        print(f"[{part}] rc={rc} {time.time() - t:.0f}s", flush=True)
        if part == "check" and rc != 0:
            print("correctness part failed: skipping the benchmark")
            break
    table(args.out)


if __name__ == "__main__":
    main()
