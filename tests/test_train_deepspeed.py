"""parallel.engine=deepspeed (ZeRO-2 on CPU, gloo) gives the FSDP losses and checkpoints/resumes.
Skipped when deepspeed is not installed (it is in the `train` extra)."""
import os

import pytest

pytest.importorskip("deepspeed")

from train_helpers import losses, run_world  # noqa: E402

RUN = ["train.max_steps=6", "train.ckpt_every=3", "parallel.cp=2"]


def test_deepspeed_zero2_matches_fsdp_and_resumes(tmp_path):
    ds = RUN + ["parallel.engine=deepspeed", "parallel.zero_stage=2"]
    jobs = [(RUN, str(tmp_path / "fsdp")), (ds, str(tmp_path / "ds")),
            (ds + ["train.max_steps=8"], str(tmp_path / "ds"))]  # resumes from step 6
    res = run_world(2, jobs, str(tmp_path / "store"))
    fsdp, zero2, resumed = (losses(r) for r in res[0])
    assert zero2 == pytest.approx(fsdp, rel=1e-5)
    assert len(resumed) == 2
    assert os.path.exists(tmp_path / "ds" / "checkpoints" / "step_00000008" / "meta.json")
