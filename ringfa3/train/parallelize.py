"""Parallelism applied to a finished model from outside: a (dp, cp) DeviceMesh, context parallelism
by setting each attention layer's group/layout, activation checkpointing, torch.compile and FSDP2.

Order as in torchtitan: checkpoint wrapper -> compile -> fully_shard (blocks, then the root, which
keeps the embedding and the (tied) head together).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from ringfa3.nn import RingFlashAttention


def build_mesh(device: torch.device, dp: int, cp: int) -> DeviceMesh:
    """Ranks laid out row-major over (dp, cp): the ranks of one cp group are neighbours."""
    return init_device_mesh(device.type, (dp, cp), mesh_dim_names=("dp", "cp"))


def apply_context_parallel(model: nn.Module, cp_group, layout: str, backend: str) -> int:
    """Point every RingFlashAttention at the cp group; returns how many layers were set."""
    n = 0
    for m in model.modules():
        if isinstance(m, RingFlashAttention):
            m.group, m.layout, m.backend = cp_group, layout, backend
            n += 1
    return n


def apply_memory_options(model: nn.Module, loss_chunk_tokens: int, mlp_chunk_tokens: int) -> None:
    """Chunked LM head + loss and tiled MLPs: same math, activations for one chunk at a time."""
    model.loss_chunk_tokens = loss_chunk_tokens
    for block in model.layers:
        block.mlp_chunk_tokens = mlp_chunk_tokens


def apply_activation_checkpointing(model: nn.Module, reentrant: bool = False) -> None:
    """Recompute each block in backward (its ring attention included). State-dict keys are kept:
    torch.distributed.checkpoint strips the wrapper's prefix. `reentrant` saves each block's input
    through autograd's saved-tensor hooks, which is what activation offload moves to the host."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    impl = CheckpointImpl.REENTRANT if reentrant else CheckpointImpl.NO_REENTRANT
    for i, block in enumerate(model.layers):
        model.layers[i] = checkpoint_wrapper(block, checkpoint_impl=impl, preserve_rng_state=False)


def apply_compile(model: nn.Module) -> None:
    """Compile block by block (in place, so parameter names do not change)."""
    for block in model.layers:
        block.compile()


def apply_fsdp(model: nn.Module, mesh: DeviceMesh, param_dtype: torch.dtype | None, cpu_offload: bool = False,
               pin_memory: bool = True) -> None:
    """FSDP2 over all ranks (dp x cp flattened: cp ranks hold different tokens of the same sequences,
    so their gradients are summed like data-parallel ones). Mixed precision when param_dtype is set.
    cpu_offload: parameter shards, gradients and the optimizer step live in pinned host memory."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    fsdp_mesh = mesh._flatten("dp_cp") if mesh.ndim > 1 else mesh
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else MixedPrecisionPolicy()
    offload = CPUOffloadPolicy(pin_memory=pin_memory) if cpu_offload else OffloadPolicy()
    last = len(model.layers) - 1
    for i, block in enumerate(model.layers):
        # The last block's params are needed right away by backward: no point resharding them.
        fully_shard(block, mesh=fsdp_mesh, mp_policy=mp, reshard_after_forward=i < last, offload_policy=offload)
    fully_shard(model, mesh=fsdp_mesh, mp_policy=mp, offload_policy=offload)


def all_reduce_grads(model: nn.Module) -> None:
    """engine=none with several ranks: average gradients over all ranks (like FSDP's reduce)."""
    world = dist.get_world_size()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if world == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()
