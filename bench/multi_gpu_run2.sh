#!/usr/bin/env bash
# Issue #9 on one multi-GPU machine, second device call: the overlap trace kept as a file, torch's
# context_parallel on the full mask and the ring on our sm90 kernels. Everything lands in $OUT/run2.tgz.
# (Its training steps failed: no hydra wheels carried; they moved to multi_gpu_train.sh.)
set -u
OUT=${OUT:-/tmp/out}; W=/tmp/w; mkdir -p "$OUT" "$W"
source scripts/device_env.sh || exit 1
N=$(python3 -c 'import torch; print(torch.cuda.device_count())')
TR="torchrun --standalone --nproc_per_node $N"
BR="scripts/bench_ring.py --hidden 1024 --headdim 128 --layout zigzag --mono-work rank"
step() { local name=$1 t=$2; shift 2; echo "== $name ($(date +%T))"; timeout $t "$@" > "$W/$name.log" 2>&1; echo "rc=$?"
         grep -v -e '^W1' -e '^\*\*\*' -e Warning -e 'return func' -e '_warn_once' "$W/$name.log" | tail -n ${TAIL:-8}; }
step trace 60 $TR $BR --tokens 131072 --causal --no-mono --iters 2 --trace "$W/trace_128k_causal" --json "$W/trace_128k_causal.json"
step torch_cp_full 90 $TR $BR --tokens 131072 262144 --masks full --no-mono --torch-cp --json "$W/torch_cp_full.json"
step ring_sm90 120 $TR $BR --backend sm90 --tokens 131072 524288 --masks causal full --warmup 1 --iters 3 --json "$W/ring_sm90.json"
nvidia-smi --query-gpu=memory.used --format=csv
tar czf "$OUT/run2.tgz" -C "$W" . && ls -la "$OUT"
