"""Host time per forward call: the Python path's cost, not the kernel's.

The problem is tiny (1 x 128 x 1 x 128, causal), so each kernel finishes long before the next launch
and the wall time of many back-to-back calls is the host's. Ours (the sm90 backend's forward), cuDNN
through SDPA and FA3 (fa3-fwd wheel, where installed) are timed alike; a cProfile of ours follows.
Where the host time approaches the kernel's (about 40 us at 1k tokens causal, FA3's benchmark shape),
do_bench of the Python call measures the host, not the kernel.

    python scripts/host_overhead.py
"""
import cProfile
import pstats
import time

import torch
import torch.nn.functional as F

from ringfa3.ops import sm90


def per_call_us(fn, n=3000):
    for _ in range(100):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    host = (time.perf_counter() - t) / n * 1e6
    torch.cuda.synchronize()
    return host


def main():
    q, k, v = (torch.randn(1, 128, 1, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    calls = {"ours": lambda: sm90.BACKEND.forward(q, k, v, True, None, (-1, -1), False),
             "cudnn": lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)}
    try:
        import fa3_fwd_interface as fa3
        calls["fa3"] = lambda: fa3.flash_attn_func(q, k, v, causal=True)
    except ImportError as e:
        print("fa3 not timed:", e)
    for name, fn in calls.items():
        print(f"{name:6s} {per_call_us(fn):.1f} us per call (host)")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(3000):
        calls["ours"]()
    prof.disable()
    torch.cuda.synchronize()
    pstats.Stats(prof).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
