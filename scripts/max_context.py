"""Longest context that trains: a galloping + binary search over data.seq_len, each candidate a few
optimizer steps in a fresh process (so an out-of-memory state never leaks into the next one).

    python scripts/max_context.py --model llama_1b --long-context-options on --start 65536 \
        --budget-s 240 --out bench/results/max_context_llama1b_on.json [hydra overrides ...]
    python scripts/max_context.py --gpus 4 ...        # each candidate under torchrun, 4 ranks

Candidates are multiples of --granularity. CUDA OOM, a host-memory kill (the child's resident memory
over --host-limit-gb, the host's available memory under --host-min-free-gb, or the kernel's OOM killer) and a timeout all count as "does not fit"; any other
failure stops the search (a bug must not pass for a memory limit). The search doubles from --start
while candidates fit, then bisects the bracket. It stops when the bracket is one granule wide, or when
--budget-s runs out, and then reports the longest length that fitted, the bracket and why its upper
end failed. A candidate that the time model (the last fitting one's seconds, scaled by the square of
the length: attention dominates) predicts to overrun the budget is shrunk to what the budget allows.

--long-context-options on|off sets train.loss_chunk_tokens, train.mlp_chunk_tokens,
train.activation_checkpointing and train.offload_activations together. The JSON (--out) holds every
trial and, for the longest fitting length: tokens/s of the last step, peak GPU memory (allocated and
reserved, max over ranks), peak host RSS (max over ranks, and the whole process tree as sampled),
the host memory the trial took (MemTotal-wide: MemAvailable before minus its minimum during), the
card, torch version, date and command. With two or more fitting lengths it adds a linear fit of peak
memory against length and the length where it would meet the card's and host's memory: a projection,
labelled as such, never a measurement.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable

OOM = re.compile(r"out of memory|OutOfMemoryError|ALLOC_FAILED|cudaErrorMemoryAllocation|std::bad_alloc", re.I)


@dataclasses.dataclass
class Trial:
    seq_len: int
    fits: bool
    reason: str  # "ok", "cuda_oom", "host_limit", "killed", "timeout", "error"
    seconds: float
    metrics: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class SearchResult:
    best: Trial | None
    lo: int  # longest fitting length (0 if none)
    hi: int | None  # shortest failing length above lo (None if none failed)
    hi_reason: str | None
    stopped: str  # "converged", "max_len", "budget", "error", "min_len"
    trials: list


class Interrupted(Exception):
    """SIGTERM/SIGINT to the search: stop, kill the running candidate, report what was found."""


def _down(n: float, g: int) -> int:
    return int(n) // g * g


def search(fits: Callable[[int, float], Trial], start: int, granularity: int, max_len: int, budget_s: float,
           clock: Callable[[], float] = time.monotonic, min_trial_s: float = 5.0) -> SearchResult:
    """Galloping then binary search for the longest fitting multiple of `granularity` in
    [granularity, max_len]. `fits(seq_len, timeout_s)` runs one candidate."""
    g = granularity
    start = max(g, min(_down(start, g), _down(max_len, g)))
    t0, trials = clock(), []
    lo, hi, hi_reason, best = 0, None, None, None
    cand = start

    def predicted(s: int) -> float:  # seconds for a candidate of length s, from the last fitting one
        if best is None:
            return 0.0
        r = s / best.seq_len
        steps = sum(best.metrics.get("step_seconds") or [])
        if 0 < steps < best.seconds:  # start-up grows ~linearly, the steps ~quadratically (attention)
            return (best.seconds - steps) * max(1.0, r) + steps * r * r
        return best.seconds * r * r

    while True:
        left = budget_s - (clock() - t0)
        if left < min_trial_s:
            return SearchResult(best, lo, hi, hi_reason, "budget", trials)
        if best is not None and predicted(cand) > left:  # shrink to what the budget allows
            while cand > lo and predicted(cand) > left:
                cand = _down(cand - max(g, (cand - lo) // 8), g)
            if cand <= lo:
                return SearchResult(best, lo, hi, hi_reason, "budget", trials)
        try:
            t = fits(cand, left)
        except Interrupted:
            return SearchResult(best, lo, hi, hi_reason, "interrupted", trials)
        trials.append(t)
        if t.reason == "error":
            return SearchResult(best, lo, hi, hi_reason, "error", trials)
        if t.fits:
            lo, best = cand, t
        else:
            hi, hi_reason = cand, t.reason
        if hi is None:  # galloping up
            if lo >= _down(max_len, g):
                return SearchResult(best, lo, hi, hi_reason, "max_len", trials)
            cand = min(2 * lo, _down(max_len, g))
        elif lo == 0:  # even the start failed: gallop down
            if hi <= g:
                return SearchResult(best, lo, hi, hi_reason, "min_len", trials)
            cand = max(g, _down(hi // 2, g))
        else:
            if hi - lo <= g:
                return SearchResult(best, lo, hi, hi_reason, "converged", trials)
            cand = max(lo + g, _down((lo + hi) // 2, g))


def linear_projection(trials: list, limits: dict) -> dict | None:
    """Fit peak = a + b * seq_len over the fitting trials for each resource in `limits`
    ({metric key: limit in GiB}); the length where each fit meets its limit."""
    ok = [t for t in trials if t.fits]
    if len({t.seq_len for t in ok}) < 2:
        return None
    out = {}
    for key, limit in limits.items():
        pts = [(t.seq_len, t.metrics[key]) for t in ok if t.metrics.get(key) is not None]
        if len({x for x, _ in pts}) < 2 or not limit:
            continue
        n, sx, sy = len(pts), sum(x for x, _ in pts), sum(y for _, y in pts)
        sxx, sxy = sum(x * x for x, _ in pts), sum(x * y for x, y in pts)
        b = (n * sxy - sx * sy) / (n * sxx - sx * sx)
        a = (sy - b * sx) / n
        out[key] = {"gib_at_0": a, "gib_per_1k_tokens": b * 1024, "limit_gib": limit,
                    "projected_max_seq_len": int((limit - a) / b) if b > 0 else None}
    lens = [v["projected_max_seq_len"] for v in out.values() if v["projected_max_seq_len"]]
    return {"note": "projection from a linear fit of measured peaks; these lengths were not run",
            "fits": out, "projected_max_seq_len": min(lens) if lens else None}


# ---- running one candidate -----------------------------------------------------------------------

def option_overrides(mode: str, loss_chunk: int, mlp_chunk: int) -> list[str]:
    on = mode == "on"
    return [f"train.loss_chunk_tokens={loss_chunk if on else 0}", f"train.mlp_chunk_tokens={mlp_chunk if on else 0}",
            f"train.activation_checkpointing={str(on).lower()}", f"train.offload_activations={str(on).lower()}"]


def probe_overrides(args, seq_len: int) -> list[str]:
    return ([f"model={args.model}", "data=passkey", f"data.seq_len={seq_len}", f"data.batch_size={args.batch_size}",
             "data.ramp_steps=0", "data.full_prob=1.0", f"train.max_steps={args.steps}", "train.eval_every=0",
             "train.ckpt_every=0", "train.log_every=1", "logger.progress=false", "logger.wandb=false",
             f"parallel.cp={args.gpus}"]
            + option_overrides(args.long_context_options, args.loss_chunk, args.mlp_chunk) + list(args.overrides))


def _tree_rss_gib(pgid: int) -> float:
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.getpgid(int(pid)) != pgid:
                continue
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total / 2**20


def _mem_available_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _watch(proc, args, t0: float, timeout_s: float) -> None:
    """Poll the candidate until it exits; kill its process group on a host-memory limit or the timeout.
    Leaves why (None or the reason), peak_tree and min_avail on `proc`."""
    proc.why, proc.peak_tree, proc.min_avail = None, 0.0, _mem_available_gib() or 0.0
    while proc.poll() is None:
        time.sleep(0.5)
        rss = _tree_rss_gib(proc.pid)
        proc.peak_tree = max(proc.peak_tree, rss)
        avail = _mem_available_gib()
        if avail is not None:
            proc.min_avail = min(proc.min_avail, avail)
        if (args.host_limit_gb and rss > args.host_limit_gb) or (avail is not None and avail < args.host_min_free_gb):
            proc.why = "host_limit"
        elif time.monotonic() - t0 > timeout_s:
            proc.why = "timeout"
        if proc.why:
            os.killpg(proc.pid, signal.SIGKILL)  # our own child's process group
            proc.wait()


def run_candidate(args, seq_len: int, timeout_s: float, workdir: str) -> Trial:
    result = os.path.join(workdir, f"trial_{seq_len}.json")
    child = ["--child", "--result", result, "--steps", str(args.steps)] + (["--no-warm-optimizer"] if not args.warm_optimizer else [])
    child += ["--"] + probe_overrides(args, seq_len)
    if args.gpus > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.gpus}",
               os.path.abspath(__file__)] + child
    else:
        cmd = [sys.executable, os.path.abspath(__file__)] + child
    log_path = os.path.join(workdir, f"trial_{seq_len}.log")
    t0 = time.monotonic()
    avail0 = _mem_available_gib()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _watch(proc, args, t0, timeout_s)
        except BaseException:  # interrupted: never leave the candidate running on the GPU
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        why, peak_tree, min_avail = proc.why, proc.peak_tree, proc.min_avail
    seconds = time.monotonic() - t0
    with open(log_path) as f:
        tail = f.read()[-4000:]
    metrics = {"host_rss_tree_peak_gib": round(peak_tree, 2)}
    if avail0 is not None:  # system-wide: counts pinned host memory whichever way RSS shows it
        metrics["host_used_by_trial_peak_gib"] = round(avail0 - min_avail, 2)
        metrics["host_available_before_gib"] = round(avail0, 2)
    if why is None and proc.returncode == 0 and os.path.exists(result):
        with open(result) as f:
            metrics.update(json.load(f))
        return Trial(seq_len, True, "ok", seconds, metrics)
    if why is None:
        why = "cuda_oom" if OOM.search(tail) else ("killed" if proc.returncode in (-9, 137) else "error")
    metrics["log_tail"] = tail[-1500:]
    print(f"  seq_len {seq_len}: {why} after {seconds:.0f}s", flush=True)
    return Trial(seq_len, False, why, seconds, metrics)


# ---- the child: build the Trainer, run the steps, write the numbers ------------------------------

def child_main(result: str, steps: int, warm: bool, overrides: list[str]) -> None:
    import resource

    import torch
    import torch.distributed as dist
    from hydra import compose, initialize_config_module

    from ringfa3.parallel.shutdown import exit_rank
    from ringfa3.train.app import to_config
    from ringfa3.train.loop import Trainer, _init_process_group

    with initialize_config_module("ringfa3.configs", version_base="1.3"):
        cfg = to_config(compose("config", overrides=overrides))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    else:
        _init_process_group()
    t_build = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, run_dir)
        t_build = time.perf_counter() - t_build
        if warm:
            warm_optimizer(trainer.engine)  # steady-state optimizer memory already at step 1
        cuda = trainer.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        recs = [trainer.train_step() for _ in range(steps)]
        trainer.metrics.close()
    peaks = torch.tensor([torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
                          torch.cuda.max_memory_reserved() / 2**30 if cuda else 0.0,
                          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20], dtype=torch.float64)
    dist.all_reduce(peaks, op=dist.ReduceOp.MAX)
    if dist.get_rank() == 0:
        out = {"tokens_per_s": recs[-1]["tokens_per_s"], "step_seconds": [cfg.data.batch_size * cfg.data.seq_len /
                                                                           r["tokens_per_s"] for r in recs],
               "mfu": recs[-1].get("mfu"), "loss": recs[-1]["loss"], "build_seconds": t_build,
               "gpu_peak_allocated_gib": peaks[0].item(), "gpu_peak_reserved_gib": peaks[1].item(),
               "host_rss_peak_gib": peaks[2].item(), "world": dist.get_world_size(),
               "gpu_total_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
               "host_total_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30}
        with open(result, "w") as f:
            json.dump(out, f)
    exit_rank()  # the probe runs in a process of its own


def warm_optimizer(engine) -> None:
    """Create the optimizer's states before step 1, leaving the parameters unchanged, so step 1's
    peak already holds them (a probe of one step then measures the steady state)."""
    import torch

    opt = getattr(engine, "optimizer", None)
    if hasattr(opt, "init_state"):
        opt.init_state()
        return
    if not isinstance(opt, torch.optim.AdamW):
        return  # e.g. DeepSpeed's wrapper: use --steps 2
    lrs = [g["lr"] for g in opt.param_groups]
    for g in opt.param_groups:
        g["lr"] = 0.0  # AdamW with lr 0: decay 1 - 0 * wd and a zero update, the parameters stay exact
        for p in g["params"]:
            p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    for g, lr in zip(opt.param_groups, lrs):
        g["lr"] = lr


# ---- the parent -------------------------------------------------------------------------------------

def device_info() -> dict:
    import torch

    info = {"torch": torch.__version__, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if torch.cuda.is_available():
        info["card"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def host_total_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama_1b", help="model config name (configs/model/)")
    p.add_argument("--long-context-options", choices=("on", "off"), default="on")
    p.add_argument("--gpus", type=int, default=1, help="ranks per candidate (torchrun when > 1); parallel.cp")
    p.add_argument("--start", type=int, default=65536)
    p.add_argument("--granularity", type=int, default=8192)
    p.add_argument("--max-len", type=int, default=1 << 21)
    p.add_argument("--steps", type=int, default=2, help="optimizer steps per candidate (tokens/s from the last)")
    p.add_argument("--no-warm-optimizer", dest="warm_optimizer", action="store_false",
                   help="do not create the optimizer states before step 1")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--loss-chunk", type=int, default=4096)
    p.add_argument("--mlp-chunk", type=int, default=8192)
    p.add_argument("--budget-s", type=float, default=480.0, help="wall budget of the whole search")
    p.add_argument("--host-limit-gb", type=float, default=None,
                   help="kill a candidate whose process tree's RSS passes this many GiB (default: 92%% of RAM)")
    p.add_argument("--host-min-free-gb", type=float, default=6.0,
                   help="kill a candidate when the host's MemAvailable falls below this many GiB")
    p.add_argument("--out", default=None, help="JSON result path")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every candidate")
    args = p.parse_intermixed_args(argv)
    if args.child:
        child_main(args.result, args.steps, args.warm_optimizer, args.overrides)
        return {}
    if args.host_limit_gb is None:
        args.host_limit_gb = 0.92 * host_total_gib()
    if args.granularity < 1 or args.start < 1 or args.steps < 1:
        p.error("--granularity, --start and --steps must be positive")
    parts = 2 * args.gpus  # the zigzag layout splits a sequence into 2 x cp chunks
    granularity = -(-args.granularity // parts) * parts
    info = device_info()  # imports torch before the clock starts

    def interrupt(signum, frame):
        raise Interrupted(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    with tempfile.TemporaryDirectory() as workdir:
        def fits(seq_len: int, left: float) -> Trial:
            print(f"  seq_len {seq_len}: running (up to {left:.0f}s)", flush=True)
            t = run_candidate(args, seq_len, left, workdir)
            if t.fits:
                m = t.metrics
                print(f"  seq_len {seq_len}: fits, {m['tokens_per_s']:,.0f} tok/s, GPU {m['gpu_peak_allocated_gib']:.1f} GiB "
                      f"(reserved {m['gpu_peak_reserved_gib']:.1f}), host RSS {m['host_rss_peak_gib']:.1f} GiB, host used "
                      f"{m.get('host_used_by_trial_peak_gib')} GiB, {t.seconds:.0f}s",
                      flush=True)
            return t

        res = search(fits, args.start, granularity, args.max_len, args.budget_s)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a late signal must not lose the report
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    best = res.best
    ok = [t for t in res.trials if t.fits]
    limits = {}
    if best is not None:
        limits = {"gpu_peak_reserved_gib": best.metrics.get("gpu_total_gib"),
                  "host_used_by_trial_peak_gib": (best.metrics.get("host_available_before_gib") or 0) - args.host_min_free_gb}
    out = {"model": args.model, "gpus": args.gpus, "long_context_options": args.long_context_options,
           "overrides": probe_overrides(args, 0)[3:], "command": " ".join(["python", *sys.argv]),
           **info, "max_seq_len": res.lo, "bracket": [res.lo, res.hi], "upper_failed_because": res.hi_reason,
           "stopped": res.stopped, "budget_s": args.budget_s,
           "at_max": None if best is None else {k: v for k, v in best.metrics.items() if k != "log_tail"},
           "projection": linear_projection(ok, limits) if ok else None,
           "trials": [dataclasses.asdict(t) for t in res.trials]}
    print(json.dumps({k: out[k] for k in ("model", "long_context_options", "max_seq_len", "bracket",
                                          "upper_failed_because", "stopped")}), flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
