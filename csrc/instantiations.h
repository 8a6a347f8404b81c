// Tile shapes per head dim, and the (dtype, head_dim) dispatch over the generated instantiations
// (csrc/generated/*.cu, written by scripts/build_csrc.py; one translation unit each so they build
// in parallel).
#pragma once
#include <cuda_runtime.h>
#include <cutlass/numeric_types.h>
#include "fwd_args.h"

namespace ringfa3 {

// (kBlockM, kBlockN, kStages): kBlockM / 64 consumer warpgroups; kBlockN and the stage count are what
// fits shared memory (Q + stages * (K + V)) and the consumer register budget. kNFull: kBlockN used
// when no window applies (full or causal attention) and s_k >= kNFullMinKeys; a longer key block
// amortizes the per-block softmax work (hd128 16k full: 4.4% fewer cycles under ncu; 1k full: 10%
// slower, run 4b; from 0 keys: -17% at 1k, no gain at 4k-16k, run 6). hd64 runs three consumer
// warpgroups (M 192: +5-12% over M 128, run 6); hd256 N 80 (FA3's): +1-7% over N 64 at base clock
// (run 59; run 6 on an H100 had found no gain).
// The RINGFA3_* macros select tile settings for A/B builds (scripts/build_csrc.py --define NAME=VALUE
// --lib PATH --only dtype:hd --no-bwd), timed beside the default by check_sm90.py --alt-lib.
#ifndef RINGFA3_HD64_M
#define RINGFA3_HD64_M 192
#endif
#ifndef RINGFA3_HD128_NFULL
#define RINGFA3_HD128_NFULL 176
#endif
#ifndef RINGFA3_HD128_NFULL_MIN_KEYS
#define RINGFA3_HD128_NFULL_MIN_KEYS 8192
#endif
#ifndef RINGFA3_HD256_N
#define RINGFA3_HD256_N 80
#endif
#ifndef RINGFA3_L2_BUDGET_MB
#define RINGFA3_L2_BUDGET_MB 16
#endif
#ifndef RINGFA3_CAUSAL_L2_BUDGET_MB
#define RINGFA3_CAUSAL_L2_BUDGET_MB 32
#endif
template <int kHeadDim> struct TileConfig;
template <> struct TileConfig<64>  { static constexpr int kM = RINGFA3_HD64_M, kN = 128, kNFull = 128, kStages = 3, kNFullMinKeys = 0; };
template <> struct TileConfig<128> { static constexpr int kM = 128, kN = 128, kNFull = RINGFA3_HD128_NFULL, kStages = 2;
                                     static constexpr int kNFullMinKeys = RINGFA3_HD128_NFULL_MIN_KEYS; };
template <> struct TileConfig<256> { static constexpr int kM = 128, kN = RINGFA3_HD256_N, kNFull = RINGFA3_HD256_N, kStages = 2, kNFullMinKeys = 0; };
// e4m3 (hd 128 and 256): one Q scale per query tile, one K scale per key block, so the prep kernels
// quantize by the blocks the launch will take (ringfa3_sm90_fp8_query_rows, _key_rows). hd128 takes 224-key
// blocks (FA3's e4m3 tile) from 4k keys: at base clock +6-9% at 8k-16k, +2-5% at 4k, but 5-8% slower
// at 1k (bench/NOTES-fp8.md, runs 97-99). At hd128 the K/V stages take half the smem of bf16's, so
// more fit (3 or 4: no faster, runs 1 and 97). RINGFA3_FP8_HD128_M / _N set hd128's query tile and
// key block for A/B builds; the prep quantizes by whatever they are (192 x 96, three consumer
// warpgroups: no faster, run 170).
#ifndef RINGFA3_FP8_HD128_STAGES
#define RINGFA3_FP8_HD128_STAGES 2
#endif
#ifndef RINGFA3_FP8_HD128_NFULL
#define RINGFA3_FP8_HD128_NFULL 224
#endif
#ifndef RINGFA3_FP8_HD128_M
#define RINGFA3_FP8_HD128_M 128
#endif
#ifndef RINGFA3_FP8_HD128_N
#define RINGFA3_FP8_HD128_N 128
#endif
#ifndef RINGFA3_FP8_HD128_NFULL_MIN_KEYS
#define RINGFA3_FP8_HD128_NFULL_MIN_KEYS 4096
#endif
template <int kHeadDim> struct Fp8TileConfig {
  static constexpr int kM = kHeadDim == 128 ? RINGFA3_FP8_HD128_M : 128;
  static constexpr int kN = kHeadDim == 128 ? RINGFA3_FP8_HD128_N : 128;
  static constexpr int kNFull = kHeadDim == 128 ? RINGFA3_FP8_HD128_NFULL : kN;
  static constexpr int kNFullMinKeys = RINGFA3_FP8_HD128_NFULL_MIN_KEYS;
  static constexpr int kStages = kHeadDim == 128 ? RINGFA3_FP8_HD128_STAGES : 2;
};

// Whether a dense launch takes Cfg's longer key block: no window (full or causal) and enough keys.
template <class Cfg>
constexpr bool takes_full_block(int s_k, int window_left, int window_right) {
  return Cfg::kNFull != Cfg::kN && window_left < 0 && window_right <= 0 && s_k >= Cfg::kNFullMinKeys;
}

// One entry per generated file (a library built with --only links stubs for the rest).
cudaError_t run_fwd_bf16_hd64(RingFa3FwdArgs const& a);
cudaError_t run_fwd_bf16_hd128(RingFa3FwdArgs const& a);
cudaError_t run_fwd_bf16_hd256(RingFa3FwdArgs const& a);
cudaError_t run_fwd_fp16_hd64(RingFa3FwdArgs const& a);
cudaError_t run_fwd_fp16_hd128(RingFa3FwdArgs const& a);
cudaError_t run_fwd_fp16_hd256(RingFa3FwdArgs const& a);
cudaError_t run_fwd_e4m3_hd128(RingFa3FwdArgs const& a);
cudaError_t run_fwd_e4m3_hd256(RingFa3FwdArgs const& a);

inline cudaError_t dispatch_fwd(RingFa3FwdArgs const& a) {
  bool bf16 = a.dtype == 0;
  if (a.dtype == 2) return a.d == 128 ? run_fwd_e4m3_hd128(a) : a.d == 256 ? run_fwd_e4m3_hd256(a) : cudaErrorNotSupported;
  if (a.dtype != 0 && a.dtype != 1) return cudaErrorNotSupported;
  switch (a.d) {
    case 64:  return bf16 ? run_fwd_bf16_hd64(a)  : run_fwd_fp16_hd64(a);
    case 128: return bf16 ? run_fwd_bf16_hd128(a) : run_fwd_fp16_hd128(a);
    case 256: return bf16 ? run_fwd_bf16_hd256(a) : run_fwd_fp16_hd256(a);
    default:  return cudaErrorNotSupported;
  }
}

}  // namespace ringfa3
