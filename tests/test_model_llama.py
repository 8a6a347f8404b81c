"""The Llama-style decoder: shapes, config checks, tied head, and its two attention paths agree."""
import pytest
import torch

from ringfa3.models import Llama, LlamaConfig


def _tiny(**kw):
    base = dict(vocab_size=32, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64)
    base.update(kw)
    return LlamaConfig(**base)


def test_forward_shape_and_params():
    cfg = _tiny()
    model = Llama(cfg)
    logits = model(torch.randint(0, 32, (3, 16)))
    assert logits.shape == (3, 16, 32)
    assert sum(p.numel() for p in model.parameters()) == cfg.num_params()


def test_untied_head_has_its_own_weight():
    tied, untied = Llama(_tiny()), Llama(_tiny(tie_embeddings=False))
    assert tied.output is None and untied.output is not None
    assert sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in tied.parameters()) == 32 * 32


def test_ring_attention_matches_sdpa_on_one_device():
    torch.manual_seed(0)
    ring = Llama(_tiny(attn_backend="reference"))
    sdpa = Llama(_tiny(attn_backend="sdpa"))
    sdpa.load_state_dict(ring.state_dict())  # same parameter names
    x = torch.randint(0, 32, (2, 24))
    # The ring merges partial results in float32 (by design), so compare at float32 precision.
    torch.testing.assert_close(ring(x), sdpa(x), rtol=1e-5, atol=1e-6)


def test_causal():
    model = Llama(_tiny())
    x = torch.randint(0, 32, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 32
    torch.testing.assert_close(model(x)[:, :10], model(y)[:, :10])


@pytest.mark.parametrize("kw, key", [
    (dict(n_heads=3), "model.n_heads"),
    (dict(n_kv_heads=3), "model.n_kv_heads"),
    (dict(dim=24, n_heads=8), "model.dim / model.n_heads"),
    (dict(attn_backend="nope"), "model.attn_backend"),
    (dict(n_layers=0), "model.n_layers"),
])
def test_bad_shapes_name_the_key(kw, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.").replace("/", "/")):
        _tiny(**kw)
