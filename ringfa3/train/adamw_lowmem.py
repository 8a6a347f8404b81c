"""AdamW whose moments (exp_avg, exp_avg_sq) are stored in a lower precision (optim.state_dtype).

For the host side of FSDP2 CPU offload: an 8B model's float32 master weights + float32 gradients +
two float32 moments are 16 bytes a parameter (128 GB), more than a 128 GiB host can hold next to
anything else; bfloat16 moments make it 12 bytes (96 GB). The update itself runs in float32, over
chunks of `chunk` elements (small float32 temporaries); only the stored moments are rounded (to
nearest), which is an approximation of AdamW, not AdamW: label results made with it.
With state_dtype float32 it is plain AdamW (tests compare it with torch.optim.AdamW).
"""
from __future__ import annotations

import math

import torch


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t  # FSDP2 shards are DTensors


class LowPrecisionStateAdamW(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, state_dtype: torch.dtype = torch.bfloat16, chunk: int = 1 << 22):
        if chunk < 1:
            raise ValueError(f"chunk={chunk} must be a positive number of elements")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.state_dtype, self.chunk = state_dtype, int(chunk)

    def _state(self, p: torch.Tensor, w: torch.Tensor) -> dict:
        st = self.state[p]
        if not st:
            st["step"] = 0
            st["exp_avg"] = torch.zeros_like(w, dtype=self.state_dtype)
            st["exp_avg_sq"] = torch.zeros_like(w, dtype=self.state_dtype)
        return st

    def init_state(self) -> None:
        """Allocate every moment now (a memory probe sees the steady-state footprint at step 1)."""
        for group in self.param_groups:
            for p in group["params"]:
                self._state(p, _local(p))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                w, g = _local(p), _local(p.grad)
                st = self._state(p, w)
                st["step"] += 1
                bc1, bc2 = 1 - b1 ** st["step"], 1 - b2 ** st["step"]
                w1, g1 = w.view(-1), g.reshape(-1)
                m1, v1 = st["exp_avg"].view(-1), st["exp_avg_sq"].view(-1)
                for i in range(0, w1.numel(), self.chunk):
                    sl = slice(i, i + self.chunk)
                    gc = g1[sl].float()
                    m = m1[sl].float().lerp_(gc, 1 - b1)
                    v = v1[sl].float().mul_(b2).addcmul_(gc, gc, value=1 - b2)
                    wc = w1[sl]
                    if wd:
                        wc.mul_(1 - lr * wd)
                    denom = v.sqrt().div_(math.sqrt(bc2)).add_(eps)  # as torch.optim.AdamW
                    wc.addcdiv_(m.to(wc.dtype), denom.to(wc.dtype), value=-lr / bc1)
                    m1[sl].copy_(m)
                    v1[sl].copy_(v)
        return None
