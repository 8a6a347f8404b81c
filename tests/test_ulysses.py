"""Ulysses over gloo ranks (world sizes 1-4) against the float64 single-process reference.

One spawn of 4 ranks (shared with test_hybrid and test_planner: process start-up dominates the cost)
runs the whole matrix for world sizes 2, 3 and 4 (on subgroups) (layouts x causal x GQA x dtype) and the error cases;
each test then asserts one combination. 24 heads cover every world size; K/V head counts 24/12/6/3/1
(GQA 1/2/4/8 and MQA) include aligned splits, K/V heads fewer than ranks (replicated), and splits
whose K/V head ranges straddle ranks (padded messages, local expansion), e.g. 3 K/V heads on 2 or 4 ranks.
"""
from __future__ import annotations

import itertools
import os
from functools import lru_cache

import pytest
import torch
import torch.distributed as dist

from ringfa3.ops import attention
from ringfa3.parallel import shard, unshard
from ringfa3.parallel.ulysses import HeadSplit, ulysses_attn_func

from reference import random_qkv, reference64, rel_err, single_process_errors, tolerance

B, S, H, D = 1, 24, 24, 32  # S divides 2 * world for every world size 1-4
WORLDS = (1, 2, 3, 4)
GQA = (1, 2, 4, 8, 24)
NO = (-1, -1)
COMBOS = (list(itertools.product(("contiguous", "zigzag", "stripe"), (False, True), GQA, (torch.float32,), (NO,)))
          + list(itertools.product(("zigzag",), (False, True), GQA, (torch.bfloat16,), (NO,)))  # bf16: replica sums
          # sliding windows on global positions: smaller than a shard, larger than the sequence, two-sided
          + [("zigzag", True, 8, torch.float32, (2, 0)), ("stripe", True, 4, torch.float32, (5, 0)),
             ("contiguous", True, 2, torch.float32, (40, 0)), ("zigzag", False, 1, torch.float32, (3, 6))])
DETERMINISTIC = COMBOS.index(("zigzag", True, 8, torch.bfloat16, NO))  # run twice, compared bit for bit
SEED = int.from_bytes(os.urandom(4), "little")


def make_inputs(idx: int, seed: int = SEED):
    _, _, gqa, dtype, _ = COMBOS[idx]
    return random_qkv(seed + idx, B, S, H, H // gqa, D, dtype)


def _errors(world: int, group) -> dict:
    """Bad inputs raise ValueError on every rank before any communication; a barrier then proves the
    ranks are still in step (a rank that had entered an all-to-all would hang or fail it)."""
    msgs = {}
    cases = {
        "heads": lambda: ulysses_attn_func(*(torch.randn(1, 4, 6 if world == 4 else 1 + world, 8) for _ in range(3)),
                                           group=group),
        "layout": lambda: ulysses_attn_func(*(torch.randn(1, 4, 12, 8) for _ in range(3)), group=group,
                                            layout="snake"),
        "seqlen": lambda: ulysses_attn_func(*(torch.randn(1, 3, 12, 8) for _ in range(3)), group=group),
        "backend": lambda: ulysses_attn_func(*(torch.randn(1, 4, 12, 8) for _ in range(3)), group=group,
                                             backend="nope"),
    }
    for name, call in cases.items():
        if name == "heads" and world == 1:
            continue
        try:
            call()
            msgs[name] = None
        except ValueError as e:
            msgs[name] = str(e)
    if world > 1:
        dist.barrier(group)
    return msgs


def ulysses_matrix(rank: int, world: int, seed: int, group=None) -> dict:
    """Every combination on `group` (world ranks); the full results on the group's rank 0."""
    results = {}
    for idx in range(len(COMBOS)):
        full = _run(idx, seed, group)
        results[idx] = full if rank == 0 else None
    again = _run(DETERMINISTIC, seed, group, deterministic=True)
    once = _run(DETERMINISTIC, seed, group, deterministic=True)
    results["deterministic"] = all(torch.equal(again[n], once[n]) for n in once)
    results["errors"] = _errors(world, group)
    return results


def _run(idx: int, seed: int, group, deterministic: bool = False) -> dict:
    layout, causal, _, _, window = COMBOS[idx]
    q, k, v, dout = make_inputs(idx, seed)
    ql, kl, vl = (shard(x, 1, group, layout).clone().requires_grad_() for x in (q, k, v))
    out, lse = ulysses_attn_func(ql, kl, vl, causal=causal, group=group, layout=layout, return_lse=True,
                                 backend="reference", window=window, deterministic=deterministic)
    out.backward(shard(dout, 1, group, layout))
    return dict(out=unshard(out.detach(), 1, group, layout), lse=unshard(lse, 2, group, layout),
                dq=unshard(ql.grad, 1, group, layout), dk=unshard(kl.grad, 1, group, layout),
                dv=unshard(vl.grad, 1, group, layout))


def ulysses_worlds(rank: int, world: int, seed: int) -> dict:
    """One spawn of 4 ranks serves world sizes 2, 3 and 4: the smaller ones run on the subgroup of the
    first ranks (which also exercises a non-default group), the others wait."""
    results = {}
    for w in (2, 3, 4):
        group = dist.new_group(list(range(w)))  # every rank creates every group, in the same order
        if rank < w:
            results[w] = ulysses_matrix(rank, w, seed, group)
        dist.barrier()
    return results


@lru_cache(maxsize=None)
def ulysses_results(world: int) -> dict:
    if world == 1:  # no process group: world size 1, in this process
        return ulysses_matrix(0, 1, SEED)
    return _spawned()[world]


def _spawned() -> dict:
    from test_planner import cp_results  # one 4-rank spawn serves the Ulysses, hybrid and planner tests
    return cp_results()["ulysses"]


@lru_cache(maxsize=None)
def expected(idx: int) -> tuple[dict, dict]:
    """(float64 reference, same-dtype single-process op errors against it) for combination idx."""
    _, causal, _, _, window = COMBOS[idx]
    return single_process_errors(*make_inputs(idx), causal, window)


def combo_id(c):
    layout, causal, gqa, dtype, window = c
    win = "" if window == NO else f"-window{window[0]}_{window[1]}"
    return f"{layout}-{'causal' if causal else 'full'}-gqa{gqa}-{str(dtype).split('.')[-1]}{win}"


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("idx", range(len(COMBOS)), ids=[combo_id(c) for c in COMBOS])
def test_ulysses_matches_float64(world, idx):
    dtype = COMBOS[idx][3]
    ref, base = expected(idx)
    got = ulysses_results(world)[idx]
    for name in ref:
        err, tol = rel_err(got[name], ref[name]), tolerance(base[name], dtype)
        assert err <= tol, f"{name}: rel err {err:.3g} > tol {tol:.3g} (single-process {base[name]:.3g}, seed {SEED})"


@pytest.mark.parametrize("world", WORLDS)
def test_ulysses_deterministic_mode_is_bitwise_repeatable(world):
    assert ulysses_results(world)["deterministic"]


@pytest.mark.parametrize("world", WORLDS)
def test_ulysses_bad_inputs_raise_on_every_rank_before_communicating(world):
    msgs = ulysses_results(world)["errors"]  # rank 0's; the barrier in the workers covers the others
    if world > 1:
        assert "not a multiple of" in msgs["heads"]
    assert "layout" in msgs["layout"]
    assert "seqlen" in msgs["seqlen"]
    assert "backend" in msgs["backend"]


@pytest.mark.parametrize("heads,kv_heads,world", [(24, 24, 4), (24, 3, 4), (24, 1, 4), (8, 2, 4), (24, 3, 2),
                                                  (12, 3, 4), (6, 2, 3)])
def test_head_split_sends_each_rank_only_the_kv_heads_it_needs(heads, kv_heads, world):
    sp = HeadSplit(heads, kv_heads, world)
    g = heads // kv_heads
    for r in range(world):
        lo, hi = sp.kv_range(r)
        needed = {h // g for h in range(r * sp.q_per_rank, (r + 1) * sp.q_per_rank)}
        assert set(range(lo, hi)) == needed
        runs = sp.local_runs(r)  # local attention calls cover the query heads, each with its K/V heads
        assert [a for a, _, _, _ in runs] + [sp.q_per_rank] == [0] + [b for _, b, _, _ in runs]
        for a, b, c, d in runs:
            assert {(r * sp.q_per_rank + i) // g - lo for i in range(a, b)} == set(range(c, d))
            assert (b - a) % (d - c) == 0
    if kv_heads % world == 0 or world % kv_heads == 0:  # the usual cases: no padding, one local call
        assert sp.kv_msg == max(1, kv_heads // world)
        assert all(len(sp.local_runs(r)) == 1 for r in range(world))


@pytest.mark.cuda
@pytest.mark.parametrize("gqa", (1, 8))
def test_world1_on_cuda_with_the_auto_backend(gqa):
    """The gathered q/k/v are views into one message buffer: the GPU backends must take them as they are."""
    from ringfa3.parallel.hybrid import hybrid_attn_func
    g = torch.Generator(device="cuda").manual_seed(SEED)
    q, dout = (torch.randn(1, 256, 8, 64, device="cuda", generator=g).bfloat16() for _ in range(2))
    k, v = (torch.randn(1, 256, 8 // gqa, 64, device="cuda", generator=g).bfloat16() for _ in range(2))
    ref = reference64(q, k, v, dout, True)
    for fn in (ulysses_attn_func, hybrid_attn_func):
        qs, ks, vs = (x.clone().requires_grad_() for x in (q, k, v))
        out, lse = fn(qs, ks, vs, causal=True, return_lse=True)
        out.backward(dout)
        got = dict(out=out, lse=lse, dq=qs.grad, dk=ks.grad, dv=vs.grad)
        qs, ks, vs = (x.clone().requires_grad_() for x in (q, k, v))
        out1, lse1 = attention(qs, ks, vs, causal=True)
        out1.backward(dout)
        base = dict(out=out1, lse=lse1, dq=qs.grad, dk=ks.grad, dv=vs.grad)
        for name in ref:
            err, tol = rel_err(got[name], ref[name]), tolerance(rel_err(base[name], ref[name]), torch.bfloat16)
            assert err <= tol, f"{fn.__name__} {name}: rel err {err:.3g} > tol {tol:.3g}"
