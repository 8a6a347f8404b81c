#!/usr/bin/env bash
# Single-GPU device calls for the candidates of bench/candidates_build.sh, one section or more per
# call (each call is at most 10 minutes): `bash bench/candidates_device.sh fwd fp8`, then `... bwd`.
# Carry: ringfa3/lib, .build/dev, and for fwd / fp8 .whl holding the fa3-fwd wheel (FA3's e4m3 and bf16
# forward), for bwd .whl_bwd holding flash-attn3-jax and a copy of ../shared/tools/fa3_anchor.py (the
# two wheels together pass the 64 MiB carry limit).
# Writes under $OUT:
#   fwd/  the forward's check (dense, packed documents) and bench, with the cluster build beside it,
#         and the varlen bench;
#   fp8/  the e4m3 kernel's check and bench, with the 4-stage build beside it;
#   bwd/  the backward check of each candidate and the bench of the current library and each
#         candidate (the deterministic column included).
# Every part has its own timeout, so a hang costs only that part.
set -u
OUT=${OUT:-/tmp/out}
source scripts/device_env.sh || exit 1
DEV=$PWD/.build/dev
for section in "$@"; do
  mkdir -p "$OUT/$section"
  case $section in
  fwd)   # about 5 minutes
    timeout 300 python3 scripts/check_sm90.py --out "$OUT/fwd" --parts check,bench,varlen --extra-hds 64,256 \
      --check-timeout 120 --bench-timeout 120 --alt-lib cluster2=$DEV/cluster2.so 2>&1 | tail -45 ;;
  fp8)   # at most 4 minutes
    timeout 240 python3 scripts/check_sm90_fp8.py --out "$OUT/fp8" --timeout 110 --alt-lib fp8st4=$DEV/fp8st4.so 2>&1 | tail -40 ;;
  bwd)   # at most 7.5 minutes
    for lib in dqw both; do
      echo "== bwd check $lib"
      RINGFA3_SM90_LIB=$DEV/$lib.so timeout 100 python3 scripts/check_sm90_bwd.py --part check --out "$OUT/bwd/$lib" 2>&1 | tail -6
    done
    for lib in current dqw both; do
      path=$PWD/ringfa3/lib/libringfa3_sm90.so; [ "$lib" = current ] || path=$DEV/$lib.so
      echo "== bwd bench $lib"
      RINGFA3_SM90_LIB=$path timeout 80 python3 scripts/check_sm90_bwd.py --part bench --seqs 4096,16384 --out "$OUT/bwd/$lib" 2>&1 | tail -9
    done ;;
  *) echo "unknown section $section (fwd, fp8, bwd)"; exit 2 ;;
  esac
done
