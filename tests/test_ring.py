"""Ring attention over gloo ranks (world sizes 1-4) against the float64 single-process reference.

One spawn per world size runs the whole matrix (layouts x causal x GQA x dtype); each test then asserts
one combination. Tolerances: a small multiple of the error that the same-dtype single-process op has
against float64 on the same inputs, plus a floor.
"""
from __future__ import annotations

import itertools
import os
from functools import lru_cache

import pytest
import torch
import torch.distributed as dist

from ringfa3 import RingFlashAttention, ring_flash_attn_func, shard, unshard
from ringfa3.ops import attention

from distributed import run_distributed
from reference import random_qkv, reference64, rel_err, single_process_errors, tolerance

B, S, H, D = 2, 48, 4, 16  # S divides 2 * world for every world size 1-4
WORLDS = (1, 2, 3, 4)
COMBOS = list(itertools.product(("contiguous", "zigzag", "stripe"), (False, True), (1, 2, 4),
                                (torch.float32, torch.bfloat16)))
SEED = int.from_bytes(os.urandom(4), "little")  # fresh inputs each session (passed to the ranks); printed on failure


def make_inputs(idx: int, seed: int = SEED):
    _, _, gqa, dtype = COMBOS[idx]
    return random_qkv(seed + idx, B, S, H, H // gqa, D, dtype)


def ring_matrix(rank: int, world: int, seed: int) -> dict:
    results = {}
    for idx, (layout, causal, _, _) in enumerate(COMBOS):
        q, k, v, dout = make_inputs(idx, seed)
        ql, kl, vl = (shard(x, 1, None, layout).clone().requires_grad_() for x in (q, k, v))
        out, lse = ring_flash_attn_func(ql, kl, vl, causal=causal, layout=layout, return_lse=True)
        out.backward(shard(dout, 1, None, layout))
        full = dict(out=unshard(out.detach(), 1, None, layout), lse=unshard(lse, 2, None, layout),
                    dq=unshard(ql.grad, 1, None, layout), dk=unshard(kl.grad, 1, None, layout),
                    dv=unshard(vl.grad, 1, None, layout))
        results[idx] = full if rank == 0 else None
    results["layer"] = layer_grads(rank, world, seed)
    return results


def layer_grads(rank: int, world: int, seed: int) -> dict | None:
    """A RingFlashAttention layer on a sharded sequence: full output and summed parameter grads."""
    torch.manual_seed(seed)
    attn = RingFlashAttention(32, 4, num_kv_heads=2, layout="zigzag")
    x = torch.randn(B, S, 32)
    dy = torch.randn(B, S, 32)
    x_local = shard(x, 1, None, "zigzag").requires_grad_()
    y_local = attn(x_local)
    y_local.backward(shard(dy, 1, None, "zigzag"))
    grads = {n: p.grad.clone() for n, p in attn.named_parameters()}
    if world > 1:
        for g in grads.values():
            dist.all_reduce(g)
    y = unshard(y_local.detach(), 1, None, "zigzag")
    dx = unshard(x_local.grad, 1, None, "zigzag")
    return dict(y=y, dx=dx, grads=grads) if rank == 0 else None


@lru_cache(maxsize=None)
def ring_results(world: int) -> dict:
    return run_distributed(ring_matrix, world, SEED)[0]


@lru_cache(maxsize=None)
def expected(idx: int) -> tuple[dict, dict]:
    """(float64 reference, same-dtype single-process op errors against it) for combination idx."""
    _, causal, _, _ = COMBOS[idx]
    return single_process_errors(*make_inputs(idx), causal)


def ring_errors(world: int, idx: int) -> dict:
    ref, _ = expected(idx)
    got = ring_results(world)[idx]
    return {name: rel_err(got[name], ref[name]) for name in ref}


def combo_id(c):
    layout, causal, gqa, dtype = c
    return f"{layout}-{'causal' if causal else 'full'}-gqa{gqa}-{str(dtype).split('.')[-1]}"


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("idx", range(len(COMBOS)), ids=[combo_id(c) for c in COMBOS])
def test_ring_matches_float64(world, idx):
    dtype = COMBOS[idx][3]
    _, base = expected(idx)
    errs = ring_errors(world, idx)
    for name, err in errs.items():
        tol = tolerance(base[name], dtype)
        assert err <= tol, f"{name}: rel err {err:.3g} > tol {tol:.3g} (single-process {base[name]:.3g}, seed {SEED})"


@pytest.mark.parametrize("idx", [i for i, c in enumerate(COMBOS) if c[3] == torch.bfloat16],
                         ids=[combo_id(c) for c in COMBOS if c[3] == torch.bfloat16])
def test_bf16_error_does_not_grow_with_world(idx):
    e1, e4 = ring_errors(1, idx), ring_errors(4, idx)
    for name in e1:
        assert e4[name] <= 1.5 * e1[name] + 1e-6, f"{name}: world 4 {e4[name]:.3g} vs world 1 {e1[name]:.3g}"


@pytest.mark.parametrize("world", (2, 3, 4))
def test_layer_matches_single_process(world):
    want, got = ring_results(1)["layer"], ring_results(world)["layer"]
    torch.testing.assert_close(got["y"], want["y"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["dx"], want["dx"], rtol=1e-5, atol=1e-6)
    for name in want["grads"]:
        torch.testing.assert_close(got["grads"][name], want["grads"][name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("layout", ("contiguous", "zigzag", "stripe"))
def test_virtual_ring_forward_matches_float64(device, layout):
    """The engine on a VirtualRing (one process plays every rank in turn) gives each rank's rows."""
    from ringfa3.ops import resolve_backend
    from ringfa3.parallel import global_positions
    from ringfa3.parallel.ring import ring_attention
    from ringfa3.parallel.virtual import VirtualRing

    world, dtype = 5, torch.bfloat16 if device == "cuda" else torch.float32
    q, k, v = (torch.randn(2, 80, 4, 64, device=device).to(dtype) for _ in range(3))
    ref_out = reference64(q, k, v, torch.zeros_like(q), True)["out"]
    shards = [torch.stack([shard_of(k, world, r, layout), shard_of(v, world, r, layout)]) for r in range(world)]
    single, _ = attention(q, k, v, causal=True)
    base = rel_err(single, ref_out)
    for rank in range(world):
        ql = shard_of(q, world, rank, layout)
        impl = resolve_backend("auto", ql, shards[rank][0], shards[rank][1], True, (-1, -1))
        out, _ = ring_attention(ql, shards[rank][0], shards[rank][1], True, 64 ** -0.5,
                                VirtualRing(world, rank, shards), layout, impl)
        pos = global_positions(80, world, rank, layout).to(device)
        assert rel_err(out, ref_out[:, pos]) <= tolerance(base, dtype)


def shard_of(x, world, rank, layout):
    from ringfa3.parallel import global_positions
    return x[:, global_positions(x.shape[1], world, rank, layout).to(x.device)].contiguous()
