"""Chunked LM head + loss and tiled MLP give the same loss and gradients as the plain path."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ringfa3.nn.chunked_loss import chunked_linear_cross_entropy
from ringfa3.nn.tiled import tiled_forward


@pytest.mark.parametrize("chunk", [7, 16, 1000])  # not a multiple of the length, a multiple, bigger
def test_chunked_cross_entropy_is_exact(chunk):
    torch.manual_seed(0)
    hidden = torch.randn(3, 37, 24, requires_grad=True)
    weight = torch.randn(50, 24, requires_grad=True)
    labels = torch.randint(0, 50, (3, 37))
    labels[0, :5] = -100
    want = F.cross_entropy(hidden.reshape(-1, 24) @ weight.t(), labels.reshape(-1), reduction="sum")
    gw = torch.autograd.grad(want * 0.5, (hidden, weight))
    got = chunked_linear_cross_entropy(hidden, weight, labels, chunk)
    gg = torch.autograd.grad(got * 0.5, (hidden, weight))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for a, b in zip(gg, gw):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


class SwiGLU(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(d, f, bias=False), nn.Linear(d, f, bias=False), nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


@pytest.mark.parametrize("tile", [5, 16, 64])
def test_tiled_mlp_is_exact(tile):
    torch.manual_seed(0)
    mlp = SwiGLU(16, 48)
    x = torch.randn(2, 37, 16, requires_grad=True)
    dy = torch.randn(2, 37, 16)
    want = mlp(x)
    gw = torch.autograd.grad(want, [x, *mlp.parameters()], dy)
    got = tiled_forward(mlp, x, tile)
    gg = torch.autograd.grad(got, [x, *mlp.parameters()], dy)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for a, b in zip(gg, gw):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_bad_chunk_sizes():
    with pytest.raises(ValueError, match="chunk_tokens=0"):
        chunked_linear_cross_entropy(torch.randn(2, 4), torch.randn(5, 4), torch.zeros(2, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="tile_tokens=0"):
        tiled_forward(nn.Linear(4, 4), torch.randn(1, 3, 4), 0)


@pytest.mark.cuda
def test_activation_offload_keeps_results_and_frees_gpu_memory():
    from torch.utils.checkpoint import checkpoint

    from ringfa3.train.offload import OffloadActivations

    torch.manual_seed(0)
    blocks = nn.ModuleList([SwiGLU(1024, 4096) for _ in range(6)]).cuda()
    x = torch.randn(4, 4096, 1024, device="cuda", requires_grad=True)

    def run(offload):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        ctx = OffloadActivations() if offload else torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)
        with ctx:
            h = x
            for blk in blocks:
                h = h + checkpoint(blk, h, use_reentrant=True)
        torch.cuda.synchronize()
        held = torch.cuda.memory_allocated() - base  # what the graph keeps for the backward
        h.square().mean().backward()
        grads = [x.grad.clone()] + [p.grad.clone() for p in blocks.parameters()]
        x.grad = None
        blocks.zero_grad(set_to_none=True)
        return h.detach(), grads, held

    out0, g0, held0 = run(False)
    out1, g1, held1 = run(True)
    assert torch.equal(out0, out1)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert held1 < held0 / 2, (held0, held1)


def test_all_options_on_and_meta_init_under_fsdp_two_ranks(tmp_path):
    # FSDP2 over 2 gloo ranks: reentrant checkpointing (what offload uses), chunked loss, tiled MLP and
    # a host cap give the losses of all off; and meta-device init (each rank materializes only its
    # shards, the default) gives the losses of the whole model built on the CPU first
    from train_helpers import losses, run_world

    on = ["train.max_steps=3", "train.activation_checkpointing=true", "train.offload_activations=true",
          "train.loss_chunk_tokens=40", "train.mlp_chunk_tokens=24", "train.offload_max_gb=1"]
    jobs = [(["train.max_steps=3"], str(tmp_path / "off")), (on, str(tmp_path / "on")),
            (["train.max_steps=3", "train.meta_init=false"], str(tmp_path / "cpu_init"))]
    res = run_world(2, jobs, str(tmp_path / "store"))
    off_l, on_l, cpu_init = (losses(r) for r in res[0])
    assert on_l == pytest.approx(off_l, rel=1e-6)
    assert off_l == pytest.approx(cpu_init, rel=1e-6)


@pytest.mark.cuda
def test_offload_with_chunked_loss_unpacks_out_of_order():
    # the chunked loss saves (d_hidden, d_weight) together and the backward takes them back in another
    # order than reversed saving: the prefetch must skip what is already taken
    from ringfa3.train.offload import OffloadActivations

    torch.manual_seed(0)
    hidden = torch.randn(4096, 256, device="cuda", requires_grad=True)
    weight = torch.randn(1024, 256, device="cuda", requires_grad=True)
    labels = torch.randint(0, 1024, (4096,), device="cuda")
    want = torch.autograd.grad(chunked_linear_cross_entropy(hidden, weight, labels, 1000), (hidden, weight))
    with OffloadActivations(min_bytes=1):
        loss = chunked_linear_cross_entropy(hidden * 1.0, weight, labels, 1000)
    got = torch.autograd.grad(loss, (hidden, weight))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
