#!/usr/bin/env bash
# Issue #9 on one multi-GPU machine, one device call: NCCL correctness, the overlap trace, the scaling
# sweep (ours vs the single-GPU kernel on the same per-rank work) and torch's context_parallel beside it.
# Run from the repo root with the library (ringfa3/lib) and the wheels (.whl) carried; OUT: results.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source scripts/device_env.sh || exit 1
N=$(python3 -c 'import torch; print(torch.cuda.device_count())')
echo "GPUs: $N; NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE-unset} TORCH_SYMM_MEM_DISABLE_MULTICAST=${TORCH_SYMM_MEM_DISABLE_MULTICAST-unset}"
nvidia-smi topo -m | head -8
TR="torchrun --standalone --nproc_per_node $N"
BR="scripts/bench_ring.py --hidden 1024 --headdim 128 --layout zigzag --mono-work rank"
step() { local name=$1 t=$2; shift 2; echo "== $name ($(date +%T))"; timeout $t "$@" > "$OUT/$name.log" 2>&1; echo "rc=$?"
         grep -v -e '^W1' -e '^\*\*\*' "$OUT/$name.log" | tail -n 14; }
step check 120 $TR scripts/multi_gpu_check.py --out "$OUT"
step trace 60 $TR $BR --tokens 131072 --causal --no-mono --iters 2 --trace "$OUT/trace_128k_causal" --json "$OUT/trace_128k_causal.json"
step torch_cp 120 $TR $BR --tokens 131072 262144 --masks causal full --no-mono --torch-cp --json "$OUT/torch_cp.json"
step scaling 180 $TR $BR --tokens 131072 262144 524288 --masks causal full --warmup 1 --iters 3 --json "$OUT/scaling.json"
step scaling_1m 120 $TR $BR --tokens 1048576 --masks causal --warmup 1 --iters 2 --json "$OUT/scaling_1m.json"
