"""Helpers for the training tests: a small config from the packaged Hydra configs, and runs of the
training job on 1..4 gloo CPU ranks (torch.multiprocessing spawn)."""
from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ringfa3.parallel.shutdown import exit_rank

# Small and fast: 64-token passkey sequences, 2 blocks (so FSDP shards several units), float32.
SMALL = [
    "model=tiny", "data=passkey", "model.n_layers=2", "data.seq_len=64", "data.batch_size=4",
    "data.train_queries=2", "data.ramp_steps=0", "data.eval_per_depth=2", "data.eval_depths=[0.0,1.0]",
    "train.device=cpu", "train.log_every=1", "train.eval_every=0", "train.ckpt_every=0", "logger.progress=false",
]


def make_cfg(overrides: list[str]):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from ringfa3.train.app import to_config

    GlobalHydra.instance().clear()
    with initialize_config_module("ringfa3.configs", version_base="1.3"):
        return to_config(compose("config", overrides=SMALL + list(overrides)))


def read_metrics(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _worker(rank: int, world: int, store_dir: str, runs: list, patch) -> None:
    torch.set_num_threads(1)
    store = dist.FileStore(os.path.join(store_dir, "store"), world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    results = []
    try:
        if patch is not None:
            patch()
        from ringfa3.train.loop import train

        for overrides, run_dir in runs:  # several jobs in one process group: one spawn, less start-up
            try:
                results.append(train(make_cfg(overrides), run_dir))
            except (Exception, KeyboardInterrupt) as e:  # the parent re-raises it
                results.append({"error": e})
    finally:
        torch.save(results, os.path.join(store_dir, f"result{rank}.pt"))
    exit_rank()


def run_world(world: int, runs: list[tuple[list[str], str]], store_dir: str, patch=None) -> list[list[dict]]:
    """Each (overrides, run_dir) job trained in turn on `world` gloo ranks; results[rank][job]
    (a job that raised gives {'error': exc})."""
    os.makedirs(store_dir, exist_ok=True)
    for f in os.listdir(store_dir):
        os.remove(os.path.join(store_dir, f))
    mp.start_processes(_worker, args=(world, store_dir, runs, patch), nprocs=world, join=True, start_method="spawn")
    return [torch.load(os.path.join(store_dir, f"result{r}.pt"), weights_only=False) for r in range(world)]


def losses(result: dict) -> list:
    if "error" in result:
        raise result["error"]
    return result["losses"]


# ---- patches applied inside spawned workers (module level, so they pickle) ------------------------

def crash_once_after_save(at_step: int = 4):
    """Make the first checkpoint save of `at_step` raise right after it finished (a crash)."""
    from ringfa3.train import checkpoint

    original, state = checkpoint.save, {"done": False}

    def save(root, step, *a, **kw):
        out = original(root, step, *a, **kw)
        if step == at_step and not state["done"]:
            state["done"] = True
            raise KeyboardInterrupt(f"simulated crash after the save of step {step}")
        return out

    checkpoint.save = save


def sigkill_during_save(at_step: int = 8):
    """SIGKILL the process after the shards of `at_step` are written, before the rename to final."""
    import signal

    from ringfa3.train import checkpoint

    original = checkpoint._finalize

    def finalize(root, tmp, final, name, keep_last):
        if name == f"step_{at_step:08d}":
            os.kill(os.getpid(), signal.SIGKILL)
        return original(root, tmp, final, name, keep_last)

    checkpoint._finalize = finalize
