"""parallel.engine=deepspeed: the same loop under a DeepSpeed ZeRO engine (stage parallel.zero_stage).

DeepSpeed sees every rank as data parallel (cp ranks too: their gradients are summed like dp ones),
averages gradients over all ranks, clips (optim.grad_clip) and steps our AdamW and scheduler. On CPU it
runs with DS_ACCELERATOR=cpu and gloo. Its checkpoints go through checkpoint.save, so they are atomic
and pruned like the FSDP ones.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from .engine import make_optimizer

TAG = "deepspeed"


class DeepSpeedEngine:
    def __init__(self, model: nn.Module, cfg, device: torch.device, world: int):
        if cfg.optim.grad_accum != 1:
            raise ValueError(f"optim.grad_accum={cfg.optim.grad_accum} is not supported with parallel.engine="
                             f"deepspeed yet; use optim.grad_accum=1 (or parallel.engine=fsdp)")
        if device.type == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import torch.distributed as dist

        # DeepSpeed reads these even when the process group exists (torchrun sets them; spawn does not).
        for key, value in (("RANK", dist.get_rank()), ("WORLD_SIZE", world), ("LOCAL_RANK", dist.get_rank())):
            os.environ.setdefault(key, str(value))
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo" if device.type == "cpu" else "nccl")
        optimizer, scheduler = make_optimizer(model, cfg, device)
        per_rank = cfg.data.batch_size // (world // cfg.parallel.cp)
        bf16 = cfg.train.dtype == "bfloat16" or (cfg.train.dtype == "auto" and device.type == "cuda")
        config = {
            "train_micro_batch_size_per_gpu": per_rank,
            "gradient_accumulation_steps": 1,
            "train_batch_size": per_rank * world,
            "zero_optimization": {"stage": cfg.parallel.zero_stage},
            "gradient_clipping": cfg.optim.grad_clip,
            "bf16": {"enabled": bf16},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 1 << 30,
        }
        self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config, dist_init_required=False)

    @property
    def lr(self) -> float:
        return float(self.model.get_lr()[0])

    def backward(self, loss: torch.Tensor, sync: bool) -> None:
        self.model.backward(loss)

    def step(self) -> float | None:
        self.model.step()  # clip, optimizer step, scheduler step, zero grads
        norm = self.model.get_global_grad_norm()
        return None if norm is None else float(norm)

    def skip(self) -> None:
        self.model.zero_grad()
        self.scheduler.step()

    def checkpoint_writer(self):
        return lambda path: self.model.save_checkpoint(path, tag=TAG)

    def checkpoint_reader(self):
        def read(path: str) -> None:
            self.model.load_checkpoint(path, tag=TAG, load_optimizer_states=True, load_lr_scheduler_states=False)

        return read
