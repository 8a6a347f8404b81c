"""`python -m ringfa3.train` / `ringfa3-train`: the Hydra app over the packaged configs.

Under torchrun every rank runs this; rank 0 alone writes the run dir (Hydra's .hydra/, its log,
metrics.jsonl), and all ranks agree on the run dir: rank 0's choice is broadcast before Hydra starts.
"""
from __future__ import annotations


import torch.distributed as dist

from .app import hydra_entry, prepare_distributed_argv


def main() -> None:
    prepare_distributed_argv()
    try:
        hydra_entry()
        if dist.is_initialized():
            dist.barrier()   # every rank done talking before any tears the group down
    finally:
        # Torn down here, not by interpreter exit: a gloo group left to the exit-time destructors
        # could abort a rank ("terminate called without an active exception", seen in CI).
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
