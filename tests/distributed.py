"""Run a function on a gloo process group of N CPU ranks and collect what each rank returns."""
from __future__ import annotations

import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ringfa3.parallel.shutdown import exit_rank


def _worker(rank: int, world: int, tmp: str, fn, args) -> None:
    torch.set_num_threads(1)
    store = dist.FileStore(os.path.join(tmp, "store"), world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    result = fn(rank, world, *args)
    torch.save(result, os.path.join(tmp, f"result{rank}.pt"))
    exit_rank()


def run_distributed(fn, world: int, *args) -> list:
    """fn(rank, world, *args) on every rank (fn must be importable at module level); results by rank."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(world, tmp, fn, args), nprocs=world, join=True)
        return [torch.load(os.path.join(tmp, f"result{r}.pt"), weights_only=False) for r in range(world)]
