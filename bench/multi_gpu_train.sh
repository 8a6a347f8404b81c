#!/usr/bin/env bash
# Issue #9 on one multi-GPU machine: training at cp = all GPUs (llama_1b and the 8B shape, the
# long-context options on, FSDP2 over dp x cp). Carry ringfa3/lib and .whl holding the hydra-core,
# omegaconf and antlr4-python3-runtime wheels (the image has no Hydra). Results land in $OUT/train.tgz.
#   bash bench/multi_gpu_train.sh [MODEL:SEQ_LEN:STEPS:TIMEOUT_S ...]
set -u
OUT=${OUT:-/tmp/out}; W=/tmp/w; mkdir -p "$OUT" "$W"
source scripts/device_env.sh || exit 1
N=$(python3 -c 'import torch; print(torch.cuda.device_count())')
TR="torchrun --standalone --nproc_per_node $N"
step() { local name=$1 t=$2; shift 2; echo "== $name ($(date +%T))"; timeout $t "$@" > "$W/$name.log" 2>&1; echo "rc=$?"
         grep -v -e '^W1' -e '^\*\*\*' -e Warning "$W/$name.log" | grep -e Error -e error | tail -n 4
         cut -c1-200 "$W/$name/metrics.jsonl" 2>/dev/null | tail -n 3; }
T="$TR -m ringfa3.train data=passkey data.batch_size=1 data.ramp_steps=0 data.full_prob=1.0 train.eval_every=0
   train.ckpt_every=0 train.log_every=1 logger.progress=false logger.wandb=false parallel.cp=$N
   train.loss_chunk_tokens=4096 train.mlp_chunk_tokens=8192 train.activation_checkpointing=true train.offload_activations=true"
# Runs: MODEL:SEQ_LEN:STEPS:TIMEOUT_S each; default the first call's three.
for run in ${@:-llama_1b:131072:3:100 llama_1b:262144:2:150 llama_8b:131072:2:200}; do
  IFS=: read -r model seq steps t <<< "$run"; name=train_${model}_${seq}
  step "$name" "$t" $T model=$model data.seq_len=$seq train.max_steps=$steps hydra.run.dir=$W/$name
done
tar czf "$OUT/train.tgz" -C "$W" . && ls -la "$OUT"
