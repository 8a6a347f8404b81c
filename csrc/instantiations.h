// Tile shapes per head dim, and the (dtype, head_dim) dispatch over the generated instantiations
// (csrc/generated/*.cu, written by scripts/build_csrc.py; one translation unit each so they build
// in parallel).
#pragma once
#include <cuda_runtime.h>
#include <cutlass/numeric_types.h>
#include "fwd_args.h"

namespace ringfa3 {

// (kBlockM, kBlockN, kStages): Q tile of 128 rows = two consumer warpgroups; kBlockN and the stage
// count are what fits shared memory (Q + stages * (K + V)) and the consumer register budget.
template <int kHeadDim> struct TileConfig;
template <> struct TileConfig<64>  { static constexpr int kM = 128, kN = 128, kStages = 3; };
template <> struct TileConfig<128> { static constexpr int kM = 128, kN = 128, kStages = 2; };
template <> struct TileConfig<256> { static constexpr int kM = 128, kN = 64,  kStages = 2; };

// One entry per generated file (a library built with --only links stubs for the rest).
cudaError_t run_fwd_bf16_hd64(RingFa3FwdArgs const& a);
cudaError_t run_fwd_bf16_hd128(RingFa3FwdArgs const& a);
cudaError_t run_fwd_bf16_hd256(RingFa3FwdArgs const& a);
cudaError_t run_fwd_fp16_hd64(RingFa3FwdArgs const& a);
cudaError_t run_fwd_fp16_hd128(RingFa3FwdArgs const& a);
cudaError_t run_fwd_fp16_hd256(RingFa3FwdArgs const& a);

inline cudaError_t dispatch_fwd(RingFa3FwdArgs const& a) {
  bool bf16 = a.dtype == 0;
  if (a.dtype != 0 && a.dtype != 1) return cudaErrorNotSupported;
  switch (a.d) {
    case 64:  return bf16 ? run_fwd_bf16_hd64(a)  : run_fwd_fp16_hd64(a);
    case 128: return bf16 ? run_fwd_bf16_hd128(a) : run_fwd_fp16_hd128(a);
    case 256: return bf16 ? run_fwd_bf16_hd256(a) : run_fwd_fp16_hd256(a);
    default:  return cudaErrorNotSupported;
  }
}

}  // namespace ringfa3
