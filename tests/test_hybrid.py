"""The 2-D hybrid (Ulysses x ring) over gloo ranks against the float64 single-process reference.

One spawn of 4 ranks (shared with test_ulysses and test_planner; U = 1, 2, 4: rings of 4, 2 and 1) runs
the matrix for every Ulysses degree; the same spawn checks the 2-D shard / unshard / positions against
the flat ones, the groups built from sub-world parents, and the error cases.
"""
from __future__ import annotations

import itertools
import os
from functools import lru_cache

import pytest
import torch
import torch.distributed as dist

from ringfa3.parallel import local_positions, shard, unshard
from ringfa3.parallel.hybrid import (hybrid_attn_func, hybrid_groups, hybrid_local_positions, hybrid_shard,
                                     hybrid_unshard)

from reference import random_qkv, rel_err, single_process_errors, tolerance

B, S, H, D = 1, 24, 24, 32  # S divides 2 * world for world 4; H divides by every Ulysses degree
DEGREES = {4: (1, 2, 4)}
NO = (-1, -1)
COMBOS = (list(itertools.product(("contiguous", "zigzag"), (False, True), (1, 8, 24), (torch.float32,), (NO,)))
          + list(itertools.product(("zigzag",), (True,), (1, 8), (torch.bfloat16,), (NO,)))
          # sliding windows through the inner ring: smaller than a shard, spanning several
          + [("zigzag", True, 8, torch.float32, (2, 0)), ("contiguous", True, 4, torch.float32, (9, 0))])
DETERMINISTIC = COMBOS.index(("zigzag", True, 8, torch.bfloat16, NO))  # run twice, compared bit for bit
SEED = int.from_bytes(os.urandom(4), "little")


def make_inputs(idx: int, seed: int = SEED):
    _, _, gqa, dtype, _ = COMBOS[idx]
    return random_qkv(seed + idx, B, S, H, H // gqa, D, dtype)


def _run(idx, seed, ug, rg, parent=None, deterministic=False) -> dict:
    layout, causal, _, _, window = COMBOS[idx]
    q, k, v, dout = make_inputs(idx, seed)
    ql, kl, vl = (shard(x, 1, parent, layout).clone().requires_grad_() for x in (q, k, v))
    out, lse = hybrid_attn_func(ql, kl, vl, causal=causal, ulysses_group=ug, ring_group=rg, layout=layout,
                                return_lse=True, backend="reference", window=window, deterministic=deterministic)
    out.backward(shard(dout, 1, parent, layout))
    return dict(out=unshard(out.detach(), 1, parent, layout), lse=unshard(lse, 2, parent, layout),
                dq=unshard(ql.grad, 1, parent, layout), dk=unshard(kl.grad, 1, parent, layout),
                dv=unshard(vl.grad, 1, parent, layout))


def _layout_checks(ug, rg, seed) -> dict:
    """hybrid_shard / hybrid_unshard / hybrid_local_positions agree with the flat layout over the world."""
    x = torch.randn(2, S, 3, generator=torch.Generator().manual_seed(seed))
    ok = {}
    for layout in ("contiguous", "zigzag"):
        part = hybrid_shard(x, 1, ug, rg, layout)
        ok[layout] = (torch.equal(part, shard(x, 1, None, layout))
                      and torch.equal(hybrid_unshard(part, 1, ug, rg, layout), x)
                      and torch.equal(hybrid_local_positions(part.shape[1], ug, rg, layout),
                                      local_positions(part.shape[1], None, layout)))
    return ok


def _errors(ug, rg, u_deg) -> dict:
    msgs = {}
    cases = {"stripe": lambda: hybrid_attn_func(*(torch.randn(1, 4, 12, 8) for _ in range(3)), ulysses_group=ug,
                                                ring_group=rg, layout="stripe"),
             "heads": lambda: hybrid_attn_func(*(torch.randn(1, 4, u_deg + 1, 8) for _ in range(3)),
                                               ulysses_group=ug, ring_group=rg),
             "groups": lambda: hybrid_attn_func(*(torch.randn(1, 4, 12, 8) for _ in range(3)))}  # None, None
    for name, call in cases.items():
        try:
            call()
            msgs[name] = None
        except ValueError as e:
            msgs[name] = str(e)
    dist.barrier()  # still in step: no rank entered a collective
    return msgs


def hybrid_matrix(rank: int, world: int, seed: int) -> dict:
    results = {}
    for u_deg in DEGREES[world]:
        ug, rg = hybrid_groups(u_deg)
        for idx in range(len(COMBOS)):
            full = _run(idx, seed, ug, rg)
            results[(u_deg, idx)] = full if rank == 0 else None
        once, again = (_run(DETERMINISTIC, seed, ug, rg, deterministic=True) for _ in range(2))
        results[("deterministic", u_deg)] = all(torch.equal(once[n], again[n]) for n in once)
        results[("layout", u_deg)] = _layout_checks(ug, rg, seed)
        results[("errors", u_deg)] = _errors(ug, rg, u_deg) if u_deg > 1 else None
    if world == 4:  # two context-parallel groups of 2 (data x context parallel): 2-D groups inside each
        parents = [dist.new_group([0, 1]), dist.new_group([2, 3])]
        parent = parents[rank // 2]
        ug, rg = hybrid_groups(2, parent)
        results["sub_ranks"] = (dist.get_process_group_ranks(ug), dist.get_process_group_ranks(rg))
        ug1, rg1 = hybrid_groups(1, parent)
        results["sub_ranks1"] = (dist.get_process_group_ranks(ug1), dist.get_process_group_ranks(rg1))
        idx = COMBOS.index(("zigzag", True, 8, torch.float32, NO))
        results["sub"] = _run(idx, seed, ug1, rg1, parent)  # ring of 2 inside the parent
    return results


def hybrid_results(world: int) -> dict:
    from test_planner import cp_results  # one 4-rank spawn serves the Ulysses, hybrid and planner tests
    return cp_results()["hybrid"]


@lru_cache(maxsize=None)
def expected(idx: int) -> tuple[dict, dict]:
    _, causal, _, _, window = COMBOS[idx]
    return single_process_errors(*make_inputs(idx), causal, window)


def assert_matches(got: dict, idx: int) -> None:
    dtype = COMBOS[idx][3]
    ref, base = expected(idx)
    for name in ref:
        err, tol = rel_err(got[name], ref[name]), tolerance(base[name], dtype)
        assert err <= tol, f"{name}: rel err {err:.3g} > tol {tol:.3g} (single-process {base[name]:.3g}, seed {SEED})"


def combo_id(c):
    layout, causal, gqa, dtype, window = c
    win = "" if window == NO else f"-window{window[0]}_{window[1]}"
    return f"{layout}-{'causal' if causal else 'full'}-gqa{gqa}-{str(dtype).split('.')[-1]}{win}"


GRID = [(w, u) for w, us in DEGREES.items() for u in us]


@pytest.mark.parametrize("world,u_deg", GRID, ids=[f"{u}x{w // u}" for w, u in GRID])
@pytest.mark.parametrize("idx", range(len(COMBOS)), ids=[combo_id(c) for c in COMBOS])
def test_hybrid_matches_float64(world, u_deg, idx):
    assert_matches(hybrid_results(world)[(u_deg, idx)], idx)


@pytest.mark.parametrize("world,u_deg", GRID, ids=[f"{u}x{w // u}" for w, u in GRID])
def test_hybrid_deterministic_mode_is_bitwise_repeatable(world, u_deg):
    assert hybrid_results(world)[("deterministic", u_deg)]


@pytest.mark.parametrize("world,u_deg", GRID, ids=[f"{u}x{w // u}" for w, u in GRID])
def test_hybrid_layout_is_the_flat_layout(world, u_deg):
    assert hybrid_results(world)[("layout", u_deg)] == {"contiguous": True, "zigzag": True}


@pytest.mark.parametrize("world,u_deg", [g for g in GRID if g[1] > 1], ids=[f"{u}x{w // u}" for w, u in GRID if u > 1])
def test_hybrid_bad_inputs_raise_before_communicating(world, u_deg):
    msgs = hybrid_results(world)[("errors", u_deg)]
    assert "stripe" in msgs["stripe"]
    assert "not a multiple of" in msgs["heads"]
    assert "hybrid_groups" in msgs["groups"]


def test_hybrid_groups_inside_sub_world_parents():
    res = hybrid_results(4)
    assert res["sub_ranks"] == ([0, 1], [0])  # rank 0: Ulysses over its parent {0, 1}, ring of one
    assert res["sub_ranks1"] == ([0], [0, 1])
    assert_matches(res["sub"], COMBOS.index(("zigzag", True, 8, torch.float32, NO)))


def test_hybrid_single_process_is_local_attention():
    idx = COMBOS.index(("zigzag", True, 8, torch.float32, NO))
    q, k, v, dout = make_inputs(idx)
    qs, ks, vs = (x.clone().requires_grad_() for x in (q, k, v))
    out, lse = hybrid_attn_func(qs, ks, vs, causal=True, return_lse=True, backend="reference")
    out.backward(dout)
    assert_matches(dict(out=out, lse=lse, dq=qs.grad, dk=ks.grad, dv=vs.grad), idx)
