"""Where FP8 attention's error comes from, on the outlier families of fp8_accuracy.py (CPU, float64).

Full attention over one block (exact softmax), 2 heads, 2k keys, hd128, two seeds. For each family it
prints the error of naive per-tensor FP8 and, as a ratio to it, ours (rotated block-scaled Q/K, K per
224 keys) with P rounded to e4m3 after scaling by 2^0, 2^4, 2^8 (FA3's max offset), then with exact
V, then with exact Q and K.

    python scripts/fp8_error_sources.py
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fp8_accuracy as A  # noqa: E402
from ringfa3.ops import fp8  # noqa: E402


def attn(q, k, v, p_scale=None):
    """Full attention in float64; P rounded to e4m3 of p * p_scale (then divided back) when given."""
    s = torch.einsum('bshd,bthd->bhst', q.double(), k.double()) * q.shape[-1] ** -0.5
    p = torch.exp(s - s.amax(-1, keepdim=True))
    den = p.sum(-1, keepdim=True)
    if p_scale is not None:
        p = (p.float() * p_scale).to(fp8.E4M3).double() / p_scale
    return torch.einsum('bhst,bthd->bshd', p / den, v.double())


def main():
    for family in ("channels_x100", "channels_x30", "sparse_entries_x10", "gaussian"):
        for seed in range(2):
            q, k, v = A.make_inputs(family, 1, 2048, 2, 128, seed)
            ref = attn(q, k, v)
            err = lambda o: A.rel_err(o, ref)  # noqa: E731, B023
            signs = fp8.random_signs(128, seed)
            q8 = fp8.fake_quantize(fp8.rotate(q.float(), signs), 128)[0]
            k8 = fp8.fake_quantize(fp8.rotate(k.float(), signs), 224)[0]
            v8 = fp8.fake_quantize(v.float(), None)[0]
            naive = err(attn(*(fp8.fake_quantize(x.float(), None, True)[0] for x in (q, k, v)), p_scale=1.0))
            row = [f"{family:<20} seed {seed} naive {naive:.3e}"]
            row += [f"offset 2^{o} {err(attn(q8, k8, v8, 2.0 ** o)) / naive:.2f}" for o in (0, 4, 8)]
            row.append(f"exact V {err(attn(q8, k8, v.float(), 2.0 ** 8)) / naive:.2f}")
            row.append(f"exact Q, K {err(attn(q.float(), k.float(), v8, 2.0 ** 8)) / naive:.2f}")
            print("  ".join(row), flush=True)


if __name__ == "__main__":
    main()
