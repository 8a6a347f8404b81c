"""Meta-device init (train.meta_init): the same initial parameters as building the model on the CPU,
unsharded here and FSDP2-sharded over two ranks in tests/test_long_context.py; and the low-memory AdamW
used with CPU offload."""
from __future__ import annotations

import pytest
import torch

from ringfa3.models import Llama, LlamaConfig
from ringfa3.train.adamw_lowmem import LowPrecisionStateAdamW
from ringfa3.train.meta_init import materialize

from train_helpers import make_cfg

CFG = LlamaConfig(vocab_size=96, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, tie_embeddings=False)


def test_meta_init_equals_normal_init():
    torch.manual_seed(7)
    want = Llama(CFG).state_dict()
    with torch.device("meta"):
        model = Llama(CFG)
    assert all(p.is_meta for p in model.parameters())
    materialize(model, "cpu", seed=7, std=CFG.init_std)
    got = model.state_dict()
    assert list(got) == list(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_low_precision_state_adamw(state_dtype):
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(37, 5)), torch.nn.Parameter(torch.randn(11))]
    b = [torch.nn.Parameter(x.detach().clone()) for x in a]
    ref = torch.optim.AdamW(a, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, foreach=False)
    opt = LowPrecisionStateAdamW(b, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, state_dtype=state_dtype, chunk=7)
    for _ in range(5):
        for x, y in zip(a, b):
            x.grad = torch.randn_like(x)
            y.grad = x.grad.clone()
        ref.step()
        opt.step()
    assert opt.state[b[0]]["exp_avg"].dtype == state_dtype
    for x, y in zip(a, b):
        if state_dtype == torch.float32:
            assert torch.equal(x, y)  # the same arithmetic as torch's AdamW
        else:  # bf16 moments: a few ulps of bf16 in each update of size ~lr
            torch.testing.assert_close(x, y, rtol=0, atol=5 * 1e-2 * 2**-8)


def test_new_options_are_checked():
    with pytest.raises(ValueError, match="parallel.cpu_offload=true needs parallel.engine=fsdp"):
        make_cfg(["parallel.engine=none", "parallel.cpu_offload=true"])
    with pytest.raises(ValueError, match="optim.state_dtype"):
        make_cfg(["optim.state_dtype=fp8"])
    with pytest.raises(ValueError, match="train.offload_max_gb=-1"):
        make_cfg(["train.offload_max_gb=-1"])


def test_bf16_state_dtype_trains(tmp_path):
    from ringfa3.train.loop import train

    out = train(make_cfg(["train.max_steps=3", "optim.state_dtype=bfloat16"]), str(tmp_path / "bf16"))["losses"]
    ref = train(make_cfg(["train.max_steps=3"]), str(tmp_path / "fp32"))["losses"]
    assert out[0] == ref[0] and all(abs(x - y) < 0.05 * abs(y) for x, y in zip(out, ref))


def test_low_precision_state_adamw_updates_dtensor_shards(tmp_path):
    # FSDP2 hands the optimizer DTensors; the update must land in their local shards
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    made = not dist.is_initialized()
    if made:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        torch.manual_seed(0)
        w = torch.randn(8, 3)
        g = torch.randn(8, 3)
        plain = torch.nn.Parameter(w.clone())
        sharded = torch.nn.Parameter(distribute_tensor(w.clone(), mesh, [Shard(0)]))
        plain.grad, sharded.grad = g.clone(), distribute_tensor(g.clone(), mesh, [Shard(0)])
        for p in (plain, sharded):
            LowPrecisionStateAdamW([p], lr=0.1, state_dtype=torch.bfloat16).step()
        assert not torch.equal(plain.detach(), w)
        assert torch.equal(sharded.detach().full_tensor(), plain.detach())
    finally:
        if made:
            dist.destroy_process_group()
