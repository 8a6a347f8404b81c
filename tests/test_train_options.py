"""train.activation_checkpointing, train.dtype=bfloat16 (FSDP2 mixed precision) and train.compile
run the same job; checkpointing recomputes exactly."""
import pytest

from train_helpers import make_cfg


def _losses(overrides, tmp_path, name, steps=4):
    from ringfa3.train.loop import train

    return train(make_cfg([f"train.max_steps={steps}"] + overrides), str(tmp_path / name))["losses"]


def test_activation_checkpointing_gives_the_same_losses(tmp_path):
    assert _losses(["train.activation_checkpointing=true"], tmp_path, "ac") == _losses([], tmp_path, "plain")


def test_bf16_mixed_precision_runs_close(tmp_path):
    base = _losses([], tmp_path, "fp32")
    bf16 = _losses(["train.dtype=bfloat16"], tmp_path, "bf16")
    assert bf16 == pytest.approx(base, rel=2e-2)


@pytest.mark.slow  # inductor compiles the blocks on CPU: about a minute on 2 cores
def test_compile_gives_close_losses(tmp_path):
    compiled = _losses(["train.compile=true", "model.n_layers=1"], tmp_path, "compiled", steps=2)
    assert compiled == pytest.approx(_losses(["model.n_layers=1"], tmp_path, "eager", steps=2), rel=1e-4)
