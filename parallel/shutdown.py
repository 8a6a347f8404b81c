"""Ending a rank's process after a successful distributed run, without interpreter shutdown."""
from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

import torch.distributed as dist


def exit_rank(code: int = 0) -> NoReturn:
    """Tear the default group down, flush, and end the process now with `code`.

    destroy_process_group frees a gloo group only when nothing else holds it; a DeviceMesh or FSDP
    state usually does, so the group's worker threads live into interpreter shutdown. One of them
    can then still be releasing the tensors of the last collective; it needs the GIL, the finalizing
    interpreter ends the thread inside C++, and the rank aborts ("terminate called without an active
    exception") after a run that succeeded. Call this once results are written and files closed:
    os._exit skips that shutdown."""
    if dist.is_initialized():
        dist.barrier()   # no rank leaves while a peer still talks to it
        dist.destroy_process_group()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)
