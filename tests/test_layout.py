"""Layouts, the causal block plan and the float32 LSE merge."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from ringfa3.parallel import global_positions, merge_into
from ringfa3.parallel.plan import blocks_from_positions, ring_blocks

from distributed import run_distributed

LAYOUTS = ("contiguous", "zigzag", "stripe")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("world", (1, 2, 3, 4, 5))
def test_positions_partition_the_sequence_in_order(layout, world):
    seqlen = 2 * world * 3
    parts = [global_positions(seqlen, world, r, layout) for r in range(world)]
    assert torch.equal(torch.cat(parts).sort().values, torch.arange(seqlen))
    for p in parts:
        assert p.numel() == seqlen // world and torch.all(p[1:] > p[:-1])  # increasing: the plan relies on it


def test_zigzag_positions():
    assert global_positions(8, 2, 0, "zigzag").tolist() == [0, 1, 6, 7]
    assert global_positions(8, 2, 1, "zigzag").tolist() == [2, 3, 4, 5]
    assert global_positions(6, 3, 2, "stripe").tolist() == [2, 5]


def _shard_roundtrip(rank, world):
    from ringfa3.parallel import shard, unshard
    x = torch.arange(2 * 24 * 3, dtype=torch.float32).view(2, 24, 3)
    out = {}
    for layout in LAYOUTS:
        local = shard(x, 1, None, layout)
        pos = global_positions(24, world, rank, layout)
        assert torch.equal(local, x[:, pos])
        out[layout] = torch.equal(unshard(local, 1, None, layout), x)
    return out


@pytest.mark.parametrize("world", (1, 2, 3, 4))
def test_shard_unshard_roundtrip(world):
    for r in run_distributed(_shard_roundtrip, world):
        assert all(r.values()), r


def _mask_from_blocks(blocks, nq, nk):
    m = torch.zeros(nq, nk, dtype=torch.bool)
    for b in blocks:
        tile = torch.ones(b.q1 - b.q0, b.k1 - b.k0, dtype=torch.bool)
        if b.causal:
            assert b.q1 - b.q0 == b.k1 - b.k0, "causal blocks are square"
            tile = tile.tril()
        assert not (m[b.q0:b.q1, b.k0:b.k1] & tile).any(), "blocks overlap"
        m[b.q0:b.q1, b.k0:b.k1] |= tile
    return m


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("world", (1, 2, 3, 4))
def test_ring_blocks_cover_exactly_the_causal_mask(layout, world):
    s_local = 12
    for rank, src in itertools.product(range(world), repeat=2):
        qp = global_positions(s_local * world, world, rank, layout)
        kp = global_positions(s_local * world, world, src, layout)
        want = kp[None, :] <= qp[:, None]
        got = _mask_from_blocks(ring_blocks(s_local, world, rank, src, layout, True), s_local, s_local)
        assert torch.equal(got, want), (layout, world, rank, src)


def test_zigzag_balances_work_at_every_step():
    world, s_local = 4, 16
    for step in range(world):
        work = set()
        for rank in range(world):
            blocks = ring_blocks(s_local, world, rank, (rank - step) % world, "zigzag", True)
            work.add(sum((b.q1 - b.q0) * (b.k1 - b.k0) for b in blocks))
        assert len(work) == 1, f"step {step}: unequal work {work}"


def test_plan_on_irregular_positions():
    q_pos, k_pos = [0, 3, 4, 5, 9, 10], [1, 2, 3, 4, 5, 11]
    blocks = blocks_from_positions(q_pos, k_pos, True)
    want = torch.tensor(k_pos)[None, :] <= torch.tensor(q_pos)[:, None]
    assert torch.equal(_mask_from_blocks(blocks, 6, 6), want)


def test_merge_is_exact_and_handles_empty_rows():
    b, s, h, d = 2, 5, 3, 4
    scores = torch.randn(b, h, s, 10, dtype=torch.float64)
    v = torch.randn(b, 10, h, d, dtype=torch.float64)
    scores[:, :, 0, :] = -math.inf  # row 0 sees nothing in either block
    scores[:, :, 1, 5:] = -math.inf  # row 1 sees nothing in the second block

    def part(sl):
        sc = scores[..., sl]
        lse = torch.logsumexp(sc, -1)
        out = torch.einsum("bhij,bjhd->bihd", torch.softmax(sc, -1).nan_to_num(0), v[:, sl])
        return out, lse

    (o1, l1), (o2, l2), (ow, lw) = part(slice(0, 5)), part(slice(5, 10)), part(slice(0, 10))
    acc, lacc = o1.float().clone(), l1.float().clone()
    merge_into(acc, lacc, o2, l2)
    assert not torch.isnan(acc).any()
    assert torch.all(lacc[:, :, 0] == -math.inf) and torch.all(acc[:, 0] == 0)
    torch.testing.assert_close(acc.double(), ow, rtol=1e-6, atol=1e-6)
    fin = torch.isfinite(lw)
    torch.testing.assert_close(lacc.double()[fin], lw[fin], rtol=1e-6, atol=1e-6)
