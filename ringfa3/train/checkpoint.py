"""Sharded checkpoints with torch.distributed.checkpoint, written atomically.

Layout under ROOT (run_dir/train.ckpt_dir):
    step_00000100/            one finished checkpoint: DCP shards + .metadata, rng_rank{r}.pt, meta.json
    .tmp-step_00000200/       a checkpoint being written (never read)
    latest                    the name of the newest finished checkpoint
A save writes everything into .tmp-NAME, then rank 0 renames it to NAME and replaces `latest`
(os.replace: atomic). A kill at any point leaves `latest` naming a complete checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

META = "meta.json"
SHAPE_KEYS = ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden", "tie_embeddings")


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def is_checkpoint(path: str) -> bool:
    """meta.json is written last, just before the rename, so its presence marks a finished checkpoint."""
    return os.path.isfile(os.path.join(path, META))


def latest(root: str) -> str | None:
    """The newest finished checkpoint under `root`, or None."""
    pointer = os.path.join(root, "latest")
    if not os.path.isfile(pointer):
        return None
    with open(pointer) as f:
        path = os.path.join(root, f.read().strip())
    return path if is_checkpoint(path) else None


def resolve_resume(resume: str, root: str) -> str | None:
    """The checkpoint to start from for train.resume (auto | never | PATH); ValueError if PATH is not one."""
    if resume == "never":
        return None
    if resume == "auto":
        return latest(root)
    if is_checkpoint(resume):
        return resume
    if os.path.isdir(resume) and latest(resume):
        return latest(resume)
    raise ValueError(f"train.resume={resume!r} is not a checkpoint (no {META} in it, nor a `latest` pointer); "
                     f"use train.resume=auto, train.resume=never or a step_* directory")


def read_meta(path: str) -> dict:
    with open(os.path.join(path, META)) as f:
        return json.load(f)


def check_shape(path: str, model_cfg) -> None:
    """ValueError naming the first model.* key whose value differs from the checkpoint's."""
    saved = read_meta(path)["model"]
    for key in SHAPE_KEYS:
        if key in saved and saved[key] != getattr(model_cfg, key):
            raise ValueError(f"train.resume: {path} holds a model with model.{key}={saved[key]}, but this run has "
                             f"model.{key}={getattr(model_cfg, key)}; use model.{key}={saved[key]} (the same "
                             f"model config) or train.resume=never")


def save(root: str, step: int, state, meta: dict, keep_last: int) -> str:
    """Save `state` (a DCP state dict, or a function writing this rank's files into a folder; every
    rank) and `meta` (rank 0) as checkpoint `step`."""
    name = f"step_{step:08d}"
    tmp, final = os.path.join(root, f".tmp-{name}"), os.path.join(root, name)
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    _barrier()
    if callable(state):
        state(tmp)
    else:
        dcp.save(state, checkpoint_id=tmp)
    torch.save(_rng_state(), os.path.join(tmp, f"rng_rank{_rank()}.pt"))
    _barrier()  # every rank's files are in tmp
    if _rank() == 0:
        _write_atomic(os.path.join(tmp, META), json.dumps(meta, indent=1))
        _finalize(root, tmp, final, name, keep_last)
    _barrier()
    return final


def _finalize(root: str, tmp: str, final: str, name: str, keep_last: int) -> None:
    if is_checkpoint(final):  # this step was saved before (a re-run after resume): keep the finished one
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        shutil.rmtree(final, ignore_errors=True)  # a half-deleted leftover, never pointed to
        os.rename(tmp, final)
    _write_atomic(os.path.join(root, "latest"), name)
    done = sorted(d for d in os.listdir(root) if d.startswith("step_") and is_checkpoint(os.path.join(root, d)))
    for old in done[:-keep_last]:
        if old != name:
            shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    for stale in os.listdir(root):
        if stale.startswith(".tmp-"):
            shutil.rmtree(os.path.join(root, stale), ignore_errors=True)


def load(path: str, state) -> None:
    """Load into `state` in place (DCP reshards to this run's layout; or a function reading the
    folder) and restore this rank's RNG."""
    if callable(state):
        state(path)
    else:
        dcp.load(state, checkpoint_id=path)
    rng = os.path.join(path, f"rng_rank{_rank()}.pt")
    if os.path.exists(rng):
        _set_rng_state(torch.load(rng, weights_only=False))


def _rng_state() -> dict:
    s = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        s["cuda"] = torch.cuda.get_rng_state()
    return s


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["cpu"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state(s["cuda"])
