// Backward outputs:
//   add_dq_bulk: this warpgroup's dQ partial of one (query head, query block) into the fp32
//                workspace by one bulk reduce-add from smem; deterministic mode adds in a fixed
//                order (key block ascending, then warpgroup), waiting on a per-query-block counter
//                spun on by one thread.
//   store_dkdv:  dK (times softmax_scale) and dV of the CTA's keys, input dtype or fp32, straight
//                from the accumulator registers.
#pragma once
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include "../epilogue.h"
#include "../pipeline.h"
#include "bwd_mask.h"
#include "bwd_params.h"

namespace ringfa3 {

__device__ __forceinline__ int ld_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Deterministic order: wait until the counter reaches `turn`. (A bounded spin with __nanosleep and
// __trap cost the hd128 consumers ~800 bytes of register spills in ptxas: plain spin instead.)
__device__ __forceinline__ void wait_turn(const int* sem, int turn) {
  while (ld_acquire(sem) != turn) {}
}

// The warpgroup's partial goes to smem in register order (float4 j of thread t at
// j * 512 + 4 t: conflict-free), then one thread reduce-adds the 16 KB into the workspace tile with a
// single cp.reduce.async.bulk; the tensor cores' next block need not wait for 32 atomics per thread.
template <class Tr, class Frag>
__device__ void add_dq_bulk(RingFa3BwdArgs const& a, BwdParams<Tr> const& p, Frag const& dq, float* sdq,
                            BwdMask<Tr::kBlockM, Tr::kBlockN> const& mask, int bi, int head, int m, int wg) {
  constexpr int kM = Tr::kBlockM, kD = Tr::kHeadDim, V = int(cute::size(Frag{}));
  static_assert(V * 128 == Tr::kDqPerWG && V % 4 == 0, "one warpgroup's dQ partial");
  int t = threadIdx.x % 128;
  if (t == 0) asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");   // previous reduce read it
  asm volatile("bar.sync %0, 128;" :: "r"(2 + wg) : "memory");
#pragma unroll
  for (int j = 0; j < V / 4; ++j)
    reinterpret_cast<float4*>(sdq)[j * 128 + t] = make_float4(dq(4 * j), dq(4 * j + 1), dq(4 * j + 2), dq(4 * j + 3));
  cutlass::arch::fence_view_async_shared();
  asm volatile("bar.sync %0, 128;" :: "r"(2 + wg) : "memory");
  if (t != 0) return;
  size_t tile = ((size_t(bi) * a.h + head) * p.n_m_blocks + m) * size_t(kM * kD);
  float* dst = a.dq_accum + tile + (Tr::kSplitD ? wg * Tr::kDqPerWG : 0);
  int* sem = nullptr;
  if (a.deterministic) {
    sem = a.semaphore + 2 * ((size_t(bi) * a.h + head) * p.n_m_blocks + m) + (Tr::kSplitD ? wg : 0);
    int turn = Tr::kSplitD ? mask.rank_in(m) : 2 * mask.rank_in(m) + wg;
    wait_turn(sem, turn);
    asm volatile("fence.proxy.async.global;" ::: "memory");
  }
  uint32_t src = static_cast<uint32_t>(__cvta_generic_to_shared(sdq));
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;"
               :: "l"(dst), "r"(src), "r"(Tr::kDqPerWG * 4) : "memory");
  asm volatile("cp.async.bulk.commit_group;" ::: "memory");
  if (a.deterministic) {
    asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");   // the sums are written
    asm volatile("fence.proxy.async.global;" ::: "memory");
    __threadfence();
    atomicAdd(sem, 1);
  }
}

template <class Tr, class Frag, class Coords>
__device__ void store_dkdv(RingFa3BwdArgs const& a, Frag& dk, Frag const& dv, Coords const& c,
                           BwdMask<Tr::kBlockM, Tr::kBlockN> const& mask, int bi, int hk) {
  using T = typename Tr::T;
  constexpr int N = int(cute::size(Frag{}));
#pragma unroll
  for (int i = 0; i < N; i += 2) {
    int key = mask.key_lo + int(cute::get<0>(c(i))), col = int(cute::get<1>(c(i)));
    if (key >= a.s_k) continue;
    float k0 = dk(i) * a.softmax_scale, k1 = dk(i + 1) * a.softmax_scale;
    if (a.grads_fp32) {
      float* pk = static_cast<float*>(a.dk) + bi * a.dk_stride[0] + key * a.dk_stride[1] + hk * a.dk_stride[2] + col;
      float* pv = static_cast<float*>(a.dv) + bi * a.dv_stride[0] + key * a.dv_stride[1] + hk * a.dv_stride[2] + col;
      *reinterpret_cast<float2*>(pk) = make_float2(k0, k1);
      *reinterpret_cast<float2*>(pv) = make_float2(dv(i), dv(i + 1));
    } else {
      T* pk = static_cast<T*>(a.dk) + bi * a.dk_stride[0] + key * a.dk_stride[1] + hk * a.dk_stride[2] + col;
      T* pv = static_cast<T*>(a.dv) + bi * a.dv_stride[0] + key * a.dv_stride[1] + hk * a.dv_stride[2] + col;
      *reinterpret_cast<uint32_t*>(pk) = pack2<T>(k0, k1);
      *reinterpret_cast<uint32_t*>(pv) = pack2<T>(dv(i), dv(i + 1));
    }
  }
}

}  // namespace ringfa3
