"""Data: passkey samples are pure functions of (seed, index, step) with answers labelled only after
the KEY questions; dp ranks split the same global batch; token shards round-trip through
scripts/prepare_tokens.py; a non-finite loss skips the step and repeated ones stop the run."""
import os
import subprocess
import sys

import pytest
import torch

from ringfa3.train.passkey import KEY, Passkey
from train_helpers import make_cfg, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_passkey_samples():
    pk = Passkey(seq_len=256, queries=3, ramp_steps=10, min_window=32, seed=5)
    x, y = pk.train_sample(7, step=3)
    x2, y2 = pk.train_sample(7, step=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)  # deterministic, any process
    assert x.shape == y.shape == (256,)
    asks = (y != -100).nonzero().flatten()
    assert len(asks) == 3 * pk.key_len
    assert all(x[a] == KEY for a in asks[:: pk.key_len])  # each answer follows a KEY question
    assert int((x == KEY).sum()) == 4  # the key itself and three questions
    key_at = int((x == KEY).nonzero()[0])
    assert torch.equal(x[key_at + 1: key_at + 1 + pk.key_len], y[asks[: pk.key_len]])
    assert asks.max() < pk.max_window(3)  # the curriculum window bounds early questions

    for depth in (0.0, 0.5, 1.0):
        x, y = pk.eval_sample(0, depth)
        assert (y != -100).nonzero().flatten().tolist() == list(range(256 - pk.key_len, 256))
        assert x[-pk.key_len] == KEY  # the question is the last KEY; its answers are the last labels


def test_dp_ranks_split_one_global_batch():
    from ringfa3.train.data import Sharder

    one = Sharder(8, 2, 1, 0, None, "zigzag", torch.device("cpu"))
    two = [Sharder(8, 2, 2, r, None, "zigzag", torch.device("cpu")) for r in range(2)]
    for step in range(3):
        want = sorted(i for m in range(2) for i in one.indices(step, m))
        got = sorted(i for s in two for m in range(2) for i in s.indices(step, m))
        assert got == want == list(range(step * 8, step * 8 + 8))


def test_prepare_tokens_and_train_on_them(tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    out = tmp_path / "tok"
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "prepare_tokens.py"), str(text), "--out", str(out)],
                   check=True, capture_output=True)
    from ringfa3.train.loop import train

    cfg = make_cfg(["data=tokens", f"data.path={out}", "model.vocab_size=256", "train.max_steps=2",
                    "train.eval_every=2", "data.eval_batches=1"])
    train(cfg, str(tmp_path / "run"))
    rows = read_metrics(str(tmp_path / "run"))
    assert [r["step"] for r in rows] == [1, 2, 2] and rows[-1]["eval_loss"] > 0


def test_nonfinite_loss_is_skipped_then_stops_the_run(tmp_path, monkeypatch):
    from ringfa3.train import loop

    real = loop.Trainer._loss_sum
    calls = {"n": 0}

    def flaky(self, x, y):
        calls["n"] += 1
        out = real(self, x, y)
        return out * float("nan") if calls["n"] in (2, 4, 5, 6) else out

    monkeypatch.setattr(loop.Trainer, "_loss_sum", flaky)
    with pytest.raises(RuntimeError, match=r"non-finite for 3 steps in a row .*train\.max_bad_steps=3"):
        loop.train(make_cfg(["train.max_steps=10"]), str(tmp_path))
    rows = read_metrics(str(tmp_path))
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[1]["skipped"] == "non-finite loss" and rows[1]["loss"] is None
    assert rows[2]["loss"] is not None
