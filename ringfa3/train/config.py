"""Structured configs of the training job: one dataclass per Hydra group, checked in __post_init__.

Each check raises ValueError with one sentence naming the key and a valid value. Checks that need the
world size (parallel.cp, data.seq_len vs the layout, data.batch_size vs dp) run in `check_world`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from ringfa3.models import LlamaConfig

LAYOUTS = ("contiguous", "zigzag", "stripe")
ENGINES = ("fsdp", "deepspeed", "none")


def _one_of(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not known; use one of {', '.join(map(repr, allowed))}")


def _positive(key: str, value, example) -> None:
    if value < 1:
        raise ValueError(f"{key}={value} must be a positive integer, e.g. {key}={example}")


@dataclass
class DataConfig:
    """What the model reads. `name`: 'passkey' (synthetic, generated on the fly) or 'tokens'.

    seq_len: tokens per sequence (the whole context, split over parallel.cp ranks).
    batch_size: sequences per optimizer step, over all data-parallel ranks (the global batch).
    passkey (ringfa3/train/passkey.py): key_len symbols per key, each from its own key_values
      symbols; the filler is a fixed sentence of filler_len tokens repeated; train_queries questions
      per training sequence; a window curriculum from min_window to seq_len over ramp_steps, then the
      full length with probability full_prob; eval_depths x eval_per_depth eval sequences.
    tokens: `path` is a folder made by scripts/prepare_tokens.py (train.bin, val.bin, meta.json).
    """

    name: str = "passkey"
    seq_len: int = 1024
    batch_size: int = 8
    seed: int = 1234
    key_len: int = 4
    key_values: int = 10
    filler_vocab: int = 64
    filler_len: int = 12
    train_queries: int = 4
    ramp_steps: int = 200
    min_window: int = 64
    full_prob: float = 0.5
    eval_depths: List[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    eval_per_depth: int = 20
    path: str = ""
    eval_batches: int = 4

    def __post_init__(self):
        _one_of("data.name", self.name, ("passkey", "tokens"))
        _positive("data.seq_len", self.seq_len, 1024)
        _positive("data.batch_size", self.batch_size, 8)
        for key, ex in (("key_len", 4), ("key_values", 10), ("filler_vocab", 64), ("filler_len", 12),
                        ("train_queries", 8), ("eval_per_depth", 16), ("eval_batches", 4)):
            _positive(f"data.{key}", getattr(self, key), ex)
        if self.ramp_steps < 0 or not 0.0 <= self.full_prob <= 1.0:
            raise ValueError(f"data.ramp_steps={self.ramp_steps} must be >= 0 and data.full_prob={self.full_prob} "
                             f"in [0, 1]; e.g. data.ramp_steps=200 data.full_prob=0.5")
        if any(not 0.0 <= d <= 1.0 for d in self.eval_depths) or not self.eval_depths:
            raise ValueError(f"data.eval_depths={list(self.eval_depths)} must be fractions in [0, 1], "
                             f"e.g. data.eval_depths=[0,0.5,1]")
        if self.name == "passkey":
            need = (self.train_queries + 1) * (self.key_len + 1) + 3
            if self.seq_len < need:
                raise ValueError(f"data.seq_len={self.seq_len} is too short for the passkey task with "
                                 f"data.train_queries={self.train_queries}; use data.seq_len>={need}")
        if self.name == "tokens" and not self.path:
            raise ValueError("data.path is empty but data=tokens reads token shards; set "
                             "data.path=DIR made by scripts/prepare_tokens.py")


@dataclass
class ParallelConfig:
    """How ranks split the work. world = dp x cp; dp is derived (0) or must equal world / cp.

    cp: ranks that share one sequence (context parallel), in `layout` order.
    engine: 'fsdp' (FSDP2 fully_shard), 'deepspeed' (ZeRO `zero_stage`), or 'none' (replicated, all-reduce).
    cpu_offload: engine fsdp only: FSDP2's CPUOffloadPolicy keeps the float32 parameter shards, their
      gradients and the optimizer (its states and its step) in pinned host memory; the GPU holds one
      block's gathered bf16 parameters at a time.
    cpu_offload_pin: with cpu_offload, keep those host copies in pinned memory (faster copies; torch's
      pinned allocator rounds each block up to a power of two, up to ~1.3x the bytes for an 8B model).
    """

    cp: int = 1
    dp: int = 0
    layout: str = "zigzag"
    engine: str = "fsdp"
    zero_stage: int = 2
    cpu_offload: bool = False
    cpu_offload_pin: bool = True

    def __post_init__(self):
        _positive("parallel.cp", self.cp, 1)
        if self.dp < 0:
            raise ValueError(f"parallel.dp={self.dp} must be 0 (derived from the world size) or positive")
        _one_of("parallel.layout", self.layout, LAYOUTS)
        _one_of("parallel.engine", self.engine, ENGINES)
        _one_of("parallel.zero_stage", self.zero_stage, (0, 1, 2, 3))
        if self.cpu_offload and self.engine != "fsdp":
            raise ValueError(f"parallel.cpu_offload=true needs parallel.engine=fsdp (got {self.engine!r}); "
                             f"use parallel.engine=fsdp")


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay to lr * min_lr_ratio at train.max_steps.

    grad_accum: micro-batches per step (data.batch_size is split over dp ranks and micro-batches).
    grad_clip: max global grad norm (0 disables clipping; the norm is still logged).
    state_dtype: 'float32' (torch AdamW) or 'bfloat16': the two moments stored in bf16, math in fp32
      (ringfa3/train/adamw_lowmem.py; an approximation of AdamW that saves 4 bytes a parameter).
    """

    name: str = "adamw"
    lr: float = 3e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    grad_accum: int = 1
    state_dtype: str = "float32"

    def __post_init__(self):
        _one_of("optim.name", self.name, ("adamw",))
        _one_of("optim.state_dtype", self.state_dtype, ("float32", "bfloat16"))
        if not self.lr > 0:
            raise ValueError(f"optim.lr={self.lr} must be positive, e.g. optim.lr=3e-4")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas={list(self.betas)} must be two numbers in [0, 1), e.g. [0.9,0.95]")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps={self.warmup_steps} must be >= 0, e.g. optim.warmup_steps=100")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"optim.min_lr_ratio={self.min_lr_ratio} must be in [0, 1], e.g. 0.1")
        if self.grad_clip < 0:
            raise ValueError(f"optim.grad_clip={self.grad_clip} must be >= 0 (0 disables), e.g. 1.0")
        _positive("optim.grad_accum", self.grad_accum, 1)


@dataclass
class TrainConfig:
    """The loop. resume: 'auto' (latest checkpoint of this run dir if any), 'never', or a checkpoint path.

    device: 'auto' (cuda if available), 'cpu' or 'cuda'. dtype: 'auto' (bf16 mixed precision on cuda,
    float32 on cpu), 'float32' or 'bfloat16'. ckpt_every / eval_every / log_every: steps (0 = never
    during the run; eval and a checkpoint still happen at the last step unless 0 and 0).
    max_bad_steps: consecutive non-finite losses that stop the run.
    loss_chunk_tokens: > 0 computes the LM head and loss that many tokens at a time (no full logits).
    mlp_chunk_tokens: > 0 runs each MLP over sequence tiles of that many tokens, recomputed in backward.
    offload_activations: each checkpointed block's input goes to pinned host memory during the forward
    and comes back ahead of its backward (needs activation_checkpointing).
    offload_max_gb: > 0 caps the offloaded bytes (GiB) per step; later tensors stay on the GPU.
    meta_init: engines fsdp/none: build the model on the meta device, wrap and shard it, then allocate
    and initialize each rank's shards on their device (ringfa3/train/meta_init.py); false builds it
    whole on the CPU first. Same initial values on CPU runs either way.
    """

    max_steps: int = 400
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    log_every: int = 10
    eval_every: int = 100
    ckpt_every: int = 0
    keep_last: int = 2
    resume: str = "auto"
    ckpt_dir: str = "checkpoints"
    activation_checkpointing: bool = False
    compile: bool = False
    max_bad_steps: int = 3
    peak_tflops: float = 0.0
    loss_chunk_tokens: int = 0
    mlp_chunk_tokens: int = 0
    offload_activations: bool = False
    offload_max_gb: float = 0.0
    meta_init: bool = True

    def __post_init__(self):
        _positive("train.max_steps", self.max_steps, 100)
        _one_of("train.device", self.device, ("auto", "cpu", "cuda"))
        _one_of("train.dtype", self.dtype, ("auto", "float32", "bfloat16"))
        for key in ("log_every", "eval_every", "ckpt_every"):
            if getattr(self, key) < 0:
                raise ValueError(f"train.{key}={getattr(self, key)} must be >= 0 (0 = never), e.g. train.{key}=100")
        _positive("train.keep_last", self.keep_last, 2)
        _positive("train.max_bad_steps", self.max_bad_steps, 3)
        if self.offload_activations and not self.activation_checkpointing:
            raise ValueError("train.offload_activations=true offloads the checkpointed block inputs; "
                             "set train.activation_checkpointing=true as well")
        if self.offload_max_gb < 0:
            raise ValueError(f"train.offload_max_gb={self.offload_max_gb} must be >= 0 (0 = no cap), "
                             f"e.g. train.offload_max_gb=24")
        for key in ("loss_chunk_tokens", "mlp_chunk_tokens"):
            if getattr(self, key) < 0:
                raise ValueError(f"train.{key}={getattr(self, key)} must be >= 0 (0 = off), e.g. train.{key}=8192")
        if not self.resume:
            raise ValueError("train.resume is empty; use train.resume=auto, train.resume=never or a checkpoint path")


@dataclass
class LoggerConfig:
    """metrics.jsonl always; a rich progress bar on rank 0; wandb when `wandb` is true.

    wandb_mode: 'auto' (online when WANDB_API_KEY is set, else offline), 'online', 'offline' or 'disabled'.
    """

    progress: bool = True
    wandb: bool = False
    wandb_project: str = "ringfa3"
    wandb_mode: str = "auto"

    def __post_init__(self):
        _one_of("logger.wandb_mode", self.wandb_mode, ("auto", "online", "offline", "disabled"))


@dataclass
class Config:
    """The whole job (the Hydra primary config's schema)."""

    model: LlamaConfig = field(default_factory=LlamaConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)

    def __post_init__(self):
        if self.model.attn_backend == "sdpa" and self.parallel.cp != 1:
            raise ValueError(f"model.attn_backend='sdpa' cannot run context parallel (parallel.cp="
                             f"{self.parallel.cp}); use parallel.cp=1 or model.attn_backend=auto")


def check_world(cfg: Config, world: int) -> tuple[int, int]:
    """(dp, cp) for `world` ranks; ValueError naming the key if the split is impossible."""
    p, d = cfg.parallel, cfg.data
    if world % p.cp != 0:
        ok = max(c for c in range(1, world + 1) if world % c == 0 and c <= p.cp)
        raise ValueError(f"parallel.cp={p.cp} does not divide the world size {world}; use a divisor of "
                         f"{world}, e.g. parallel.cp={ok}")
    dp = world // p.cp
    if p.dp not in (0, dp):
        raise ValueError(f"parallel.dp={p.dp} does not match world size {world} / parallel.cp={p.cp}; "
                         f"use parallel.dp={dp} or leave it 0")
    parts = 2 * p.cp if p.layout == "zigzag" else p.cp
    if d.seq_len % parts != 0:
        ok = -(-d.seq_len // parts) * parts
        raise ValueError(f"data.seq_len={d.seq_len} cannot be split by parallel.layout={p.layout!r} over "
                         f"parallel.cp={p.cp} ranks; use a multiple of {parts}, e.g. data.seq_len={ok}")
    per = dp * cfg.optim.grad_accum
    if d.batch_size % per != 0:
        ok = -(-d.batch_size // per) * per
        raise ValueError(f"data.batch_size={d.batch_size} must be a multiple of dp={dp} x optim.grad_accum="
                         f"{cfg.optim.grad_accum}; use e.g. data.batch_size={ok}")
    return dp, p.cp
