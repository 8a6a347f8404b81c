"""Every bad input fails at start-up, before any step, with one sentence naming the key and a valid value."""
import os

import pytest

from train_helpers import make_cfg, run_world

CASES = [
    (["parallel.cp=2"], r"parallel\.cp=2 does not divide the world size 1; .*parallel\.cp=1"),
    (["data.seq_len=65"], r"data\.seq_len=65 cannot be split by parallel\.layout='zigzag'.*data\.seq_len=66"),
    (["model.n_heads=3"], r"model\.n_heads=3 must divide model\.dim=64; use e\.g\. model\.n_heads=2"),
    (["model.n_kv_heads=3"], r"model\.n_kv_heads=3 must divide model\.n_heads=2; .*model\.n_kv_heads=2"),
    (["model.attn_backend=fast"], r"model\.attn_backend='fast' is not known; use one of 'auto'"),
    (["model.attn_backend=flash"], r"model\.attn_backend='flash' cannot run here .*model\.attn_backend=auto"),
    (["parallel.engine=megatron"], r"parallel\.engine='megatron' is not known; use one of 'fsdp'"),
    (["parallel.layout=spiral"], r"parallel\.layout='spiral' is not known; use one of 'contiguous'"),
    (["data=tokens", "data.path=/nonexistent/tokens"], r"data\.path='/nonexistent/tokens' does not exist.*data\.path=DIR"),
    (["train.resume=/nonexistent/ckpt"], r"train\.resume='/nonexistent/ckpt' is not a checkpoint.*train\.resume=auto"),
    (["data.batch_size=3", "optim.grad_accum=2"], r"data\.batch_size=3 must be a multiple of .*data\.batch_size=4"),
]


@pytest.mark.parametrize("overrides, message", CASES, ids=[c[0][-1] for c in CASES])
def test_bad_input_raises_before_any_step(tmp_path, overrides, message):
    from ringfa3.train.loop import train

    with pytest.raises(ValueError, match=message) as info:
        train(make_cfg(overrides), str(tmp_path))
    assert "\n" not in str(info.value)
    assert not os.path.exists(os.path.join(tmp_path, "metrics.jsonl"))


def test_check_world_for_several_ranks():
    from ringfa3.train.config import check_world

    cfg = make_cfg(["parallel.cp=2", "data.seq_len=66"])
    with pytest.raises(ValueError, match=r"data\.seq_len=66 .* over parallel\.cp=2 ranks; use a multiple of 4, e\.g\. data\.seq_len=68"):
        check_world(cfg, 4)
    assert check_world(make_cfg(["parallel.cp=2"]), 4) == (2, 2)


def test_every_rank_raises(tmp_path):
    res = run_world(2, [(["parallel.cp=3"], str(tmp_path / "run"))], str(tmp_path / "store"))
    for rank in res:
        assert isinstance(rank[0]["error"], ValueError)
        assert "parallel.cp=3 does not divide the world size 2" in str(rank[0]["error"])
