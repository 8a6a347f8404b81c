"""Compile-only check of the sm90 library with one forward instantiation (bf16, head dim 128), the C
entry points and the FP8 preparation kernels: no GPU needed, about a minute on 2 cores. Runs where nvcc
and the nvidia-cutlass headers are installed (`pip install -e ".[build]"`), else skipped."""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    shutil.which("nvcc") is None or importlib.util.find_spec("cutlass_library") is None,
    reason="needs nvcc and the nvidia-cutlass wheel (pip install -e '.[build]')")


def test_one_forward_instantiation_compiles_without_spills(tmp_path):
    lib = tmp_path / "libringfa3_sm90.so"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_csrc.py"), "--only", "bf16:128", "--no-bwd",
                        "--lib", str(lib)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and lib.exists(), r.stdout[-3000:] + r.stderr[-3000:]
    # ptxas's report of each kernel: the hd128 forward tiles and the prep kernels, none spilling
    kernels = re.findall(r"^\s+(fwd_bf16_hd128|fp8_prep): .*spill_st=(\d+) spill_ld=(\d+)$", r.stdout, re.M)
    assert {name for name, *_ in kernels} == {"fwd_bf16_hd128", "fp8_prep"}, r.stdout[-3000:]
    assert all(st == ld == "0" for _, st, ld in kernels), r.stdout[-3000:]
