"""scripts/max_context.py: the search logic against fake "fits" functions, and one real run of the
script on the CPU with the tiny model (fresh processes, JSON written, a memory kill counted as no fit)."""
from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("max_context", os.path.join(ROOT, "scripts", "max_context.py"))
mc = importlib.util.module_from_spec(_spec)
sys.modules["max_context"] = mc
_spec.loader.exec_module(mc)


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def fake(limit: int, clock: FakeClock, seconds=lambda s: 1.0, reason="cuda_oom"):
    calls = []

    def fits(seq_len, timeout_s):
        calls.append(seq_len)
        clock.t += seconds(seq_len)
        ok = seq_len <= limit
        return mc.Trial(seq_len, ok, "ok" if ok else reason, seconds(seq_len))

    return fits, calls


@pytest.mark.parametrize("limit", [8, 100, 1000, 4096, 4097, 123456])
def test_search_finds_the_largest_fitting_multiple(limit):
    clock = FakeClock()
    fits, calls = fake(limit, clock)
    res = mc.search(fits, start=64, granularity=8, max_len=1 << 20, budget_s=1e9, clock=clock)
    want = limit // 8 * 8
    assert res.lo == want and res.stopped == "converged"
    assert res.hi == want + 8 and res.hi_reason == "cuda_oom"
    assert all(s % 8 == 0 for s in calls) and len(calls) == len(set(calls))
    assert len(calls) <= 2 * (1 << 20).bit_length()  # galloping + bisection, not a linear scan


def test_search_stops_at_max_len_and_at_min_len():
    clock = FakeClock()
    fits, _ = fake(10**9, clock)
    res = mc.search(fits, start=64, granularity=8, max_len=1000, budget_s=1e9, clock=clock)
    assert (res.lo, res.hi, res.stopped) == (1000 // 8 * 8, None, "max_len")
    fits, _ = fake(0, clock)
    res = mc.search(fits, start=64, granularity=8, max_len=1000, budget_s=1e9, clock=clock)
    assert (res.lo, res.best, res.stopped) == (0, None, "min_len")


def test_search_respects_the_budget_and_reports_the_bracket():
    clock = FakeClock()
    # each candidate costs (seq_len / 1000)^2 seconds, like attention; 100 s in all
    fits, calls = fake(10**9, clock, seconds=lambda s: (s / 1000) ** 2)
    res = mc.search(fits, start=1000, granularity=100, max_len=10**8, budget_s=100, clock=clock, min_trial_s=1)
    assert res.stopped == "budget" and res.lo > 0 and res.best.seq_len == res.lo
    assert clock.t <= 100 + 1e-9  # no candidate predicted to overrun was started
    assert res.lo >= 4000  # 1000, 2000, 4000 cost 21 s; the budget allowed a shrunken larger one


def test_search_stops_on_a_real_error():
    clock = FakeClock()
    fits, calls = fake(500, clock, reason="error")
    res = mc.search(fits, start=64, granularity=8, max_len=10**6, budget_s=1e9, clock=clock)
    assert res.stopped == "error" and res.lo == 512 // 2 and calls[-1] == 512


def test_linear_projection():
    trials = [mc.Trial(s, True, "ok", 1.0, {"gpu": 10 + s / 1000, "host": 5.0}) for s in (1000, 2000, 4000)]
    proj = mc.linear_projection(trials, {"gpu": 80.0, "host": 100.0})
    assert proj["fits"]["gpu"]["projected_max_seq_len"] == 70000
    assert proj["fits"]["host"]["projected_max_seq_len"] is None  # flat: no limit from the host
    assert proj["projected_max_seq_len"] == 70000 and "not run" in proj["note"]


def test_script_runs_candidates_in_fresh_processes(tmp_path):
    out = tmp_path / "r.json"
    common = ["--model", "tiny", "--granularity", "32", "--steps", "2", "--budget-s", "240",
              "train.device=cpu", "data.train_queries=2", "model.n_layers=2"]
    res = mc.main(common + ["--start", "64", "--max-len", "64", "--long-context-options", "on",
                            "--loss-chunk", "48", "--mlp-chunk", "40", "--out", str(out)])
    assert res["max_seq_len"] == 64 and res["stopped"] == "max_len"
    saved = json.loads(out.read_text())
    assert [t["seq_len"] for t in saved["trials"]] == [64]
    at = saved["at_max"]
    assert at["tokens_per_s"] > 0 and at["host_rss_peak_gib"] > 0 and len(at["step_seconds"]) == 2
    assert "train.offload_activations=true" in saved["overrides"] and saved["projection"] is None
    # a host limit below any process: every candidate is killed and counted as not fitting
    res = mc.main(common + ["--start", "64", "--max-len", "64", "--host-limit-gb", "0.001"])
    assert res["max_seq_len"] == 0 and res["upper_failed_because"] == "host_limit"
