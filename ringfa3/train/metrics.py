"""What a run reports, on rank 0 only: metrics.jsonl in the run dir, a rich progress bar, wandb."""
from __future__ import annotations

import json
import math
import os
import resource

import torch


def max_memory_gb(device: torch.device) -> float:
    """Peak memory of this process: allocated on a GPU, resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def _clean(record: dict) -> dict:
    """JSON has no NaN/inf: write them as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


class MetricsLogger:
    def __init__(self, run_dir: str, cfg, enabled: bool, total_steps: int, start_step: int):
        self.enabled = enabled
        self.file = None
        self.progress = self.task = self.wandb = None
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        self.file = open(os.path.join(run_dir, "metrics.jsonl"), "a")
        if cfg.logger.progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeRemainingColumn())
            self.task = self.progress.add_task("train", total=total_steps, completed=start_step, info="")
            self.progress.start()
        if cfg.logger.wandb:
            self.wandb = _init_wandb(run_dir, cfg)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        record = _clean(record)
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step" and v is not None}, step=record["step"])
        if self.progress is not None and "loss" in record:
            info = f"loss {record['loss']:.4f}" if record["loss"] is not None else "loss non-finite"
            if record.get("tokens_per_s"):
                info += f"  {record['tokens_per_s']:,.0f} tok/s"
            self.progress.update(self.task, completed=record["step"], info=info)
        if "passkey_acc" in record or "eval_loss" in record:  # eval lines show with or without the bar
            line = _eval_line(record)
            if self.progress is not None:
                self.progress.console.print(line)
            else:
                print(line, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.file is not None:
            self.file.close()
        if self.wandb is not None:
            self.wandb.finish()


def _eval_line(r: dict) -> str:
    s = f"step {r['step']}: eval_loss {r['eval_loss']:.4f}" if r.get("eval_loss") is not None else f"step {r['step']}:"
    if "passkey_acc" in r:
        s += f"  passkey_acc {r['passkey_acc']:.3f}"
        by = r.get("passkey_acc_by_depth") or {}
        s += "  by depth " + " ".join(f"{d}:{a:.2f}" for d, a in by.items())
    return s


def _init_wandb(run_dir: str, cfg):
    import wandb
    from omegaconf import OmegaConf

    mode = cfg.logger.wandb_mode
    if mode == "auto":
        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return wandb.init(project=cfg.logger.wandb_project, dir=run_dir, mode=mode,
                      config=OmegaConf.to_container(OmegaConf.structured(cfg)), name=os.path.basename(run_dir))
