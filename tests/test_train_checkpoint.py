"""Checkpoints: a resumed run continues exactly like an uninterrupted one; a kill during a save
leaves the previous checkpoint as `latest`; keep_last prunes; mismatched resumes fail clearly."""
import functools
import os

import pytest
import torch.multiprocessing as mp

from train_helpers import crash_once_after_save, losses, make_cfg, read_metrics, run_world, sigkill_during_save

RUN = ["train.max_steps=8", "train.ckpt_every=4"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full")
    res = run_world(2, [(RUN + ["parallel.cp=2"], str(tmp / "run"))], str(tmp / "store"))
    return losses(res[0][0])


def test_resume_reproduces_uninterrupted_losses_exactly(uninterrupted, tmp_path):
    run = str(tmp_path / "run")
    jobs = [(RUN + ["parallel.cp=2"], run), (RUN + ["parallel.cp=2"], run)]  # crashes after step 4, then resumes
    res = run_world(2, jobs, str(tmp_path / "store"), patch=functools.partial(crash_once_after_save, 4))
    assert isinstance(res[0][0]["error"], KeyboardInterrupt)
    resumed = losses(res[0][1])
    assert resumed == uninterrupted[4:]  # bitwise: model, optimizer, scheduler, data position restored
    steps = [r["step"] for r in read_metrics(run) if "loss" in r]
    assert steps == list(range(1, 5)) + list(range(5, 9))


def test_kill_during_save_keeps_previous_checkpoint(uninterrupted, tmp_path):
    run, store = str(tmp_path / "run"), str(tmp_path / "store")
    with pytest.raises(mp.ProcessExitedException):
        run_world(1, [(RUN, run)], store, patch=functools.partial(sigkill_during_save, 8))
    ckpts = os.path.join(run, "checkpoints")
    assert open(os.path.join(ckpts, "latest")).read() == "step_00000004"
    assert os.path.isdir(os.path.join(ckpts, ".tmp-step_00000008"))  # the half-written one, never pointed to
    res = run_world(1, [(RUN, run)], store)  # train.resume=auto picks step 4 up
    assert losses(res[0][0]) == pytest.approx(uninterrupted[4:], rel=1e-5)
    assert sorted(os.listdir(ckpts)) == ["latest", "step_00000004", "step_00000008"]


def test_keep_last_prunes_and_mismatches_fail(tmp_path):
    from ringfa3.train.loop import train

    run = str(tmp_path / "run")
    train(make_cfg(["train.max_steps=6", "train.ckpt_every=2", "train.keep_last=2"]), run)
    ckpts = os.path.join(run, "checkpoints")
    assert sorted(os.listdir(ckpts)) == ["latest", "step_00000004", "step_00000006"]

    other = str(tmp_path / "other")
    with pytest.raises(ValueError, match=r"model\.dim=64\b.*model\.dim=32"):
        train(make_cfg(["model.dim=32", f"train.resume={ckpts}"]), other)
    with pytest.raises(ValueError, match=r"train\.resume=.* is not a checkpoint.*train\.resume=auto"):
        train(make_cfg([f"train.resume={tmp_path}"]), other)
    assert not os.path.exists(os.path.join(other, "metrics.jsonl"))  # failed before any step
