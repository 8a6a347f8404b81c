"""Hydra glue: the structured schema, the config object, and one run dir for all ranks."""
from __future__ import annotations

import os
import sys
from datetime import datetime

import hydra
import torch
import torch.distributed as dist
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import Config

ConfigStore.instance().store(name="schema", node=Config)


def to_config(dcfg: DictConfig) -> Config:
    """The checked Config object (each dataclass's __post_init__ runs); its ValueError as is."""
    try:
        return OmegaConf.to_object(dcfg)
    except OmegaConfBaseException as e:
        cause = e.__cause__ or e.__context__
        if isinstance(cause, ValueError):
            raise cause from None
        raise ValueError(str(e).splitlines()[0]) from None


def prepare_distributed_argv() -> None:
    """Under torchrun: start the process group and make every rank use rank 0's run dir; ranks
    other than 0 write nothing of Hydra's (no .hydra/, no log file)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    overrides = sys.argv[1:]
    if not any(a.startswith("hydra.run.dir=") for a in overrides):
        stamp = [datetime.now().strftime("%Y-%m-%d/%H-%M-%S")]
        dist.broadcast_object_list(stamp, src=0)
        sys.argv.append(f"hydra.run.dir=outputs/{stamp[0]}")
    if dist.get_rank() != 0:
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]


@hydra.main(version_base="1.3", config_path="pkg://ringfa3.configs", config_name="config")
def hydra_entry(dcfg: DictConfig) -> None:
    from .loop import train

    cfg = to_config(dcfg)
    train(cfg, HydraConfig.get().runtime.output_dir)
