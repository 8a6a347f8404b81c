"""Every bad input to a public function fails early with a message naming the argument and the fix."""
from __future__ import annotations

import pytest
import torch

from ringfa3 import RingFlashAttention, ring_flash_attn_func, shard, unshard
from ringfa3.ops import attention

from distributed import run_distributed


def qkv(b=1, s=32, h=4, hk=4, d=16, dtype=torch.float32):
    return torch.randn(b, s, h, d, dtype=dtype), torch.randn(b, s, hk, d, dtype=dtype), torch.randn(b, s, hk, d, dtype=dtype)


BAD_ATTENTION = [
    ("q rank", lambda q, k, v: attention(q[0], k, v), ValueError, "q must be 4-D"),
    ("k rank", lambda q, k, v: attention(q, k[..., 0], v), ValueError, "k must be 4-D"),
    ("dtype mismatch", lambda q, k, v: attention(q, k.double(), v), TypeError, "k.dtype=torch.float64 differs from q.dtype"),
    ("int dtype", lambda q, k, v: attention(q.long(), k, v), TypeError, "q.dtype=torch.int64 is not supported"),
    ("not a tensor", lambda q, k, v: attention(q.tolist(), k, v), TypeError, "q must be a torch.Tensor"),
    ("k/v shape", lambda q, k, v: attention(q, k, v[:, :16]), ValueError, "k and v must have the same shape"),
    ("batch", lambda q, k, v: attention(q, k[:0], v[:0]), ValueError, "batch size of k"),
    ("headdim", lambda q, k, v: attention(q, k[..., :8], v[..., :8]), ValueError, "headdim of k/v"),
    ("heads", lambda q, k, v: attention(q, k[:, :, :3], v[:, :, :3]), ValueError, r"nheads of q \(4\) must be a multiple of nheads of k/v \(3\)"),
    ("backend", lambda q, k, v: attention(q, k, v, backend="triton"), ValueError, "backend='triton' is not known"),
    ("window type", lambda q, k, v: attention(q, k, v, window=5), TypeError, r"window must be a \(left, right\) pair"),
    ("window value", lambda q, k, v: attention(q, k, v, window=(-2, 0)), ValueError, "window left=-2 must be an int >= -1"),
    ("scale", lambda q, k, v: attention(q, k, v, softmax_scale=-1.0), ValueError, "softmax_scale=-1.0 must be a finite positive"),
    ("causal", lambda q, k, v: attention(q, k, v, causal="yes"), TypeError, "causal must be a bool"),
    ("cuda backend on cpu", lambda q, k, v: attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), backend="cudnn"),
     ValueError, "backend='cudnn' cannot serve these inputs: .*needs CUDA tensors"),
]


@pytest.mark.parametrize("name,call,exc,msg", BAD_ATTENTION, ids=[b[0] for b in BAD_ATTENTION])
def test_attention_rejects(name, call, exc, msg):
    with pytest.raises(exc, match=msg):
        call(*qkv())


@pytest.mark.cuda
def test_window_on_backend_without_windows():
    q, k, v = (t.cuda().bfloat16() for t in qkv())
    with pytest.raises(ValueError, match="backend='cudnn' cannot serve these inputs: .*no sliding window"):
        attention(q, k, v, window=(8, 0), backend="cudnn")


def test_device_mismatch():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="k is on meta but q is on cpu"):
        attention(q, k.to("meta"), v)


def test_unavailable_backend_names_the_build():
    from ringfa3.ops import BACKENDS
    if "sm90" in BACKENDS:
        pytest.skip("sm90 is built here")
    with pytest.raises(ValueError, match="backend='sm90' is not available here.*build_csrc"):
        attention(*qkv(), backend="sm90")


BAD_RING = [
    ("layout", dict(layout="diagonal"), ValueError, "layout='diagonal' is not known"),
    ("backend", dict(backend="nope"), ValueError, "backend='nope' is not known"),
]


@pytest.mark.parametrize("name,kw,exc,msg", BAD_RING, ids=[b[0] for b in BAD_RING])
def test_ring_rejects(name, kw, exc, msg):
    with pytest.raises(exc, match=msg):
        ring_flash_attn_func(*qkv(), **kw)


def test_ring_rejects_heads_and_lengths():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="nheads of q"):
        ring_flash_attn_func(q, k[:, :, :3], v[:, :, :3])
    with pytest.raises(ValueError, match="same length"):
        ring_flash_attn_func(q, k[:, :16], v[:, :16])
    with pytest.raises(ValueError, match="zigzag.*multiple of 2"):
        ring_flash_attn_func(q[:, :7], k[:, :7], v[:, :7], layout="zigzag")


def _ring_errors_on_every_rank(rank, world):
    """Each rank must raise the same error before any communication (so nobody hangs)."""
    out = {}
    q, k, v = qkv(s=12)
    cases = {
        "seqlen": lambda: shard(q, 1, None, "zigzag") if world == 4 else shard(q[:, :10], 1, None, "zigzag"),
        "ring_seqlen": lambda: ring_flash_attn_func(q[:, :3], k[:, :3], v[:, :3], layout="zigzag"),
        "layout": lambda: unshard(q, 1, None, "spiral"),
    }
    for name, call in cases.items():
        try:
            call()
            out[name] = None
        except (ValueError, TypeError) as e:
            out[name] = f"{type(e).__name__}: {e}"
    return out


@pytest.mark.parametrize("world", (3, 4))
def test_bad_sequence_split_raises_on_every_rank(world):
    results = run_distributed(_ring_errors_on_every_rank, world)
    for r in results:
        assert r["seqlen"] and "cannot be split by layout='zigzag'" in r["seqlen"] and f"multiple of {2 * world}" in r["seqlen"]
        assert r["ring_seqlen"] and "global seqlen" in r["ring_seqlen"]
        assert r["layout"] and "layout='spiral' is not known" in r["layout"]


BAD_LAYER = [
    (dict(embed_dim=30, num_heads=4), "embed_dim=30 must be a multiple of num_heads=4"),
    (dict(embed_dim=32, num_heads=4, num_kv_heads=3), "num_heads=4 must be a multiple of num_kv_heads=3"),
    (dict(embed_dim=12, num_heads=4), "must be even for RoPE"),
    (dict(embed_dim=32, num_heads=4, layout="x"), "layout='x' is not known"),
]


@pytest.mark.parametrize("kw,msg", BAD_LAYER)
def test_layer_rejects(kw, msg):
    with pytest.raises(ValueError, match=msg):
        RingFlashAttention(**kw)
