#!/usr/bin/env bash
# CPU machine: build the libraries that bench/candidates_device.sh checks and times beside the
# current one. Each bench/wip patch set is applied in a scratch worktree and built with
# --lib .build/dev/NAME.so:
#   dqw  = bwd_dq_writer.patch
#   both = bwd_dq_writer.patch + bwd_stsm_ds.patch
#   fp8st4 = RINGFA3_FP8_HD128_STAGES=4 (e4m3 hd128 only)
#   cluster2 = RINGFA3_FWD_CLUSTER=2 (16-bit forward: K/V multicast to CTA pairs, unmasked attention)
# The current library is ringfa3/lib/libringfa3_sm90.so (python scripts/build_csrc.py).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD; DEV=$ROOT/.build/dev; mkdir -p "$DEV"
build_patched() {  # name, patches...
  local name=$1; shift
  local wt; wt=$(mktemp -d)/wt
  git worktree add -q "$wt" HEAD
  for p in "$@"; do git -C "$wt" apply "$ROOT/bench/wip/$p"; done
  (cd "$wt" && python scripts/build_csrc.py --only bf16:64 --only bf16:128 --only fp16:64 --only fp16:128 --lib "$DEV/$name.so")
  git worktree remove --force "$wt"
}
build_patched dqw bwd_dq_writer.patch
build_patched both bwd_dq_writer.patch bwd_stsm_ds.patch
python scripts/build_csrc.py --only e4m3:128 --no-bwd --define RINGFA3_FP8_HD128_STAGES=4 --lib "$DEV/fp8st4.so"
python scripts/build_csrc.py --only bf16:64 --only bf16:128 --only bf16:256 --no-bwd --define RINGFA3_FWD_CLUSTER=2 \
  --lib "$DEV/cluster2.so"
ls -la "$DEV"
