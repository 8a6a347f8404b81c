"""Hugging Face transformers: run a causal LM's attention context-parallel through ringfa3.

    from ringfa3.integrations.hf import enable_ring_attention
    from ringfa3.parallel import shard
    model = AutoModelForCausalLM.from_config(cfg)          # Llama, Qwen2, Mistral, ... shapes
    enable_ring_attention(model, group=cp_group, layout="zigzag")
    logits = model(input_ids=shard(ids, 1, cp_group, "zigzag"),
                   position_ids=shard(pos, 1, cp_group, "zigzag"), use_cache=False).logits  # this rank's tokens

The model's attention modules call the function registered here under the name "ringfa3" in
transformers' AttentionInterface (query/key/value arrive as (b, h, s, d) after RoPE on the global
position_ids the caller fed); it runs ringfa3's context-parallel attention on this rank's tokens and
returns (b, s, h, d). Everything else in the model is per token and needs no change; parameter gradients
are per-rank partial sums (all-reduce them over the group, as data parallelism does).

Sliding-window layers (Mistral, Qwen2 with use_sliding_window) get the same window through the ring, on
global positions. Not supported (each raises): padding attention masks (pack sequences instead), KV-cache
decoding and attention dropout.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ringfa3.parallel.comm import world_and_rank
from ringfa3.parallel.layout import check_layout, local_positions
from ringfa3.parallel.planner import STRATEGIES, context_parallel_attn

NAME = "ringfa3"


@dataclass(frozen=True)
class CPSettings:
    """How one model's attention is split; stored on its modules so several models can differ."""
    group: object
    layout: str
    strategy: str
    backend: str
    check_positions: bool


def ringfa3_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                              scaling: float | None = None, sliding_window: int | None = None, **kwargs):
    """transformers attention function: query (b, h, s_l, d), key/value (b, h_kv, s_l, d) of this rank's
    tokens -> (attn_output (b, s_l, h, d), None)."""
    cp = getattr(module, "_ringfa3_cp", None)
    if cp is None:
        raise RuntimeError("this module's model was not prepared by ringfa3.integrations.hf.enable_ring_attention")
    world, _ = world_and_rank(cp.group)
    seqlen = query.shape[2] * world
    if attention_mask is not None:
        raise ValueError("ringfa3 context-parallel attention takes no attention_mask (it is causal over the whole "
                         "sharded sequence); pack sequences instead of padding them")
    if key.shape[2] != query.shape[2]:
        raise ValueError(f"ringfa3 context-parallel attention cannot decode from a KV cache (query length "
                         f"{query.shape[2]}, key length {key.shape[2]}); call the model with use_cache=False")
    if dropout:
        raise ValueError(f"attention dropout={dropout} is not supported by ringfa3; set config.attention_dropout=0")
    # transformers' sliding window keeps keys in (i - sliding_window, i]: flash-attn's (sliding_window - 1, .)
    window = (sliding_window - 1, sliding_window - 1) if sliding_window is not None and sliding_window < seqlen \
        else (-1, -1)
    if cp.check_positions and getattr(module, "layer_idx", 0) == 0:
        _check_positions(kwargs.get("position_ids"), query.shape[2], cp)
    q, k, v = (x.transpose(1, 2) for x in (query, key, value))  # (b, s_l, h or h_kv, d)
    causal = kwargs.get("is_causal")
    causal = getattr(module, "is_causal", True) if causal is None else bool(causal)
    out = context_parallel_attn(q, k, v, causal=causal, softmax_scale=scaling, group=cp.group, layout=cp.layout,
                                backend=cp.backend, window=window, strategy=cp.strategy)
    return out, None


def _check_positions(position_ids, seqlen_local: int, cp: CPSettings) -> None:
    """Without the caller's sharded position_ids, transformers would rotate by local positions 0..s_l-1: a silent
    wrong answer. One check per forward (first layer) catches it."""
    if position_ids is None:
        return  # this model does not pass them to attention; nothing to check
    want = local_positions(seqlen_local, cp.group, cp.layout, device=position_ids.device)
    if not torch.equal(position_ids, want.expand_as(position_ids)):
        raise ValueError(f"position_ids are not this rank's global positions under layout={cp.layout!r}: feed "
                         f"shard(position_ids, 1, group, layout) with the shard of input_ids (or pass "
                         f"check_positions=False to enable_ring_attention for packed sequences)")


def _no_padding_mask(*args, attention_mask=None, **kwargs):
    """transformers mask hook for "ringfa3": no mask is built (the attention is causal over the whole sharded
    sequence). Without a hook transformers would drop a 2-D padding mask silently, so one is refused here."""
    if attention_mask is not None and not bool(attention_mask.all()):
        raise ValueError("ringfa3 context-parallel attention cannot apply a padding attention_mask; pack sequences "
                         "without padding (an all-ones mask is fine)")
    return None


def _register() -> None:
    try:
        from transformers import AttentionInterface
        AttentionInterface.register(NAME, ringfa3_attention_forward)
    except ImportError:  # older transformers: the plain dict
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        ALL_ATTENTION_FUNCTIONS[NAME] = ringfa3_attention_forward
    try:
        from transformers.masking_utils import AttentionMaskInterface
        AttentionMaskInterface.register(NAME, _no_padding_mask)
    except ImportError:  # before masking_utils, models built 4-D masks, which the attention function refuses
        pass


def enable_ring_attention(model, group=None, layout: str = "zigzag", strategy: str = "ring", backend: str = "auto",
                          check_positions: bool = True):
    """Switch `model` (a transformers PreTrainedModel) to ringfa3 context-parallel attention over `group`.

    strategy: "ring" (default), "ulysses", "hybrid" or "auto" (see ringfa3.parallel.planner); all take the
    same input sharding. Returns the model.
    """
    check_layout(layout)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not known; use one of {', '.join(map(repr, STRATEGIES))}")
    _register()
    cp = CPSettings(group, layout, strategy, backend, check_positions)
    for m in model.modules():
        m._ringfa3_cp = cp
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(NAME)
    else:
        model.config._attn_implementation = NAME
    return model
