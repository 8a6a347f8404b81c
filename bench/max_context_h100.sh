#!/usr/bin/env bash
# The device call behind bench/results/max_context_*.json (one H100, under 9 minutes in all):
# llama_1b with the long-context options off, then on, then an 8B-shaped model with FSDP2 CPU offload.
# Each search has its own wall budget (scripts/max_context.py --budget-s) inside a hard `timeout`.
# Device call 1 ran this file; its llama_1b "on" search hit the offload prefetch bug fixed since, and
# was rerun alone (budget 175 s: the command is in bench/results/max_context_llama1b_on_h100.json).
# OUT: where the JSON and logs go. CPU dry run: M1=tiny M8=tiny X="train.device=cpu" OFF8="" S=64 B=4.
OUT=${OUT:-bench/results}; M1=${M1:-llama_1b}; M8=${M8:-llama_8b}; X=${X:-}; S=${S:-1}; B=${B:-1}
OFF8=${OFF8-parallel.cpu_offload=true parallel.cpu_offload_pin=false optim.state_dtype=bfloat16 train.offload_max_gb=14}
MC="python scripts/max_context.py"
run() {  # name, timeout, args...
  local name=$1 t=$2; shift 2
  timeout -s TERM $((t / B)) $MC "$@" --out "$OUT/max_context_$name.json" $X > "$OUT/log_$name.txt" 2>&1
  echo "== $name rc=$?"; tail -n 12 "$OUT/log_$name.txt"
}
run llama1b_off 95 --model "$M1" --long-context-options off --start $((16384 / S)) --granularity $((4096 / S)) \
  --steps 2 --budget-s $((85 / B))
run llama1b_on 225 --model "$M1" --long-context-options on --start $((131072 / S)) --granularity $((16384 / S)) \
  --steps 1 --budget-s $((215 / B))
run llama8b_offload 195 --model "$M8" --long-context-options on --start $((65536 / S)) --granularity $((16384 / S)) \
  --steps 1 --budget-s $((185 / B)) $OFF8
