"""Hugging Face transformers models switched to ringfa3 context-parallel attention.

Tiny Llama-, Qwen2- and Mistral-shaped causal LMs built from configs (no download), Mistral also with a
sliding window shorter than a rank's share. Under world sizes 2
and 3 (one spawn of 3 gloo ranks; world 2 runs on a subgroup) each rank feeds shard(input_ids) and
shard(position_ids); the unsharded logits and the all-reduced parameter gradients must match the same
model run in one process with sdpa attention, in float32.
"""
from __future__ import annotations

import inspect
import os
from functools import lru_cache

import pytest
import torch
import torch.distributed as dist

transformers = pytest.importorskip("transformers")

from ringfa3.integrations.hf import enable_ring_attention  # noqa: E402
from ringfa3.parallel import shard, unshard  # noqa: E402

from distributed import run_distributed  # noqa: E402
from reference import rel_err, tolerance  # noqa: E402

B, S, VOCAB = 2, 24, 64  # S divides 2 * world for worlds 2 and 3
SEED = int.from_bytes(os.urandom(4), "little")
MODELS = {  # name: (config class, kwargs); heads 4 / 6 with 2 K/V heads (GQA 2 and 3)
    "llama": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=2, hidden_size=48)),
    "qwen2": ("Qwen2Config", dict(num_attention_heads=6, num_key_value_heads=2, hidden_size=48)),  # qkv bias
    "mistral": ("MistralConfig", dict(num_attention_heads=4, num_key_value_heads=2, hidden_size=48,
                                      sliding_window=4096)),  # a window longer than the sequence
    "mistral_sw": ("MistralConfig", dict(num_attention_heads=4, num_key_value_heads=2, hidden_size=48,
                                         sliding_window=7)),  # shorter than a rank's share: through the ring
}
# (model, strategy, layout); Ulysses only where the heads divide over the world
RUNS = [("llama", "ring", "zigzag"), ("qwen2", "ring", "contiguous"), ("mistral", "ring", "stripe"),
        ("mistral_sw", "ring", "zigzag"), ("llama", "ulysses", "zigzag"), ("qwen2", "ulysses", "zigzag"),
        ("mistral_sw", "ulysses", "stripe")]


def build(name: str, seed: int, attn: str = "sdpa"):
    cls, kw = MODELS[name]
    cfg = getattr(transformers, cls)(vocab_size=VOCAB, intermediate_size=64, num_hidden_layers=2,
                                     max_position_embeddings=64, tie_word_embeddings=False, **kw)
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=attn).float()


def batch(seed: int):
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, VOCAB, (B, S), generator=g)
    return ids, torch.arange(S).expand(B, S), torch.randn(B, S, VOCAB, generator=g)  # ids, positions, dlogits


def run_sharded(name, strategy, layout, seed, group) -> dict:
    model = enable_ring_attention(build(name, seed), group=group, layout=layout, strategy=strategy)
    ids, pos, w = batch(seed)
    logits = model(input_ids=shard(ids, 1, group, layout), position_ids=shard(pos, 1, group, layout),
                   use_cache=False).logits  # (b, s_local, vocab)
    (logits * shard(w, 1, group, layout)).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for g in grads.values():
        dist.all_reduce(g, group=group)  # per-rank partial sums, as data parallelism reduces them
    return dict(logits=unshard(logits.detach(), 1, group, layout), grads=grads)


def hf_worker(rank: int, world: int, seed: int) -> dict:
    results = {}
    for w in (2, 3):
        group = dist.new_group(list(range(w)))  # every rank creates every group, in the same order
        if rank < w:
            for name, strategy, layout in RUNS:
                if strategy == "ulysses" and MODELS[name][1]["num_attention_heads"] % w:
                    continue
                out = run_sharded(name, strategy, layout, seed, group)
                results[(w, name, strategy)] = out if rank == 0 else None
        dist.barrier()
    model = enable_ring_attention(build("llama", seed), layout="zigzag")
    try:  # forgetting the sharded position_ids: caught on every rank before any communication
        model(input_ids=shard(batch(seed)[0], 1), use_cache=False)
        results["no_positions"] = None
    except ValueError as e:
        results["no_positions"] = str(e)
    dist.barrier()
    return results


@lru_cache(maxsize=None)
def hf_results() -> dict:
    return run_distributed(hf_worker, 3, SEED)[0]


@lru_cache(maxsize=None)
def single(name: str, attn: str = "sdpa") -> dict:
    model = build(name, SEED, attn)
    ids, pos, w = batch(SEED)
    logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits
    (logits * w).sum().backward()
    return dict(logits=logits.detach(), grads={n: p.grad for n, p in model.named_parameters()})


def assert_matches(got: dict, name: str) -> None:
    """Against sdpa; the tolerance comes from how far eager attention (another float32 order) lands."""
    want, eager = single(name), single(name, "eager")
    base = rel_err(eager["logits"], want["logits"])
    err = rel_err(got["logits"], want["logits"])
    assert err <= tolerance(base, torch.float32, 4), f"logits: rel err {err:.3g} (eager vs sdpa {base:.3g})"
    for n, g in want["grads"].items():
        base = rel_err(eager["grads"][n], g)
        err = rel_err(got["grads"][n], g)
        assert err <= tolerance(base, torch.float32, 4), f"grad {n}: rel err {err:.3g} (eager vs sdpa {base:.3g})"


CASES = [(w, n, s) for w in (2, 3) for n, s, _ in RUNS if not (s == "ulysses" and MODELS[n][1]["num_attention_heads"] % w)]


@pytest.mark.parametrize("world,name,strategy", CASES, ids=[f"{n}-{s}-world{w}" for w, n, s in CASES])
def test_hf_model_matches_single_process_sdpa(world, name, strategy):
    assert_matches(hf_results()[(world, name, strategy)], name)


def test_missing_position_ids_is_an_error():
    assert "position_ids" in hf_results()["no_positions"]


@pytest.mark.parametrize("name", list(MODELS))
def test_one_process_matches_sdpa(name):
    model = enable_ring_attention(build(name, SEED), layout="zigzag")
    ids, pos, w = batch(SEED)
    logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits
    (logits * w).sum().backward()
    assert model.config._attn_implementation == "ringfa3"
    assert_matches(dict(logits=logits.detach(), grads={n: p.grad for n, p in model.named_parameters()}), name)


def test_unsupported_uses_are_errors():
    with pytest.raises(ValueError, match="strategy"):
        enable_ring_attention(build("llama", SEED), strategy="tree")
    model = enable_ring_attention(build("llama", SEED))
    ids = batch(SEED)[0]
    with pytest.raises(ValueError, match="attention_mask"):  # a 4-D mask reaches the attention function
        model(input_ids=ids, attention_mask=torch.ones(B, 1, S, S, dtype=torch.bool), use_cache=False)
    padding = torch.ones(B, S, dtype=torch.long)
    model(input_ids=ids, attention_mask=padding, use_cache=False)  # all ones: nothing to mask
    padding[0, :3] = 0
    with pytest.raises(ValueError, match="padding"):  # transformers alone would drop it silently
        model(input_ids=ids, attention_mask=padding, use_cache=False)
    with pytest.raises(ValueError, match="KV cache"):
        out = model(input_ids=ids[:, :-2], use_cache=True)  # a prefill of 22 tokens, then one decoding step
        cache = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        model(input_ids=ids[:, -2:-1], use_cache=True, **{cache: out.past_key_values})
