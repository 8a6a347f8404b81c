"""The planner: which strategy for which shapes, why, clear errors for impossible explicit choices, and
context_parallel_attn running each choice correctly on 4 gloo ranks."""
from __future__ import annotations

import logging
import os
from functools import lru_cache

import pytest
import torch
import torch.distributed as dist

from ringfa3.ops import attention
from ringfa3.parallel import shard, unshard
from ringfa3.parallel.planner import RING_OVERLAP_TOKENS, context_parallel_attn, plan_strategy

from distributed import run_distributed
from reference import reference64, rel_err, tolerance

SEED = int.from_bytes(os.urandom(4), "little")


@pytest.mark.parametrize("world,heads,kv,seqlen,causal,layout,want", [
    (1, 8, 8, 64, True, "zigzag", ("ring", 1, 1)),  # one rank
    (4, 8, 8, 4 * 256, True, "zigzag", ("ulysses", 4, 1)),  # short shards, heads divide
    (4, 8, 2, 4 * 256, True, "zigzag", ("ulysses", 4, 1)),  # K/V heads fewer than ranks: replicated
    (4, 8, 8, 4 * 2 * RING_OVERLAP_TOKENS, True, "zigzag", ("ring", 1, 4)),  # long shards hide the ring
    (4, 32, 8, 4 * 2048, True, "zigzag", ("ring", 1, 4)),  # GQA: less K/V to move, the ring hides sooner
    (4, 32, 32, 4 * 2048, True, "zigzag", ("ulysses", 4, 1)),  # the same length with MHA does not
    (4, 32, 32, 4 * 4096, False, "zigzag", ("ring", 1, 4)),  # no causal mask: twice the compute per step
    (4, 6, 2, 4 * 256, True, "zigzag", ("hybrid", 2, 2)),  # heads divide over part of the world
    (8, 12, 4, 8 * 256, True, "contiguous", ("hybrid", 4, 2)),  # the largest such part
    (4, 6, 2, 4 * 256, True, "stripe", ("ring", 1, 4)),  # stripe has no 2-D split
    (3, 4, 4, 3 * 256, True, "zigzag", ("ring", 1, 3)),  # heads divide over no part
])
def test_auto_choice(world, heads, kv, seqlen, causal, layout, want):
    plan = plan_strategy(world, heads, kv, seqlen, causal, layout)
    assert (plan.strategy, plan.ulysses_degree, plan.ring_degree) == want
    assert plan.ulysses_degree * plan.ring_degree == world
    assert plan.reason


@pytest.mark.parametrize("kwargs,match", [
    (dict(strategy="ulysses"), "divide over the 4 ranks"),
    (dict(strategy="hybrid", ulysses_degree=4), "must divide both"),
    (dict(strategy="hybrid", ulysses_degree=3), "must divide both"),
    (dict(strategy="hybrid", layout="stripe"), "cannot use layout"),
    (dict(strategy="ring", ulysses_degree=2), "only applies"),
    (dict(strategy="tree"), "not known"),
    (dict(layout="snake"), "layout"),
    (dict(seqlen=4 * 7), "multiple of 8"),
])
def test_impossible_explicit_choice_is_an_error(kwargs, match):
    args = dict(world=4, heads=6, kv_heads=2, seqlen=4 * 256, causal=True, layout="zigzag") | kwargs
    with pytest.raises(ValueError, match=match):
        plan_strategy(**args)


def test_explicit_hybrid_without_degree_picks_the_largest_and_fails_when_none():
    assert plan_strategy(8, 12, 4, 8 * 64, strategy="hybrid").ulysses_degree == 4
    with pytest.raises(ValueError, match="no Ulysses degree"):
        plan_strategy(3, 4, 4, 3 * 64, strategy="hybrid")


def test_choice_is_logged_with_its_reason(caplog):
    q = torch.randn(1, 16, 4, 8)
    with caplog.at_level(logging.INFO, logger="ringfa3"):
        context_parallel_attn(q, q, q, backend="reference")
    assert any("context parallel ring" in r.getMessage() and "one rank" in r.getMessage() for r in caplog.records)


# name: (heads, kv_heads, seqlen, causal); on 4 ranks auto gives ulysses, hybrid 2 x 2 and ring
CASES = {"ulysses": (8, 2, 32, True), "hybrid": (6, 2, 32, True), "ring": (24, 1, 512, False)}


def make_inputs(name: str, seed: int):
    h, hk, s, _ = CASES[name]
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, s, h, 8, generator=g), torch.randn(1, s, hk, 8, generator=g),
            torch.randn(1, s, hk, 8, generator=g), torch.randn(1, s, h, 8, generator=g))


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def planner_matrix(rank: int, world: int, seed: int) -> dict:
    handler = _Records()
    log = logging.getLogger("ringfa3")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    results = {}
    for name, (_, _, _, causal) in CASES.items():
        q, k, v, dout = make_inputs(name, seed)
        ql, kl, vl = (shard(x, 1).clone().requires_grad_() for x in (q, k, v))
        out, lse = context_parallel_attn(ql, kl, vl, causal=causal, return_lse=True, backend="reference")
        out.backward(shard(dout, 1))
        results[name] = dict(out=unshard(out.detach(), 1), lse=unshard(lse, 2), dq=unshard(ql.grad, 1),
                             dk=unshard(kl.grad, 1), dv=unshard(vl.grad, 1))
    try:
        context_parallel_attn(*(torch.randn(1, 8, 6, 8) for _ in range(3)), strategy="ulysses")
        results["error"] = None
    except ValueError as e:
        results["error"] = str(e)
    dist.barrier()  # every rank raised before communicating
    results["log"] = handler.messages
    return results


def cp_worker(rank: int, world: int, seeds: dict) -> dict:
    """The 4-rank matrices of test_ulysses, test_hybrid and this file in one spawn (start-up is the cost)."""
    from test_hybrid import hybrid_matrix
    from test_ulysses import ulysses_worlds
    return dict(ulysses=ulysses_worlds(rank, world, seeds["ulysses"]), hybrid=hybrid_matrix(rank, world, seeds["hybrid"]),
                planner=planner_matrix(rank, world, seeds["planner"]))


@lru_cache(maxsize=None)
def cp_results() -> dict:
    import test_hybrid
    import test_ulysses
    seeds = dict(ulysses=test_ulysses.SEED, hybrid=test_hybrid.SEED, planner=SEED)
    return run_distributed(cp_worker, 4, seeds)[0]


def planner_results() -> dict:
    return cp_results()["planner"]


@pytest.mark.parametrize("name", list(CASES))
def test_context_parallel_attn_runs_the_planned_strategy(name):
    h, hk, s, causal = CASES[name]
    assert plan_strategy(4, h, hk, s, causal).strategy == name
    res = planner_results()
    assert any(f"context parallel {name}" in m for m in res["log"]), res["log"]
    q, k, v, dout = make_inputs(name, SEED)
    ref = reference64(q, k, v, dout, causal)
    qs, ks, vs = (x.clone().requires_grad_() for x in (q, k, v))
    out, lse = attention(qs, ks, vs, causal=causal, backend="reference")
    out.backward(dout)
    single = dict(out=out, lse=lse, dq=qs.grad, dk=ks.grad, dv=vs.grad)
    for key in ref:
        err, tol = rel_err(res[name][key], ref[key]), tolerance(rel_err(single[key], ref[key]), torch.float32)
        assert err <= tol, f"{name} {key}: rel err {err:.3g} > tol {tol:.3g} (seed {SEED})"


def test_invalid_explicit_choice_raises_on_every_rank():
    assert "strategy='ulysses'" in planner_results()["error"]
