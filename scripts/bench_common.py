"""Shared pieces of the benchmark scripts: FLOP counts, timing, and the result record."""
from __future__ import annotations

import datetime
import json
import platform
import sys

import torch


def attn_flops(batch: int, heads: int, seq_q: int, seq_k: int, headdim: int, causal: bool) -> float:
    """Forward FLOPs, FA3 convention: 4 * b * h * s_q * s_k * d, halved for causal."""
    f = 4.0 * batch * heads * seq_q * seq_k * headdim
    return f / 2 if causal else f


def median_ms(fn, warmup_ms: int = 25, rep_ms: int = 200, min_runs: int = 7) -> float:
    """Median time of fn() in milliseconds (CUDA events through triton's do_bench), over at least
    `min_runs` timed calls also when one call takes longer than rep_ms."""
    from triton.testing import do_bench
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    est = start.elapsed_time(end)
    return do_bench(fn, warmup=max(warmup_ms, 2 * est), rep=max(rep_ms, min_runs * est), return_mode="median")


def kernel_times(fn, calls: int = 1) -> dict:
    """{kernel name: [device microseconds per call of fn, launches per call]}, longest first, over
    `calls` calls under torch.profiler after a warm-up call."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    rows = [(e.key[:100], round(e.device_time_total / calls, 1), e.count // calls) for e in prof.key_averages()
            if e.device_type.name == "CUDA" and e.count]
    return {name: [us, n] for name, us, n in sorted(rows, key=lambda r: -r[1])}


def environment() -> dict:
    env = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               command=" ".join(sys.argv), python=platform.python_version(), torch=torch.__version__)
    if torch.cuda.is_available():
        env.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return env


def write_json(path: str | None, record: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(record, f, indent=1)
        print(f"wrote {path}")
