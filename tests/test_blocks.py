"""The batched block entry (ops/blocks.py) and its varlen-kernel form (ops/segments.py).

On CPU the varlen kernel is emulated with the reference backend (varlen_emulator.py), so the grouping,
the filler segments, the lse mapping and the key pieces are all checked here; the ring over gloo with
this path runs in test_ring_masks.py (it shares that file's process groups). The GPU tests run the real
FA2 kernel (flash backend) and the cudnn backend's hand-over to it. Ground truth: float64 attention with
the blocks' union as mask.
"""
from __future__ import annotations

import itertools
import math
import os
import random

import pytest
import torch

from ringfa3.ops import BACKENDS, reference
from ringfa3.ops.blocks import Block, backward_blocks, forward_blocks, loop_backward, loop_forward
from ringfa3.ops.merge import merge_into
from ringfa3.ops.masks import tile_mask
from ringfa3.ops import segments
from ringfa3.ops.segments import group_blocks, varlen_calls
from ringfa3.ops import sm90 as sm90_module
from ringfa3.ops.sm90 import Sm90Backend, varlen_bwd_tiles, varlen_tiles
from ringfa3.parallel.plan import ring_blocks
from ringfa3.parallel.varlen import padded_bounds

from reference import attention64, blocks_mask, tolerance
from varlen_emulator import EmulatedVarlen, call_segments, emulated_bwd, emulated_fwd

SEED = int.from_bytes(os.urandom(4), "little")
INF = math.inf


# ---------------------------------------------------------------- problems: one ring step's blocks
DOCS = {"odd": [5, 17, 3, 23, 1, 11], "one_long": [61], "short": [2] * 20 + [7]}


def step_blocks(world, rank, src, layout, causal, window, docs):
    bounds = None
    if docs is not None:
        cu = [0]
        for n in DOCS[docs]:
            cu.append(cu[-1] + n)
        bounds = padded_bounds(cu, world, layout)
    s_local = (bounds[-1] if bounds else 48) // world
    return ring_blocks(s_local, world, rank, src, layout, causal, window, bounds), s_local


@pytest.mark.parametrize("split", (False, True), ids=("one_launch", "split_by_size"))
def test_varlen_calls_cover_each_pair_of_the_blocks_once(split, monkeypatch):
    """For every step of small rings (layouts, masks, documents), the calls' segments under FA2's
    conventions see exactly the (row, key) pairs of the blocks, each once; dense and packed-document
    causal steps are a single call."""
    monkeypatch.setattr(segments, "SPLIT_BY_SIZE", split)
    monkeypatch.setattr(segments, "_CACHE", type(segments._CACHE)())
    masks = [(True, (-1, -1)), (False, (-1, -1)), (True, (4, -1)), (True, (30, -1)), (False, (5, 5)), (False, (20, 3))]
    for world, layout, (causal, window), docs in itertools.product(
            (3, 4), ("contiguous", "zigzag", "stripe"), masks, (None, "odd", "short")):
        for rank, src in itertools.product(range(world), range(world)):
            blocks, s = step_blocks(world, rank, src, layout, causal, window, docs)
            if not blocks:
                continue
            got = torch.zeros(s, s, dtype=torch.int32)
            calls = varlen_calls(blocks, 1, s, s, "cpu")
            for call in calls:
                segs, (left, right) = call_segments(call)
                for a, b, c, d in segs:
                    if b > a and d > c:
                        got[a:b, c:d] += tile_mask(0, b - a, 0, d - c, b - a, d - c, False, (left, right), "cpu").int()
            want = blocks_mask(blocks, s, s, count=True)
            assert torch.equal(got, want), (world, layout, causal, window, docs, rank, src)
            if causal and window == (-1, -1) and not split:
                assert len(calls) == 1, (world, layout, docs, rank, src, blocks)


# (world, rank, src, layout, causal, window, docs, gqa): rows no block covers (zigzag src > rank: the
# first chunk sees nothing), blocks sharing query rows (zigzag windows: two calls), GQA 1/2/4/8,
# windows smaller and larger than a shard, odd document lengths
CASES = [
    (4, 1, 2, "zigzag", True, (-1, -1), None, 1),
    (4, 2, 1, "zigzag", True, (6, -1), None, 2),
    (3, 0, 0, "zigzag", True, (30, -1), None, 4),
    (4, 3, 0, "zigzag", False, (5, 5), None, 8),
    (2, 1, 0, "contiguous", False, (20, 3), None, 2),
    (4, 1, 1, "stripe", True, (-1, -1), "odd", 1),
    (4, 0, 3, "stripe", True, (-1, -1), "short", 4),
    (3, 2, 1, "zigzag", True, (6, -1), "odd", 2),
    (2, 0, 1, "contiguous", False, (-1, -1), "one_long", 8),
    (4, 2, 2, "stripe", False, (5, 5), "odd", 1),
]
H, D = 8, 16


def _problem(case, device="cpu", dtype=torch.float64, seed=SEED):
    world, rank, src, layout, causal, window, docs, gqa = case
    blocks, s = step_blocks(world, rank, src, layout, causal, window, docs)
    g = torch.Generator().manual_seed(seed)
    q, dout = (torch.randn(2, s, H, D, generator=g) for _ in range(2))
    k, v = (torch.randn(2, s, H // gqa, D, generator=g) for _ in range(2))
    return blocks, [x.to(device, dtype) for x in (q, k, v, dout)]


def _expected(blocks, q, k, v, dout):
    qs, ks, vs = (x.detach().double().requires_grad_() for x in (q, k, v))
    out, lse = attention64(qs, ks, vs, mask=blocks_mask(blocks, q.shape[1], k.shape[1]).to(q.device))
    dq, dk, dv = torch.autograd.grad(out, (qs, ks, vs), dout.double())
    return dict(out=out.detach(), lse=lse.detach(), dq=dq, dk=dk, dv=dv)


def _err(x, ref):
    """rel_err with the norm floored at 1: gradients that are exactly 0 in float64 (a row that sees one
    key) are compared absolutely."""
    x, ref = x.double(), ref.double()
    fin = torch.isfinite(ref)
    assert torch.equal(fin, torch.isfinite(x)) and not torch.isnan(x).any()
    return ((x[fin] - ref[fin]).norm() / ref[fin].norm().clamp_min(1.0)).item()


def _run(fwd, bwd, impl, blocks, q, k, v, dout, global_out, global_lse):
    """(out, lse) of fwd into fresh accumulators, grads of bwd given the global out/lse."""
    b, s, h, d = q.shape
    out = torch.zeros(b, s, h, d, dtype=torch.float32, device=q.device)
    lse = torch.full((b, h, s), -INF, dtype=torch.float32, device=q.device)
    fwd(impl, q, k, v, blocks, d ** -0.5, out, lse)
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    dk, dv = (torch.zeros(k.shape, dtype=torch.float32, device=q.device) for _ in range(2))
    for k0, k1, dkb, dvb in bwd(impl, dout, q, k, v, global_out.to(q.dtype), global_lse.float(), blocks, d ** -0.5, dq):
        dk[:, k0:k1] += dkb
        dv[:, k0:k1] += dvb
    return dict(out=out, lse=lse, dq=dq, dk=dk, dv=dv)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"w{c[0]}r{c[1]}s{c[2]}-{c[3]}-{'causal' if c[4] else 'full'}"
                         f"-w{c[5][0]}_{c[5][1]}-{c[6]}-gqa{c[7]}")
def test_batched_entry_equals_per_block_loop(case):
    blocks, (q, k, v, dout) = _problem(case)
    ref = _expected(blocks, q, k, v, dout)
    loop = _run(loop_forward, loop_backward, BACKENDS["reference"], blocks, q, k, v, dout, ref["out"], ref["lse"])
    batched = _run(forward_blocks, backward_blocks, EmulatedVarlen(), blocks, q, k, v, dout, ref["out"], ref["lse"])
    assert torch.equal(torch.isinf(batched["lse"]), torch.isinf(ref["lse"]))  # rows no block covers: -inf
    assert torch.all(batched["out"][torch.isinf(ref["lse"]).transpose(1, 2)] == 0)
    for name in ref:  # float32 accumulators: float32-level agreement with each other and float64
        assert _err(loop[name], ref[name]) <= 1e-5, name
        assert _err(batched[name], ref[name]) <= 1e-5, name
        assert _err(batched[name], loop[name]) <= 1e-5, name


class _AddsDq:
    """The reference backend with the sm90 backend's dq_acc entry (dQ added into a given view), to check
    that loop_backward hands each block its own rows."""
    accumulates_dq = True

    def __init__(self):
        self.views = []
        self.forward = reference.forward

    def backward(self, *args, dq_acc=None):
        dq, dk, dv = reference.backward(*args)
        self.views.append((dq_acc.data_ptr(), tuple(dq_acc.shape)))
        return dq_acc.add_(dq), dk, dv


@pytest.mark.parametrize("case", CASES[:6], ids=lambda c: f"w{c[0]}r{c[1]}s{c[2]}-{c[3]}")
def test_loop_backward_lets_the_backend_add_dq_into_the_block_rows(case):
    blocks, (q, k, v, dout) = _problem(case)
    ref = _expected(blocks, q, k, v, dout)
    plain = _run(loop_forward, loop_backward, BACKENDS["reference"], blocks, q, k, v, dout, ref["out"], ref["lse"])
    impl = _AddsDq()
    into = _run(loop_forward, loop_backward, impl, blocks, q, k, v, dout, ref["out"], ref["lse"])
    assert len(impl.views) == len(blocks)
    for name in ("dq", "dk", "dv"):
        assert torch.allclose(into[name], plain[name], rtol=1e-6, atol=1e-6), name


class _Sm90OnCpu(Sm90Backend):
    """The sm90 backend's forward_blocks with its two launches (varlen_merge, forward_merge) done by
    the reference backend, so its routing and per-batch packing run on CPU (the kernels: test_sm90.py)."""

    def __init__(self):
        super().__init__(None)
        self.launches = []

    def unsupported(self, q, k, v, causal=False, window=(-1, -1)):
        return None

    def varlen_merge(self, q, k, v, call, scale, out_acc, lse_acc):
        self.launches.append("varlen")
        out, lse = emulated_fwd(q, k, v, call, scale)   # (s_q, h, d), (h, s_q), +inf: no keys
        merge_into(out_acc[None], lse_acc[None], out[None], torch.where(lse == INF, -INF, lse)[None])

    def forward_merge(self, q, k, v, causal, scale, window, out_acc, lse_acc):
        self.launches.append("dense")
        merge_into(out_acc, lse_acc, *reference.forward(q, k, v, causal, scale, window, True))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"w{c[0]}r{c[1]}s{c[2]}-{c[3]}-{'causal' if c[4] else 'full'}"
                         f"-w{c[5][0]}_{c[5][1]}-{c[6]}-gqa{c[7]}")
def test_sm90_forward_blocks_packs_each_batch_entry(case):
    blocks, (q, k, v, dout) = _problem(case)
    ref = _expected(blocks, q, k, v, dout)
    impl = _Sm90OnCpu()
    b, s, h, d = q.shape
    out = torch.zeros(b, s, h, d, dtype=torch.float32)
    lse = torch.full((b, h, s), -INF)
    forward_blocks(impl, q, k, v, blocks, d ** -0.5, out, lse)
    assert impl.launches == ["varlen"] * (b * len(varlen_calls(blocks, 1, s, k.shape[1], "cpu")))
    assert torch.equal(torch.isinf(lse), torch.isinf(ref["lse"]))
    assert _err(out, ref["out"]) <= 1e-5 and _err(lse, ref["lse"]) <= 1e-5


@pytest.mark.parametrize("block_m", (128, 192))
def test_sm90_varlen_tile_list_covers_the_rows_that_see_keys(block_m):
    """Over the varlen calls of every case: the listed tiles are exactly the query blocks of a segment
    in which some row sees a key, each once."""
    for case in CASES:
        blocks, (q, *_) = _problem(case)
        s = q.shape[1]
        for call in varlen_calls(blocks, 1, s, s, "cpu"):
            tiles = varlen_tiles(call.bounds_q, call.bounds_k, call.left, call.right, block_m)
            assert len(set(tiles)) == len(tiles)
            segs, window = call_segments(call)
            want = set()
            for i, (a, b, c, d) in enumerate(segs):
                if b > a and d > c:
                    sees = tile_mask(0, b - a, 0, d - c, b - a, d - c, False, window, "cpu").any(1)   # (rows,)
                    want |= {(i, m) for m in range(-(-(b - a) // block_m)) if sees[m * block_m:(m + 1) * block_m].any()}
            assert set(tiles) == want, case


@pytest.mark.parametrize("deterministic", (False, True))
@pytest.mark.parametrize("block_m,block_n", ((64, 128), (64, 64)))
def test_sm90_varlen_backward_tile_list_orders_every_key_block(block_m, block_n, deterministic):
    """Over the varlen calls of every case: the backward's list holds each key block of each segment
    once, a segment's blocks ascending (deterministic: descending, the dQ order), and sorts by the most
    query blocks (the hull of the query blocks that see a key of the block) of a block and those of its
    segment launched after it, so the longest CTA starts first."""
    for case in CASES:
        blocks, (q, *_) = _problem(case)
        s = q.shape[1]
        for call in varlen_calls(blocks, 1, s, s, "cpu"):
            tiles = varlen_bwd_tiles(call.bounds_q, call.bounds_k, call.left, call.right, block_m, block_n,
                                     deterministic)
            segs, window = call_segments(call)
            assert sorted(tiles) == [(i, n) for i, (_, _, c, d) in enumerate(segs) for n in range(-(-(d - c) // block_n))]
            steps = {}
            for i, (a, b, c, d) in enumerate(segs):
                sees = tile_mask(0, b - a, 0, d - c, b - a, d - c, False, window, "cpu")   # (rows, keys)
                for n in range(-(-(d - c) // block_n)):
                    ms = [m for m in range(-(-(b - a) // block_m))
                          if sees[m * block_m:(m + 1) * block_m, n * block_n:(n + 1) * block_n].any()]
                    steps[i, n] = ms[-1] - ms[0] + 1 if ms else 0
            n_blocks = lambda i: -(-(segs[i][3] - segs[i][2]) // block_n)   # noqa: E731
            later = lambda i, n: range(n + 1) if deterministic else range(n, n_blocks(i))   # noqa: E731
            most = [max(steps[i, m] for m in later(i, n)) for i, n in tiles]
            assert most == sorted(most, reverse=True), case
            ahead = 1 if deterministic else -1   # the neighbour that must be launched earlier
            for i, n in tiles:
                assert (i, n + ahead) not in tiles[tiles.index((i, n)):], case


def test_sm90_forward_blocks_keeps_dense_steps_on_the_dense_kernel():
    impl = _Sm90OnCpu()
    q, k, v = (torch.randn(1, 600, 2, 16, dtype=torch.float64) for _ in range(3))
    out, lse = torch.zeros(1, 600, 2, 16), torch.full((1, 2, 600), -INF)
    blocks = (Block(0, 300, 0, 300, causal=True), Block(300, 600, 0, 600, causal=True))   # a zigzag step
    forward_blocks(impl, q, k, v, blocks, 0.25, out, lse)
    assert impl.launches == ["dense", "dense"]
    want, _ = attention64(q, k, v, mask=blocks_mask(blocks, 600, 600))
    assert _err(out, want) <= 1e-5


@pytest.mark.parametrize("d", (16, 256))
@pytest.mark.parametrize("ours", (False, True))
@pytest.mark.parametrize("deterministic", (False, True))
def test_sm90_backward_blocks_routes_documents_to_one_varlen_launch(deterministic, ours, d, monkeypatch):
    """Packed documents: one varlen backward launch, ours when varlen_backward_blocks is on (emulated
    here) and the head dim's kernel has a varlen form (not 256), else FA2's (emulated) unless the call
    asks for deterministic results; a dense step: our kernel per block. Gradients equal float64's
    either way."""
    impl = _Sm90OnCpu()
    impl.varlen_backward_blocks = ours
    ours = ours and d != 256
    launches = []
    monkeypatch.setattr(sm90_module, "fa2_varlen_bwd", lambda *a: launches.append("fa2") or emulated_bwd(*a))
    monkeypatch.setattr(impl, "varlen_backward", lambda *a, deterministic: launches.append(("ours", deterministic))
                        or emulated_bwd(*a))
    def dense(*a, dq_acc):   # the sm90 backend's dq_acc entry: dQ added into the block's rows
        launches.append("dense")
        dq, dk, dv = reference.backward(*a)
        return dq_acc.add_(dq), dk, dv
    monkeypatch.setattr(impl, "backward", dense)
    docs = (Block(0, 40, 0, 40, causal=True), Block(40, 70, 40, 70, causal=True), Block(70, 120, 70, 120, causal=True))
    dense = (Block(0, 1024, 0, 1024, causal=True), Block(1024, 2048, 0, 2048, causal=True))   # a zigzag step
    want_docs = [("ours", deterministic)] if ours else ["dense"] * 3 if deterministic else ["fa2"]
    for blocks, want in ((docs, want_docs), (dense, ["dense"] * 2)):
        s = blocks[-1].q1
        g = torch.Generator().manual_seed(s)
        q, k, v, dout = (torch.randn(1, s, 2, d, generator=g, dtype=torch.float64) for _ in range(4))
        ref = _expected(blocks, q, k, v, dout)
        launches.clear()
        dq = torch.zeros(q.shape, dtype=torch.float64)
        dk, dv = torch.zeros_like(k), torch.zeros_like(v)
        for k0, k1, dkb, dvb in backward_blocks(impl, dout, q, k, v, ref["out"], ref["lse"], blocks, d ** -0.5, dq,
                                                deterministic):
            dk[:, k0:k1] += dkb
            dv[:, k0:k1] += dvb
        assert launches == want
        for name, got in (("dq", dq), ("dk", dk), ("dv", dv)):
            assert _err(got, ref[name]) <= 1e-6, name


def test_packed_documents_take_one_launch_per_step(monkeypatch):
    """Packed documents over a stripe split: the step's 60 documents are one kernel call; with
    split_by_size on, one long document goes to a call of its own."""
    rng = random.Random(0)
    cu = [0]
    for _ in range(60):
        cu.append(cu[-1] + rng.randint(1, 90))
    bounds = padded_bounds(cu, 8, "stripe")
    for src in range(8):
        blocks = ring_blocks(bounds[-1] // 8, 8, 3, src, "stripe", True, (-1, -1), bounds)
        assert len(blocks) > 20 and len(group_blocks(blocks)) == 1
    monkeypatch.setattr(segments, "SPLIT_BY_SIZE", True)
    bounds = padded_bounds(cu + [cu[-1] + 30000], 8, "stripe")  # one long document at the end
    s = bounds[-1] // 8
    blocks = ring_blocks(s, 8, 3, 3, "stripe", True, (-1, -1), bounds)
    calls = group_blocks(blocks, s, s)
    assert len(calls) == 2 and len(calls[1][2]) == 1  # the long one apart
    assert sum(len(c[2]) for c in calls) == len(blocks)


# ---------------------------------------------------------------- GPU: the real FA2 varlen kernel
GPU_CASES = CASES + [(8, 5, 2, "stripe", True, (-1, -1), "odd", 2), (4, 3, 3, "zigzag", True, (9, -1), "short", 1)]


class _LoopOnly:
    """A backend seen without its batched entry: one dense call per block (the yardstick)."""

    def __init__(self, impl):
        self.impl = impl

    def forward(self, *a):
        return self.impl.forward(*a)

    def backward(self, *a):
        return self.impl.backward(*a)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ("flash", "cudnn"))
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: f"w{c[0]}r{c[1]}s{c[2]}-{c[3]}-{'causal' if c[4] else 'full'}"
                         f"-w{c[5][0]}_{c[5][1]}-{c[6]}-gqa{c[7]}")
def test_gpu_batched_entry_matches_float64(backend, case):
    impl = BACKENDS[backend]
    blocks, (q, k, v, dout) = _problem(case, "cuda", torch.bfloat16)
    if impl.unsupported(q, k, v, case[4], case[5]):
        pytest.skip(f"{backend} does not serve this mask")
    ref = _expected(blocks, q, k, v, dout)
    # yardstick: one dense FA2 call per block (cuDNN refuses the 1 x 1 blocks of short documents)
    loop = _run(loop_forward, loop_backward, _LoopOnly(BACKENDS["flash"]), blocks, q, k, v, dout,
                ref["out"], ref["lse"])
    batched = _run(forward_blocks, backward_blocks, impl, blocks, q, k, v, dout, ref["out"], ref["lse"])
    for name in ref:
        base = _err(loop[name], ref[name])
        err, tol = _err(batched[name], ref[name]), tolerance(base, torch.bfloat16)
        assert err <= tol, f"{name}: rel err {err:.3g} > {tol:.3g} (per-block {backend} {base:.3g}, seed {SEED})"


# ---------------------------------------------------------------- BackwardRows: a ring's key sets
ROW_SETS = {   # (keys, blocks) per key set against 2200 query rows
    "aligned": [(1100, [Block(0, 2200, 0, 1100)]), (1500, [Block(1088, 2200, 0, 1500, causal=True)])],
    "mixed": [(1100, [Block(0, 2200, 0, 1100)]), (1500, [Block(1088, 2200, 0, 1500, causal=True)]),
              (1100, [Block(100, 1200, 0, 1100, window=(300, 0))]),                     # rows off the block grid
              (1200, [Block(0, 600, 0, 600), Block(600, 1200, 600, 1200, causal=True)])],  # small: varlen launch
}


def _rows_run(rows, ks, vs, sets):
    """Each key set's blocks through `rows`; (dq, dk, dv) with the key sets' gradients concatenated."""
    dks, dvs = [], []
    for k, v, (_, blocks) in zip(ks, vs, sets):
        dk, dv = (torch.zeros(k.shape, dtype=torch.float32, device=k.device) for _ in range(2))
        for k0, k1, dkb, dvb in rows.add(k, v, blocks):
            dk[:, k0:k1] += dkb
            dv[:, k0:k1] += dvb
        dks.append(dk)
        dvs.append(dv)
    return dict(dq=rows.finish(torch.bfloat16), dk=torch.cat(dks, 1), dv=torch.cat(dvs, 1))


@pytest.mark.cuda
@pytest.mark.parametrize("sets", ROW_SETS)
@pytest.mark.parametrize("deterministic", (False, True), ids=("atomic", "deterministic"))
@pytest.mark.parametrize("d", (64, 128, 256))
def test_sm90_backward_rows_share_one_workspace_and_match_float64(d, deterministic, sets):
    """The sm90 BackwardRows (one workspace, preprocess and dQ conversion once) against float64 and
    against the generic BackwardRows (a workspace per block, dQ summed in float32), whose error
    sets the tolerance; deterministic mode is bitwise repeatable."""
    from ringfa3.ops.blocks import BackwardRows
    be = sm90_module.BACKEND
    if be is None or not getattr(be._lib, "has_bwd", False):
        pytest.skip("no sm90 backward library")
    g = torch.Generator().manual_seed(SEED)
    sets = ROW_SETS[sets]
    q, dout = (torch.randn(2, 2200, 4, d, generator=g) for _ in range(2))
    ks, vs = ([torch.randn(2, n, 2, d, generator=g) for n, _ in sets] for _ in range(2))
    mask = torch.cat([blocks_mask(blocks, 2200, n) for n, blocks in sets], 1)   # every key set side by side
    q64, k64, v64 = (x.double().requires_grad_() for x in (q, torch.cat(ks, 1), torch.cat(vs, 1)))
    out64, lse64 = attention64(q64, k64, v64, mask=mask)
    ref = {name: g.cuda() for name, g in zip(("dq", "dk", "dv"), torch.autograd.grad(out64, (q64, k64, v64),
                                                                                      dout.double()))}
    q, dout, out = (x.cuda().bfloat16() for x in (q, dout, out64.detach()))
    ks, vs = ([x.cuda().bfloat16() for x in xs] for xs in (ks, vs))
    args = (dout, q, out, lse64.detach().float().cuda(), d ** -0.5, deterministic)
    rows = be.backward_rows(*args)
    ours = _rows_run(rows, ks, vs, sets)
    assert rows.ws is not None and (rows._dq is None) == (len(sets) == 2)   # the paths the sets should take
    generic = _rows_run(BackwardRows(be, *args), ks, vs, sets)
    for name in ref:
        base = _err(generic[name], ref[name])
        err, tol = _err(ours[name], ref[name]), tolerance(base, torch.bfloat16)
        assert err <= tol, f"{name}: rel err {err:.3g} > {tol:.3g} (per-block workspaces {base:.3g}, seed {SEED})"
    if deterministic:
        again = _rows_run(be.backward_rows(*args), ks, vs, sets)
        assert all(torch.equal(again[name], ours[name]) for name in ours)
