"""Build the model on the meta device, wrap and shard it, then allocate and fill only what each rank
holds, so a large model never exists whole (or in float32 on the host) before it is sharded.

    with torch.device("meta"):
        model = Llama(cfg)                      # shapes only, no memory
    ...checkpoint wrapper, fully_shard(...)     # still no memory
    materialize(model, device, seed)            # to_empty + Llama's init, one parameter at a time

Values: each parameter is drawn whole, in the order of Llama.reset_parameters, from a generator seeded
with `seed` on `init_device`, and each rank copies out its own shard; at most one whole parameter
exists at a time. With init_device cpu the values equal `torch.manual_seed(seed); Llama(cfg)` for
every world size (tests/test_train_meta_init.py); with init_device cuda they come from the CUDA
generator (fast for billions of parameters, the same for every world size, not equal to the CPU values).
"""
from __future__ import annotations

import torch
from torch import nn

from ringfa3.models.llama import init_parameter_


def _local_slice(p) -> tuple[torch.Tensor, tuple[slice, ...] | None]:
    """(the tensor this rank stores, the index of its part in the whole parameter) for a DTensor or
    a plain parameter (index None: the whole)."""
    from torch.distributed.tensor import DTensor

    if not isinstance(p, DTensor):
        return p.data, None
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    return p.to_local(), tuple(slice(o, o + n) for o, n in zip(offset, shape))


@torch.no_grad()
def materialize(model: nn.Module, device: torch.device | str, seed: int, std: float,
                init_device: torch.device | str = "cpu") -> None:
    """Allocate a meta-device `model`'s parameters on `device` (FSDP2 keeps its shards there; with
    CPU offload that is the host) and give them Llama's initial values (see the module docstring)."""
    model.to_empty(device=device)
    gen = torch.Generator(device=init_device).manual_seed(seed)
    for p in model.parameters():
        local, index = _local_slice(p)
        full = torch.empty(p.shape, dtype=p.dtype, device=init_device)
        init_parameter_(full, std, gen)
        local.copy_(full if index is None else full[index])
        del full
