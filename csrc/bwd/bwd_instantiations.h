// Tile shapes per head dim of the backward, and the (dtype, head_dim) dispatch over the generated
// csrc/generated/bwd_*.cu files (head dims 64 and 128: BwdTraits; 256: BwdTraitsD256, 64 keys per
// CTA, dense only).
#pragma once
#include <cuda_runtime.h>
#include "bwd_args.h"

namespace ringfa3 {

// (kBlockM, kBlockN, kStages): 128 keys per CTA (64 per consumer warpgroup, dK + dV in registers),
// 64-row query blocks, Q/dO double-buffered. kMFull: the query block of a dense call with no mask
// and its own workspace (hd128: 80 rows, FA3's choice, with dQ transposed: BwdTraits::kDqT; the
// define is an A/B knob, 64 turns it off).
constexpr int kBwdBlockM = 64, kBwdBlockN = 128;
#ifndef RINGFA3_BWD_HD128_FULL_M
#define RINGFA3_BWD_HD128_FULL_M 80
#endif
template <int kHeadDim> struct BwdTileConfig;
template <> struct BwdTileConfig<64>  { static constexpr int kM = kBwdBlockM, kMFull = kM, kN = kBwdBlockN, kStages = 2; };
template <> struct BwdTileConfig<128> {
  static constexpr int kM = kBwdBlockM, kMFull = RINGFA3_BWD_HD128_FULL_M, kN = kBwdBlockN, kStages = 2;
};

// A dense call with neither window side bounded (causal bounds the right one) and its own workspace (a
// shared one, RingFa3BwdArgs::ws_rows, is laid out in kBwdBlockM tiles): it may take kMFull-row query
// blocks (below) and the tail split (bwd_split.h).
inline bool bwd_unmasked_own_workspace(int window_left, int window_right, int ws_rows) {
  return window_left < 0 && window_right < 0 && ws_rows == 0;
}

// The query block of a dense call: kMFull for an unmasked call with its own workspace, else kBwdBlockM.
inline int bwd_dense_block_m(int head_dim, int window_left, int window_right, int ws_rows) {
  bool full = bwd_unmasked_own_workspace(window_left, window_right, ws_rows);
  return head_dim == 128 && full ? BwdTileConfig<128>::kMFull : kBwdBlockM;
}
inline int bwd_dense_block_m(RingFa3BwdArgs const& a) {
  return bwd_dense_block_m(a.d, a.window_left, a.window_right, a.ws_rows);
}

cudaError_t run_bwd_bf16_hd64(RingFa3BwdArgs const& a);
cudaError_t run_bwd_bf16_hd128(RingFa3BwdArgs const& a);
cudaError_t run_bwd_fp16_hd64(RingFa3BwdArgs const& a);
cudaError_t run_bwd_fp16_hd128(RingFa3BwdArgs const& a);
cudaError_t run_bwd_bf16_hd256(RingFa3BwdArgs const& a);
cudaError_t run_bwd_fp16_hd256(RingFa3BwdArgs const& a);

inline cudaError_t dispatch_bwd(RingFa3BwdArgs const& a) {
  bool bf16 = a.dtype == 0;
  if (a.dtype != 0 && a.dtype != 1) return cudaErrorNotSupported;
  switch (a.d) {
    case 64:  return bf16 ? run_bwd_bf16_hd64(a) : run_bwd_fp16_hd64(a);
    case 128: return bf16 ? run_bwd_bf16_hd128(a) : run_bwd_fp16_hd128(a);
    case 256: return bf16 ? run_bwd_bf16_hd256(a) : run_bwd_fp16_hd256(a);
    default:  return cudaErrorNotSupported;
  }
}

}  // namespace ringfa3
