"""Per-CTA timeline of the sm90 backward's main kernel, for the per-clock gap to FA3's (bench/NOTES-bwd.md
run 148): with a library built with `--define RINGFA3_BWD_TRACE=1`, each CTA records its SM and clock64
at its start, when K/V have landed, at its key loop's end and at its consumers' end (csrc/bwd/cta_trace.h).
Prints per shape (hd128 bf16, FA3 convention) the median prologue, loop and epilogue of a CTA in cycles,
their shares of all CTA time, and the SMs' idle share between their CTAs.

    python scripts/build_csrc.py --only bf16:128 --define RINGFA3_BWD_TRACE=1 --lib .build/dev/trace.so
    RINGFA3_SM90_LIB=$PWD/.build/dev/trace.so python3 scripts/bwd_cta_timeline.py --seqs 4096,8192 [--causal]
"""
import argparse
import json
import os
import statistics


def summarize(rows):
    """rows: one (sm, start, kv_landed, loop_end, end) of clock64 values per CTA; clock values compare only
    within one SM, their differences everywhere. Medians of the phases and of the gaps between
    consecutive CTAs of an SM; the shares of the prologue and epilogue in all CTA time; the SMs' idle
    share of their spans (first start to last end); the tail share, SM time left idle while the
    longest span runs (all SMs start together: wave quantization and uneven CTAs); CTAs per SM."""
    done = [r for r in rows if r[4]]   # a CTA not recorded (or no trace build): all zero
    if not done:
        raise SystemExit("no CTA recorded: is the library built with --define RINGFA3_BWD_TRACE=1?")
    prologue = [r[2] - r[1] for r in done]
    loop = [r[3] - r[2] for r in done]
    epilogue = [r[4] - r[3] for r in done]
    by_sm = {}
    for r in done:
        by_sm.setdefault(r[0], []).append(r)
    gaps, busy, spans = [], 0, []
    for ctas in by_sm.values():
        ctas.sort(key=lambda r: r[1])
        gaps += [b[1] - a[4] for a, b in zip(ctas, ctas[1:])]
        busy += sum(r[4] - r[1] for r in ctas)
        spans.append(ctas[-1][4] - ctas[0][1])
    span = sum(spans)
    per_sm = [len(c) for c in by_sm.values()]
    total = sum(r[4] - r[1] for r in done)
    return dict(ctas=len(done), sms=len(by_sm), prologue=statistics.median(prologue), loop=statistics.median(loop),
                epilogue=statistics.median(epilogue), gap=statistics.median(gaps) if gaps else 0,
                prologue_share=round(sum(prologue) / total, 4), epilogue_share=round(sum(epilogue) / total, 4),
                idle_share=round(1 - busy / span, 4), tail_share=round(1 - span / (len(spans) * max(spans)), 4),
                ctas_per_sm=(min(per_sm), max(per_sm)))


def trace_backward(seq, causal, d=128):
    """Runs one traced backward at `seq` rows (b = 16384 / seq, 16 heads) and returns its CTAs' rows."""
    import torch
    from ringfa3.ops import sm90
    be = sm90.BACKEND
    if be is None:
        raise SystemExit("sm90 backend unavailable (RINGFA3_SM90_LIB, CUDA)")
    b, h = 16384 // seq, 2048 // d
    q, k, v, dout = (torch.randn(b, seq, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    out, lse = be.forward(q, k, v, causal, None, (-1, -1), False)
    tiles = -(-seq // be._lib.ringfa3_sm90_bwd_block_n()) * b * h   # key blocks x kv heads x batch (bwd_launch.h)
    # (ctas, fields of cta_trace.h): the tail split (bwd_split.h) adds at most 3 pieces per tile
    trace = torch.zeros(4 * tiles, 5, device="cuda", dtype=torch.int64)
    for _ in range(2):   # the second call is kept: the first pays for module loads
        trace.zero_()
        os.environ["RINGFA3_BWD_TRACE_PTR"] = str(trace.data_ptr())
        try:
            be.backward(dout, q, k, v, out, lse, causal, d ** -0.5, (-1, -1), False, False)
        finally:
            del os.environ["RINGFA3_BWD_TRACE_PTR"]
        torch.cuda.synchronize()
    return [tuple(r) for r in trace.cpu().tolist()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqs", default="4096,8192,16384")
    ap.add_argument("--causal", action="store_true")
    args = ap.parse_args()
    for s in (int(x) for x in args.seqs.split(",")):
        print(json.dumps(dict(seq=s, causal=args.causal, **summarize(trace_backward(s, args.causal)))), flush=True)


if __name__ == "__main__":
    main()
