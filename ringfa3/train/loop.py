"""The training job: set up (every check before any step), then step, log, evaluate, checkpoint.

train(cfg, run_dir) runs on every rank of an initialized process group (or starts a world-1 gloo
group itself) and returns rank-local results for tests: {"losses": [...], "eval": {...}}.
"""
from __future__ import annotations

import contextlib

import dataclasses
import logging
import math
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ringfa3.models import Llama

from . import checkpoint as ckpt
from .config import Config, check_world
from .data import Sharder, make_dataset
from .engine import make_engine
from .flops import peak_flops, train_flops
from .meta_init import materialize
from .metrics import MetricsLogger, max_memory_gb
from .offload import OffloadActivations
from .parallelize import (apply_activation_checkpointing, apply_compile, apply_context_parallel, apply_fsdp,
                          apply_memory_options, build_mesh)

log = logging.getLogger("ringfa3.train")


def pick_device(cfg: Config) -> torch.device:
    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device='cuda' but no CUDA device is available; use train.device=auto or cpu")
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


def param_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """bf16 mixed precision on cuda by default; None = float32 everywhere."""
    if cfg.train.dtype == "bfloat16" or (cfg.train.dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def check_backend(cfg: Config, device: torch.device, dtype: torch.dtype | None) -> None:
    """Fail at start-up, not at the first step, when the attention backend cannot serve this run."""
    name = cfg.model.attn_backend
    if name == "sdpa":
        return
    from ringfa3.ops import resolve_backend

    h, hk, d = cfg.model.n_heads, cfg.model.n_kv_heads, cfg.model.head_dim
    q = torch.zeros(1, 2, h, d, device=device, dtype=dtype or torch.float32)
    k = torch.zeros(1, 2, hk, d, device=device, dtype=q.dtype)
    try:
        resolve_backend(name, q, k, k, True, (-1, -1))
    except ValueError as e:
        raise ValueError(f"model.attn_backend={name!r} cannot run here ({e}); use model.attn_backend=auto") from None


def _init_process_group() -> bool:
    """A world-1 group when none exists (plain `python -m ringfa3.train`); True if we made it."""
    if dist.is_initialized():
        return False
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"  # gloo for CPU-side sums
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return True


def _global_sum(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


class Trainer:
    def __init__(self, cfg: Config, run_dir: str):
        self.cfg, self.run_dir = cfg, run_dir
        self.world, self.rank = dist.get_world_size(), dist.get_rank()
        self.dp, self.cp = check_world(cfg, self.world)
        self.device = pick_device(cfg)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.dtype = param_dtype(cfg, self.device)
        self.ds = make_dataset(cfg)
        check_backend(cfg, self.device, self.dtype)
        self.ckpt_root = os.path.join(run_dir, cfg.train.ckpt_dir)
        self.resume_from = ckpt.resolve_resume(cfg.train.resume, self.ckpt_root)
        if self.resume_from:
            ckpt.check_shape(self.resume_from, cfg.model)

        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank and for every world size
        meta = cfg.train.meta_init and cfg.parallel.engine in ("fsdp", "none")
        with torch.device("meta") if meta else contextlib.nullcontext():
            model = Llama(cfg.model)  # on meta: shapes only, materialized after sharding
        self.mesh = build_mesh(self.device, self.dp, self.cp)
        self.cp_group = self.mesh["cp"].get_group()
        dp_rank = self.mesh.get_local_rank("dp")
        if cfg.model.attn_backend != "sdpa":
            apply_context_parallel(model, self.cp_group, cfg.parallel.layout, cfg.model.attn_backend)
        if not meta:
            model.to(self.device)
        apply_memory_options(model, cfg.train.loss_chunk_tokens, cfg.train.mlp_chunk_tokens)
        if cfg.train.activation_checkpointing:
            apply_activation_checkpointing(model, reentrant=cfg.train.offload_activations)
        if cfg.train.compile:
            apply_compile(model)
        fsdp = cfg.parallel.engine == "fsdp" and (self.world > 1 or self.dtype is not None)
        if fsdp:  # on one GPU too: its bf16 mixed precision
            apply_fsdp(model, self.mesh, self.dtype, cpu_offload=cfg.parallel.cpu_offload,
                       pin_memory=cfg.parallel.cpu_offload_pin)
        if meta:  # shards on their device (the host under cpu_offload), drawn on the compute device
            home = "cpu" if fsdp and cfg.parallel.cpu_offload else self.device
            materialize(model, home, cfg.train.seed, cfg.model.init_std, init_device=self.device)
        if not fsdp and self.dtype is not None and cfg.parallel.engine == "none":
            model.to(self.dtype)
        self.engine = make_engine(model, cfg, self.device, self.world)
        self.sharder = Sharder(cfg.data.batch_size, cfg.optim.grad_accum, self.dp, dp_rank, self.cp_group,
                               cfg.parallel.layout, self.device)
        self.step = 0
        self.bad_in_a_row = 0
        if self.resume_from:
            self._load(self.resume_from)
        self.flops_per_step = train_flops(cfg.model, cfg.data.seq_len, cfg.data.batch_size)
        self.peak = peak_flops(self.device, cfg.train.peak_tflops)
        self.metrics = MetricsLogger(run_dir, cfg, self.rank == 0, cfg.train.max_steps, self.step)
        self.losses: list[float | None] = []
        self.last_eval: dict = {}

    # ---- checkpoints -------------------------------------------------------------------------
    def _save(self) -> None:
        meta = {"step": self.step, "model": dataclasses.asdict(self.cfg.model), "world": self.world,
                "dp": self.dp, "cp": self.cp, "engine": self.cfg.parallel.engine,
                "scheduler": self.engine.scheduler.state_dict(),
                "data": {"next_step": self.step, "samples_seen": self.step * self.cfg.data.batch_size},
                "bad_in_a_row": self.bad_in_a_row}
        ckpt.save(self.ckpt_root, self.step, self.engine.checkpoint_writer(), meta, self.cfg.train.keep_last)

    def _load(self, path: str) -> None:
        meta = ckpt.read_meta(path)
        ckpt.load(path, self.engine.checkpoint_reader())
        self.engine.scheduler.load_state_dict(meta["scheduler"])
        self.step = meta["data"]["next_step"]
        self.bad_in_a_row = meta.get("bad_in_a_row", 0)
        if self.rank == 0:
            log.info("resumed from %s at step %d", path, self.step)

    # ---- one step ------------------------------------------------------------------------------
    def _loss_sum(self, x, y):
        tc = self.cfg.train
        cap = int(tc.offload_max_gb * 2**30)
        with OffloadActivations(max_bytes=cap) if tc.offload_activations else contextlib.nullcontext():
            return self.engine.model(x, labels=y)  # float32 sum over this rank's labelled tokens

    def train_step(self) -> dict:
        cfg, t0 = self.cfg, time.perf_counter()
        self.engine.model.train()
        micros = [self.sharder.train_batch(self.ds, self.step, m) for m in range(cfg.optim.grad_accum)]
        local_labels = sum(int((y != -100).sum()) for _, y in micros)
        n_global = max(1.0, _global_sum([local_labels], "cpu")[0])
        total, bad = 0.0, False
        for m, (x, y) in enumerate(micros):
            loss_sum = self._loss_sum(x, y)
            # Every rank must agree to skip: decide on the global sum (NaN anywhere makes it NaN).
            finite = _global_sum([float(torch.isfinite(loss_sum).all())], "cpu")[0] == self.world
            if not finite:
                bad = True
                break
            total += float(loss_sum.detach())
            # Engines average gradients over all ranks; this scale turns that into the global token mean.
            self.engine.backward(loss_sum * (self.world / n_global), sync=m == len(micros) - 1)
        rec = {"step": self.step + 1, "lr": self.engine.lr}
        if bad:
            self.engine.skip()
            rec.update(loss=float("nan"), skipped="non-finite loss")
        else:
            rec["loss"] = _global_sum([total], "cpu")[0] / n_global
            rec["grad_norm"] = self.engine.step()
            if rec["grad_norm"] is not None and not math.isfinite(rec["grad_norm"]):
                bad = True
                rec["skipped"] = "non-finite grad norm"
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        rec["tokens_per_s"] = cfg.data.batch_size * cfg.data.seq_len / dt   # the job's
        rec["tokens_per_s_per_gpu"] = rec["tokens_per_s"] / self.world
        rec["mfu"] = self.flops_per_step / dt / (self.peak * self.world) if self.peak else None
        rec["max_mem_gb"] = max_memory_gb(self.device)
        self.bad_in_a_row = self.bad_in_a_row + 1 if bad else 0
        self.step += 1
        return rec

    # ---- eval ----------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict:
        """eval_loss (and passkey_acc overall and by depth), the same on every rank."""
        cfg, model = self.cfg, self.engine.model
        model.eval()
        if cfg.data.name == "passkey":
            depths = list(cfg.data.eval_depths)
            specs = [(i, d) for d in depths for i in range(cfg.data.eval_per_depth)]
        else:
            n = cfg.data.eval_batches * cfg.data.batch_size
            specs = [(i, n) for i in range(n)]
        wrong = torch.zeros(len(specs), dtype=torch.float64)
        loss_sum, count = 0.0, 0.0
        per = max(1, self.sharder.per_micro)
        mine = list(range(self.sharder.dp_rank * per, len(specs), self.dp * per))  # round-robin chunks over dp
        for start in mine:
            idx = list(range(start, min(start + per, len(specs))))
            samples = [self.ds.eval_sample(*specs[j]) for j in idx]
            x, y = self.sharder.local(samples)  # (b, s_local)
            logits = model(x).float()  # (b, s_local, vocab)
            mask = y != -100
            loss_sum += float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum"))
            count += float(mask.sum())
            miss = ((logits.argmax(-1) != y) & mask).sum(-1).double().cpu()  # (b,)
            wrong[idx] += miss
        # Sum over all ranks: cp ranks add their part of each sample; dp ranks add disjoint samples.
        packed = torch.cat([wrong, torch.tensor([loss_sum, count], dtype=torch.float64)])
        dist.all_reduce(packed)
        wrong, (loss_sum, count) = packed[:-2], packed[-2:].tolist()
        out = {"step": self.step, "eval_loss": loss_sum / max(count, 1.0)}
        if cfg.data.name == "passkey":
            ok = (wrong == 0).double().view(len(depths), -1).mean(1)  # (depths,)
            out["passkey_acc"] = float(ok.mean())
            out["passkey_acc_by_depth"] = {f"{d:.2f}": round(float(a), 4) for d, a in zip(depths, ok)}
        model.train()
        return out

    # ---- the loop ------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg, tc = self.cfg, self.cfg.train
        try:
            while self.step < tc.max_steps:
                rec = self.train_step()
                self.losses.append(rec["loss"])
                if rec.get("skipped"):
                    log.warning("step %d skipped: %s", rec["step"], rec["skipped"])
                    self.metrics.log(rec)
                    if self.bad_in_a_row >= tc.max_bad_steps:
                        last = ckpt.latest(self.ckpt_root)
                        raise RuntimeError(
                            f"the loss or gradient was non-finite for {self.bad_in_a_row} steps in a row (up to step "
                            f"{self.step}); stopping. The last good checkpoint is {last or 'none'}; lower optim.lr or "
                            f"raise train.max_bad_steps={tc.max_bad_steps}")
                    continue
                last_step = self.step == tc.max_steps
                if tc.log_every and (self.step % tc.log_every == 0 or last_step or self.step == 1):
                    self.metrics.log(rec)
                if (tc.eval_every and self.step % tc.eval_every == 0) or (last_step and tc.eval_every):
                    self.last_eval = self.evaluate()
                    self.metrics.log(self.last_eval)
                if (tc.ckpt_every and self.step % tc.ckpt_every == 0) or (last_step and tc.ckpt_every):
                    self._save()
        finally:
            self.metrics.close()
        return {"losses": self.losses, "eval": self.last_eval, "step": self.step}


def train(cfg: Config, run_dir: str) -> dict:
    made = _init_process_group()
    try:
        return Trainer(cfg, run_dir).fit()
    finally:
        if made:
            dist.destroy_process_group()
