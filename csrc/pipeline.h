// Minimal mbarrier ring: stage index + phase bit. "full" barriers complete when TMA has landed the
// bytes of a stage; "empty" barriers complete when every consumer warp has finished reading it.
#pragma once
#include <cutlass/arch/barrier.h>

namespace ringfa3 {

using FullBarrier = cutlass::arch::ClusterTransactionBarrier;
using EmptyBarrier = cutlass::arch::ClusterBarrier;

template <int kStages>
struct PipeState {
  int index = 0;
  uint32_t phase = 0;
  __device__ void advance() {
    if (++index == kStages) { index = 0; phase ^= 1; }
  }
};

// A consumer warp marks a stage free: one arrive per warp (barrier count = consumer warps).
__device__ __forceinline__ void warp_release(uint64_t* bar) {
  if (threadIdx.x % 32 == 0) EmptyBarrier::arrive(bar);
}

// The same, ordered after `after` has been computed. ptxas keeps mbarrier arrives and WGMMA waits in
// program order but otherwise schedules a wait as early as its block allows, which would put a P V
// wait ahead of the softmax meant to run under that GEMM. An arrive whose condition reads the softmax
// result cannot move above it, and so neither can the wait after it. `nonzero` is a runtime value
// that is never 0 (a sequence length), so the condition always holds yet cannot be folded away.
__device__ __forceinline__ void warp_release_after(uint64_t* bar, float after, int nonzero) {
  if ((__float_as_uint(after) | uint32_t(nonzero)) != 0u) warp_release(bar);
}

}  // namespace ringfa3
