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


def test_attn_deterministic_reaches_every_layer():
    model = Llama(_tiny(attn_deterministic=True))
    assert [b.attention.deterministic for b in model.layers] == [True, True]
    model(torch.randint(0, 32, (1, 16))).sum().backward()


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


def test_rmsnorm_matches_autograd_and_saves_less():
    import torch.nn.functional as F

    from ringfa3.models import RMSNorm

    torch.manual_seed(0)
    norm = RMSNorm(40).double()
    norm.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(2, 5, 40, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(norm, (x,))
    x32 = torch.randn(3, 17, 40, requires_grad=True)
    w32 = norm.weight.detach().float().requires_grad_()
    dy = torch.randn(3, 17, 40)
    want = F.rms_norm(x32, (40,), None, 1e-5) * w32
    got = RMSNorm(40)
    got.weight.data.copy_(w32)
    y = got(x32)
    torch.testing.assert_close(y, want, rtol=1e-6, atol=1e-6)
    for a, b in zip(torch.autograd.grad(y, (x32, got.weight), dy), torch.autograd.grad(want, (x32, w32), dy)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # bf16 activations: the norm keeps x (bf16) and one float per token, not float32 copies of x
    saved = []
    xb = torch.randn(1, 64, 40, dtype=torch.bfloat16, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t, lambda t: t):
        RMSNorm(40).to(torch.bfloat16)(xb)
    assert sum(saved) <= xb.numel() * 2 + 64 * 4 + 40 * 2
