"""Overlap of the ring's communication with its attention kernels, read off a profiler trace (issue #9,
item 2): one call of fn under torch.profiler, the GPU kernels split into NCCL's and the rest (compute),
and the time in the call's window when no compute kernel ran (the exposed communication and launch
gaps) next to the share of NCCL's kernel time that ran concurrently with compute."""
from __future__ import annotations

import json

import torch


def union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Disjoint sorted intervals covering `spans`."""
    out: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def length(spans) -> float:
    return sum(b - a for a, b in spans)


def intersect(x, y) -> list[tuple[float, float]]:
    """Intersection of two disjoint sorted interval lists."""
    out, i, j = [], 0, 0
    while i < len(x) and j < len(y):
        a, b = max(x[i][0], y[j][0]), min(x[i][1], y[j][1])
        if a < b:
            out.append((a, b))
        if x[i][1] < y[j][1]:
            i += 1
        else:
            j += 1
    return out


def summarize(events: list[dict], steps: int) -> dict:
    """Times in ms from chrome-trace kernel events (ts/dur in microseconds)."""
    kernels = [e for e in events if e.get("cat") == "kernel"]
    nccl = union([(e["ts"], e["ts"] + e["dur"]) for e in kernels if "nccl" in e["name"].lower()])
    compute = union([(e["ts"], e["ts"] + e["dur"]) for e in kernels if "nccl" not in e["name"].lower()])
    window = union(nccl + compute)
    wall = (window[-1][1] - window[0][0]) if window else 0.0
    exposed = wall - length(compute)
    hidden = length(intersect(nccl, compute))
    ms = lambda us: round(us / 1e3, 3)  # noqa: E731
    return dict(window_ms=ms(wall), compute_ms=ms(length(compute)), nccl_ms=ms(length(nccl)),
                nccl_concurrent_ms=ms(hidden), nccl_concurrent_frac=round(hidden / max(length(nccl), 1e-9), 3),
                exposed_ms=ms(exposed), exposed_frac=round(exposed / max(wall, 1e-9), 4),
                exposed_per_step_ms=ms(exposed / steps), steps=steps,
                kernels=len(kernels), nccl_kernels=sum("nccl" in e["name"].lower() for e in kernels))


def trace_overlap(fn, path: str, steps: int) -> dict:
    """Profile one call of fn (after one warm call) into the chrome trace `path`; its overlap summary."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    prof.export_chrome_trace(path)
    with open(path) as f:
        return summarize(json.load(f)["traceEvents"], steps)
