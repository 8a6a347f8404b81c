"""train.loss_chunk_tokens and train.mlp_chunk_tokens change memory, not math: the same losses and
gradients with them on and off, also for lengths that are not a multiple of the chunk."""
from __future__ import annotations

import pytest
import torch

from ringfa3.models import Llama
from ringfa3.models.config import LlamaConfig
from ringfa3.train.parallelize import apply_memory_options

from train_helpers import make_cfg


@pytest.mark.parametrize("loss_chunk,mlp_chunk", [(7, 0), (0, 5), (16, 24)])
def test_model_loss_and_grads_match_unchunked(loss_chunk, mlp_chunk):
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=96, dim=32, n_layers=2, n_heads=4, n_kv_heads=2))
    tokens = torch.randint(0, 96, (2, 46))  # 46 tokens: no chunk size above divides it
    labels = torch.randint(0, 96, (2, 46))
    labels[:, :6] = -100

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        loss = model(tokens, labels=labels)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    want, gw = loss_and_grads()
    apply_memory_options(model, loss_chunk, mlp_chunk)
    got, gg = loss_and_grads()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for a, b in zip(gg, gw):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_training_losses_match_with_chunking_on(tmp_path):
    from ringfa3.train.loop import train

    def losses(extra, name):
        return train(make_cfg(["train.max_steps=4"] + extra), str(tmp_path / name))["losses"]

    plain = losses([], "plain")
    chunked = losses(["train.loss_chunk_tokens=100", "train.mlp_chunk_tokens=24"], "chunked")
    assert chunked == pytest.approx(plain, rel=1e-6)


def test_offload_with_reentrant_checkpointing_gives_the_same_losses(tmp_path):
    # on CPU the offload hooks keep tensors where they are; this checks the wiring and the reentrant
    # checkpointing it needs (the GPU path is tests/test_long_context.py, cuda-marked)
    from ringfa3.train.loop import train

    def losses(extra, name):
        return train(make_cfg(["train.max_steps=3", "train.activation_checkpointing=true"] + extra),
                     str(tmp_path / name))["losses"]

    assert losses(["train.offload_activations=true"], "offload") == losses([], "plain")


def test_offload_needs_checkpointing():
    with pytest.raises(ValueError, match="set train.activation_checkpointing=true"):
        make_cfg(["train.offload_activations=true"])


def test_negative_chunk_is_rejected():
    with pytest.raises(ValueError, match="train.loss_chunk_tokens=-1 must be >= 0"):
        make_cfg(["train.loss_chunk_tokens=-1"])
