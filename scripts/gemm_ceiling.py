"""The tensor cores' ceiling on this card, for reading attention TF/s against it: cuBLAS e4m3 (torch._scaled_mm)
and bf16 GEMMs of 8192^3, TF/s at the power cap. `--launch` makes 3 launches of each for ncu instead (e.g. at
locked base clocks: ncu --clock-control base --metrics gpu__time_duration.sum python3 scripts/gemm_ceiling.py --launch)."""
import sys


def main():
    import torch
    from triton.testing import do_bench
    n = 8192
    one = torch.tensor(1.0, device="cuda")
    a8 = torch.randn(n, n, device="cuda").to(torch.float8_e4m3fn)
    b8 = torch.randn(n, n, device="cuda").to(torch.float8_e4m3fn).t()   # cuBLAS wants B column-major
    a16, b16 = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    fns = dict(e4m3=lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16),
               bf16=lambda: a16 @ b16)
    for name, f in fns.items():
        if "--launch" in sys.argv:
            for _ in range(3):
                f()
            torch.cuda.synchronize()
        else:
            print(name, "TF/s at the power cap", round(2 * n ** 3 / do_bench(f, warmup=50, rep=500) / 1e9))


if __name__ == "__main__":
    main()
