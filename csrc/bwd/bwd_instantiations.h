// Tile shapes per head dim of the backward, and the (dtype, head_dim) dispatch over the generated
// csrc/generated/bwd_*.cu files (head dims 64 and 128: BwdTraits; 256: BwdTraitsD256, 64 keys per
// CTA, dense only).
#pragma once
#include <cuda_runtime.h>
#include "bwd_args.h"

namespace ringfa3 {

// (kBlockM, kBlockN, kStages): 128 keys per CTA (64 per consumer warpgroup, dK + dV in registers),
// 64-row query blocks, Q/dO double-buffered.
constexpr int kBwdBlockM = 64, kBwdBlockN = 128;
template <int kHeadDim> struct BwdTileConfig;
template <> struct BwdTileConfig<64>  { static constexpr int kM = kBwdBlockM, kN = kBwdBlockN, kStages = 2; };
template <> struct BwdTileConfig<128> { static constexpr int kM = kBwdBlockM, kN = kBwdBlockN, kStages = 2; };

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
