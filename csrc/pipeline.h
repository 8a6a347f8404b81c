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

}  // namespace ringfa3
