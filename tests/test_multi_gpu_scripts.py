"""The issue-#9 device scripts, run by torchrun as on the multi-GPU machine, here on 2 gloo CPU ranks
with tiny shapes: they must stay runnable with one command."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(script: str, *args: str, tmp_path) -> subprocess.CompletedProcess:
    if torch.cuda.is_available():
        pytest.skip("the CPU smoke run; on GPUs the scripts are device runs")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(ROOT / "scripts" / script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)


def test_multi_gpu_check_passes_on_two_gloo_ranks(tmp_path):
    r = _torchrun("multi_gpu_check.py", "--seqlen", "64", "--heads", "4", "--dim", "16", "--out", str(tmp_path),
                  tmp_path=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = json.loads((tmp_path / "multi_gpu_check.json").read_text())["rows"]
    assert {row["kind"] for row in rows} == {"ring", "ulysses", "varlen"} and all(row["pass"] for row in rows)


def test_bench_ring_runs_the_real_ring_under_torchrun(tmp_path):
    out = tmp_path / "ring.json"
    r = _torchrun("bench_ring.py", "--tokens", "128", "--headdim", "16", "--hidden", "32", "--causal", "--no-mono",
                  "--backend", "reference", "--json", str(out), tmp_path=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["ring"] == "real" and res["world"] == 2 and res["ring_fwdbwd_ms"] > 0


def test_bench_ring_sweeps_lengths_and_masks_with_the_rank_work_anchor(tmp_path):
    out = tmp_path / "sweep.json"
    r = _torchrun("bench_ring.py", "--tokens", "256", "512", "--masks", "causal", "full", "--headdim", "16",
                  "--hidden", "32", "--backend", "reference", "--mono-work", "rank", "--warmup", "0", "--iters", "1",
                  "--json", str(out), tmp_path=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(row["tokens"], row["causal"]) for row in rows] == [(256, True), (512, True), (256, False), (512, False)]
    # the anchor has the rank's work: T / sqrt(2) tokens, rounded to 128
    assert [row["mono_tokens"] for row in rows] == [128, 384, 128, 384]
    assert all(row["eff_fwdbwd"] > 0 for row in rows)


def test_overlap_summary_counts_exposed_and_concurrent_time():
    sys.path.insert(0, str(ROOT / "scripts"))
    from ring_overlap import summarize
    k = lambda name, ts, dur: dict(cat="kernel", name=name, ts=ts, dur=dur)  # noqa: E731
    # compute 0-100 and 150-300 (two overlapping kernels), NCCL 80-170: 20 + 20 us concurrent, 50 us exposed
    events = [k("attn_fwd", 0, 100), k("attn_bwd", 150, 100), k("merge", 200, 100), k("ncclDevKernel_SendRecv", 80, 90),
              dict(cat="cpu_op", name="aten::mm", ts=0, dur=1000)]
    s = summarize(events, steps=2)
    assert s["window_ms"] == 0.3 and s["compute_ms"] == 0.25 and s["nccl_ms"] == 0.09
    assert s["nccl_concurrent_ms"] == 0.04 and s["exposed_ms"] == 0.05 and s["exposed_per_step_ms"] == 0.025
    assert s["kernels"] == 4 and s["nccl_kernels"] == 1
