"""The optimizer side of a step, behind one small interface for torch (FSDP2 / none) and DeepSpeed.

    engine.model(x)                forward (the wrapped module)
    engine.backward(loss, sync)    loss already scaled so that averaging over all ranks gives the
                                   global token mean; sync=False on all but the last micro-batch
    engine.step() -> grad_norm     clip, optimizer and scheduler step, zero grads
    engine.skip()                  drop this step's gradients (non-finite loss)
    engine.checkpoint_writer() / checkpoint_reader()   what checkpoint.save / load call on every rank
    engine.scheduler                            its state goes to the checkpoint's meta.json
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from .parallelize import all_reduce_grads


def lr_lambda(optim_cfg, max_steps: int):
    """Linear warmup to 1, then cosine to min_lr_ratio at max_steps (a factor on optim.lr)."""
    warm, floor = optim_cfg.warmup_steps, optim_cfg.min_lr_ratio

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, max_steps - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def make_optimizer(model: nn.Module, cfg, device: torch.device):
    o = cfg.optim
    if o.state_dtype == "bfloat16":
        from .adamw_lowmem import LowPrecisionStateAdamW

        opt = LowPrecisionStateAdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                     weight_decay=o.weight_decay, state_dtype=torch.bfloat16)
    else:  # under cpu_offload the parameters (and so the step) are on the host
        on_gpu = device.type == "cuda" and not getattr(cfg.parallel, "cpu_offload", False)
        opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                weight_decay=o.weight_decay, foreach=on_gpu)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(o, cfg.train.max_steps))
    return opt, sched


class TorchEngine:
    def __init__(self, model: nn.Module, cfg, device: torch.device, fsdp: bool):
        self.model, self.fsdp = model, fsdp
        self.clip = cfg.optim.grad_clip
        self.optimizer, self.scheduler = make_optimizer(model, cfg, device)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def backward(self, loss: torch.Tensor, sync: bool) -> None:
        if self.fsdp:
            self.model.set_requires_gradient_sync(sync)
        loss.backward()

    def step(self) -> float:
        if not self.fsdp:
            all_reduce_grads(self.model)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip if self.clip > 0 else float("inf"))
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        norm = float(norm)
        if math.isfinite(norm):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return norm

    def skip(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def checkpoint_writer(self) -> dict:
        return self.state_dict()  # a DCP state dict: checkpoint.save hands it to dcp.save

    def checkpoint_reader(self):
        def read(path: str) -> None:
            import torch.distributed.checkpoint as dcp

            state = self.state_dict()
            dcp.load(state, checkpoint_id=path)
            self.load_state_dict(state)

        return read

    def state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        return {"model": get_model_state_dict(self.model),
                "optim": get_optimizer_state_dict(self.model, self.optimizer)}

    def load_state_dict(self, sd: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        set_model_state_dict(self.model, sd["model"])
        set_optimizer_state_dict(self.model, self.optimizer, sd["optim"])


def make_engine(model: nn.Module, cfg, device: torch.device, world: int):
    if cfg.parallel.engine == "deepspeed":
        from .deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(model, cfg, device, world)
    from torch.distributed.fsdp import FSDPModule

    return TorchEngine(model, cfg, device, fsdp=isinstance(model, FSDPModule))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1
