"""exit_rank: a rank's last word is flushed, its exit code kept, its process group torn down first."""
import subprocess
import sys

import pytest

PROGRAM = """
import sys
import torch.distributed as dist
from ringfa3.parallel.shutdown import exit_rank
if {group}:
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
sys.stdout.write("saved")   # no newline: only an explicit flush gets it out before os._exit
exit_rank({code})
"""


@pytest.mark.parametrize("group", (False, True))
@pytest.mark.parametrize("code", (0, 3))
def test_exit_rank_flushes_and_keeps_the_code(group, code):
    r = subprocess.run([sys.executable, "-c", PROGRAM.format(group=group, code=code)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == code, r.stderr
    assert r.stdout == "saved"
