// Warpgroup primitives shared by the forward and backward consumers: one asynchronous WGMMA over all
// k-steps, and named barriers.
#pragma once
#include <cute/arch/mma_sm90_gmma.hpp>
#include <cute/tensor.hpp>

namespace ringfa3 {

// Issue one warpgroup GEMM over all k-steps of the operands, asynchronously (wait separately).
// kARegs: A is a register fragment (needs its own fence), else A is an smem descriptor.
template <bool kZeroInit, bool kARegs, class Mma, class TA, class TB, class TC>
__device__ __forceinline__ void issue_gemm(Mma& mma, TA const& a, TB const& b, TC& c) {
  using namespace cute;
  warpgroup_fence_operand(c);
  if constexpr (kARegs) warpgroup_fence_operand(const_cast<TA&>(a));
  warpgroup_arrive();
  if constexpr (kZeroInit) mma.accumulate_ = GMMA::ScaleOut::Zero;
  CUTE_UNROLL
  for (int k = 0; k < size<2>(a); ++k) {
    cute::gemm(mma, a(_, _, k), b(_, _, k), c);
    mma.accumulate_ = GMMA::ScaleOut::One;
  }
  warpgroup_commit_batch();
  warpgroup_fence_operand(c);
  if constexpr (kARegs) warpgroup_fence_operand(const_cast<TA&>(a));
}

// Named barrier `id` (0 is __syncthreads) over `n` threads: wait for all of them, or only arrive (the
// side that hands data over; its earlier stores are ordered before the waiters' later loads).
__device__ __forceinline__ void named_sync(int id, int n) { asm volatile("bar.sync %0, %1;" :: "r"(id), "r"(n) : "memory"); }
__device__ __forceinline__ void named_arrive(int id, int n) { asm volatile("bar.arrive %0, %1;" :: "r"(id), "r"(n) : "memory"); }

// Whether `pred` holds in any thread of the `n` that reach named barrier `id` (a barrier: all of them wait).
__device__ __forceinline__ bool any_sync(int id, int n, bool pred) {
  int any;
  asm volatile("{\n .reg .pred p, q;\n setp.ne.u32 p, %1, 0;\n barrier.red.or.pred q, %2, %3, p;\n selp.u32 %0, 1, 0, q;\n}"
               : "=r"(any) : "r"(int(pred)), "r"(id), "r"(n) : "memory");
  return any;
}

}  // namespace ringfa3
