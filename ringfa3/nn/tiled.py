"""Run a token-wise module (an MLP) over sequence tiles, recomputing each tile in the backward, so the
intermediate activations (tokens x 4 x hidden) exist for one tile at a time. Exact: the module acts on
each token independently, so tiling changes no arithmetic."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class _Tiled(torch.autograd.Function):
    @staticmethod
    def forward(ctx, module, x, tile, *params):
        ctx.module, ctx.tile, ctx.params = module, tile, params
        ctx.save_for_backward(x)
        with torch.no_grad():
            return torch.cat([module(t) for t in x.split(tile, dim=1)], dim=1)

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        trained = [p for p in ctx.params if p.requires_grad]
        dx = torch.empty_like(x)
        dparams = [torch.zeros_like(p) for p in trained]
        for i in range(0, x.shape[1], ctx.tile):
            xt = x[:, i:i + ctx.tile].detach().requires_grad_()
            with torch.enable_grad():
                yt = ctx.module(xt)
            grads = torch.autograd.grad(yt, [xt] + trained, dy[:, i:i + ctx.tile])
            dx[:, i:i + ctx.tile] = grads[0]
            for acc, g in zip(dparams, grads[1:]):
                acc += g
        it = iter(dparams)
        return (None, dx, None) + tuple(next(it) if p.requires_grad else None for p in ctx.params)


def tiled_forward(module: nn.Module, x: Tensor, tile_tokens: int) -> Tensor:
    """module(x) for x (b, s, ...) computed `tile_tokens` positions at a time (forward and backward)."""
    if tile_tokens < 1:
        raise ValueError(f"tile_tokens={tile_tokens} must be a positive number of tokens")
    if x.shape[1] <= tile_tokens:
        return module(x)
    return _Tiled.apply(module, x, int(tile_tokens), *module.parameters())
