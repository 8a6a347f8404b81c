"""The command line: Hydra overrides reach the job; under torchrun all ranks share one run dir that
rank 0 alone writes; wandb offline writes its run files without network."""
import glob
import json
import os
import subprocess
import sys

import pytest
import yaml

from train_helpers import SMALL, read_metrics


def _run(args, cwd, env=None, launcher=None):
    cmd = (launcher or [sys.executable]) + ["-m", "ringfa3.train"] + args
    env = dict(os.environ, **(env or {}))
    env.pop("WANDB_API_KEY", None)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_overrides_from_the_command_line(tmp_path):
    run = tmp_path / "run"
    p = _run(SMALL + ["train.max_steps=3", "optim.lr=0.002", f"hydra.run.dir={run}"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = read_metrics(str(run))
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(k in rows[0] for k in ("loss", "lr", "grad_norm", "tokens_per_s", "tokens_per_s_per_gpu", "mfu", "max_mem_gb"))
    cfg = yaml.safe_load(open(run / ".hydra" / "config.yaml"))
    assert cfg["optim"]["lr"] == 0.002 and cfg["data"]["seq_len"] == 64
    assert "optim.lr=0.002" in yaml.safe_load(open(run / ".hydra" / "overrides.yaml"))


def test_bad_override_fails_with_its_message(tmp_path):
    p = _run(SMALL + ["model.n_heads=3", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert p.returncode != 0
    assert "model.n_heads=3 must divide model.dim=64" in p.stderr


def test_torchrun_ranks_share_one_run_dir(tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    p = _run(SMALL + ["train.max_steps=2", "parallel.cp=2", "train.eval_every=2"], tmp_path,
             env={"OMP_NUM_THREADS": "1"}, launcher=launcher)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = glob.glob(str(tmp_path / "outputs" / "*" / "*"))
    assert len(runs) == 1, runs  # not one folder per rank
    rows = read_metrics(runs[0])
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]  # rank 0 alone wrote
    assert "passkey_acc" in rows[-1] and "passkey_acc_by_depth" in rows[-1]
    assert os.path.isdir(os.path.join(runs[0], ".hydra"))


def test_wandb_offline_writes_run_files(tmp_path):
    pytest.importorskip("wandb")
    run = tmp_path / "run"
    p = _run(SMALL + ["train.max_steps=2", "logger.wandb=true", f"hydra.run.dir={run}"], tmp_path,
             env={"WANDB_SILENT": "true"})
    assert p.returncode == 0, p.stderr[-3000:]
    offline = glob.glob(str(run / "wandb" / "offline-run-*"))
    assert len(offline) == 1
    assert glob.glob(os.path.join(offline[0], "run-*.wandb"))
