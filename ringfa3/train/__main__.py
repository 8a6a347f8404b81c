"""`python -m ringfa3.train` / `ringfa3-train`: the Hydra app over the packaged configs.

Under torchrun every rank runs this; rank 0 alone writes the run dir (Hydra's .hydra/, its log,
metrics.jsonl), and all ranks agree on the run dir: rank 0's choice is broadcast before Hydra starts.
"""
from __future__ import annotations

from ringfa3.parallel.shutdown import exit_rank

from .app import hydra_entry, prepare_distributed_argv


def main() -> None:
    prepare_distributed_argv()
    hydra_entry()
    exit_rank()   # the run is saved and closed; see exit_rank for the shutdown it skips


if __name__ == "__main__":
    main()
