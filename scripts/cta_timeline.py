"""Per-unit timeline of the sm90 kernels, to see where a kernel's time goes beside its key loop: with a
library built with `--define RINGFA3_TRACE=1` (csrc/cta_trace.h), each unit of work records its SM and
clock64 at its start, when its first operands have landed, at its key loop's end and at its end. A unit
is a CTA of the backward's main kernel (start: the CTA's; landed: K/V) or a tile of the persistent
forward (start: the tile id received; landed: the first block's S).
Prints per shape (bf16, FA3 convention, --hd 128 by default) the median prologue, loop and epilogue of a
unit in cycles, their shares of all unit time, the gaps between an SM's units and the SMs' tail; from the
units' %globaltimer at start and end, the kernel's span and the SMs' late starts and early finishes.

    python scripts/build_csrc.py --only bf16:128 --define RINGFA3_TRACE=1 --lib .build/dev/trace.so
    RINGFA3_SM90_LIB=$PWD/.build/dev/trace.so python3 scripts/cta_timeline.py --pass bwd --seqs 4096,8192 [--causal]
"""
import argparse
import json
import os
import statistics


def summarize(rows):
    """rows: one (sm, start, landed, loop_end, end[, global start, global end]) per unit: clock64 values,
    which compare only within one SM (their differences everywhere), then %globaltimer ns. Medians of
    the phases and of the gaps between consecutive units of an SM; the shares of the prologue and
    epilogue in all unit time; the SMs' idle share of their spans (first start to last end); the tail
    share, SM time left idle while the longest span runs (all SMs start together: wave quantization and
    uneven units); units per SM. With global times: the kernel's span (first start to last end) in us,
    and of it, the SMs' mean late start and mean early finish."""
    done = [r for r in rows if r[4]]   # a unit not recorded (or no trace build): all zero
    if not done:
        raise SystemExit("no unit recorded: is the library built with --define RINGFA3_TRACE=1?")
    phased = [r for r in done if r[2]]   # a forward tile with no key block records no landing
    prologue = [r[2] - r[1] for r in phased]
    loop = [r[3] - r[2] for r in phased]
    epilogue = [r[4] - r[3] for r in phased]
    by_sm = {}
    for r in done:
        by_sm.setdefault(r[0], []).append(r)
    gaps, busy, spans = [], 0, []
    for units in by_sm.values():
        units.sort(key=lambda r: r[1])
        gaps += [b[1] - a[4] for a, b in zip(units, units[1:])]
        busy += sum(r[4] - r[1] for r in units)
        spans.append(units[-1][4] - units[0][1])
    span = sum(spans)
    per_sm = [len(c) for c in by_sm.values()]
    total = sum(r[4] - r[1] for r in done)
    extra = {}
    if len(done[0]) > 5 and done[0][5]:
        t0, t1 = min(r[5] for r in done), max(r[6] for r in done)
        first = [min(r[5] for r in u) - t0 for u in by_sm.values()]
        last = [t1 - max(r[6] for r in u) for u in by_sm.values()]
        extra = dict(span_us=round((t1 - t0) / 1e3, 1), late_start=round(statistics.mean(first) / (t1 - t0), 4),
                     early_finish=round(statistics.mean(last) / (t1 - t0), 4))
    med = lambda xs: statistics.median(xs) if xs else 0   # noqa: E731
    return dict(units=len(done), sms=len(by_sm), prologue=med(prologue), loop=med(loop), epilogue=med(epilogue), gap=med(gaps),
                prologue_share=round(sum(prologue) / total, 4), epilogue_share=round(sum(epilogue) / total, 4),
                idle_share=round(1 - busy / span, 4), tail_share=round(1 - span / (len(spans) * max(spans)), 4),
                units_per_sm=(min(per_sm), max(per_sm)), **extra)


def trace_call(pass_, seq, causal, d=128):
    """Runs one traced forward or backward at `seq` rows (b = 16384 / seq, 16 heads) and returns its
    units' rows (the second call's: the first pays for module loads)."""
    import torch
    from ringfa3.ops import sm90
    be = sm90.BACKEND
    if be is None:
        raise SystemExit("sm90 backend unavailable (RINGFA3_SM90_LIB, CUDA)")
    b, h = 16384 // seq, 2048 // d
    q, k, v, dout = (torch.randn(b, seq, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    out, lse = be.forward(q, k, v, causal, None, (-1, -1), False)
    if pass_ == "fwd":
        units = -(-seq // 64) * b * h   # forward tiles: 64 rows or more each
        call = lambda: be.forward(q, k, v, causal, None, (-1, -1), False)   # noqa: E731
    else:
        # CTAs: key blocks x kv heads x batch (bwd_launch.h); the tail split (bwd_split.h) adds at most
        # 3 pieces per tile
        units = 4 * -(-seq // be._lib.ringfa3_sm90_bwd_block_n()) * b * h
        call = lambda: be.backward(dout, q, k, v, out, lse, causal, d ** -0.5, (-1, -1), False, False)   # noqa: E731
    trace = torch.zeros(units, 7, device="cuda", dtype=torch.int64)   # (units, fields of cta_trace.h)
    for _ in range(2):
        trace.zero_()
        os.environ["RINGFA3_TRACE_PTR"] = str(trace.data_ptr())
        try:
            call()
        finally:
            del os.environ["RINGFA3_TRACE_PTR"]
        torch.cuda.synchronize()
    return [tuple(r) for r in trace.cpu().tolist()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pass", dest="pass_", choices=("fwd", "bwd"), default="bwd")
    ap.add_argument("--seqs", default="4096,8192,16384")
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--hd", type=int, default=128, help="head dim (hidden 2048)")
    ap.add_argument("--dump", help="also write every shape's rows to DUMP as JSON")
    args = ap.parse_args()
    dumped = {}
    for s in (int(x) for x in args.seqs.split(",")):
        rows = trace_call(args.pass_, s, args.causal, args.hd)
        print(json.dumps(dict(pass_=args.pass_, hd=args.hd, seq=s, causal=args.causal, **summarize(rows))), flush=True)
        dumped[s] = [r for r in rows if r[4]]
    if args.dump:
        with open(args.dump, "w") as f:
            json.dump(dumped, f)


if __name__ == "__main__":
    main()
