// Backward outputs straight from the accumulator registers:
//   add_dq:     this warpgroup's dQ partial of one (query head, query block) into the fp32 workspace
//               with vector atomics; deterministic mode adds in a fixed order (key block ascending,
//               then warpgroup), waiting on a per-query-block counter spun on by one thread.
//   store_dkdv: dK (times softmax_scale) and dV of the CTA's keys, input dtype or fp32.
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

template <class Tr, class Frag, class Coords>
__device__ void add_dq(RingFa3BwdArgs const& a, BwdParams<Tr> const& p, Frag const& dq, Coords const& c,
                       BwdMask<Tr::kBlockM, Tr::kBlockN> const& mask, int bi, int head, int m, int wg) {
  constexpr int kM = Tr::kBlockM, kD = Tr::kHeadDim;
  size_t row0 = (size_t(bi) * a.h + head) * size_t(p.n_m_blocks * kM) + size_t(m) * kM;
  float* base = a.dq_accum + row0 * kD;
  int* sem = nullptr;
  int t = threadIdx.x % 128;
  if (a.deterministic) {
    // Split over d: the warpgroups own disjoint columns, one counter each. Split over keys: both add
    // to every column, so they share one counter and take turns (warpgroup 0 first).
    sem = a.semaphore + 2 * ((size_t(bi) * a.h + head) * p.n_m_blocks + m) + (Tr::kSplitD ? wg : 0);
    if (t == 0) {
      int turn = Tr::kSplitD ? mask.rank_in(m) : 2 * mask.rank_in(m) + wg;
      wait_turn(sem, turn);
    }
    asm volatile("bar.sync %0, 128;" :: "r"(2 + wg) : "memory");
  }
#pragma unroll
  for (int i = 0; i < int(cute::size(dq)); i += 2) {   // values i, i+1: adjacent columns of one row
    int row = int(cute::get<0>(c(i))), col = int(cute::get<1>(c(i)));
    atomicAdd(reinterpret_cast<float2*>(base + row * kD + col), make_float2(dq(i), dq(i + 1)));
  }
  if (a.deterministic) {
    asm volatile("bar.sync %0, 128;" :: "r"(2 + wg) : "memory");
    if (t == 0) {
      __threadfence();
      atomicAdd(sem, 1);
    }
  }
}

// Bulk variant: the warpgroup's partial goes to smem in register order (float4 j of thread t at
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

// kDqWriter (not yet run on a GPU): the consumer side. Wait until the writer has read the previous
// partial out of this warpgroup's buffer, store this one (register order), signal it.
template <class Tr, class Frag>
__device__ __forceinline__ void hand_dq_to_writer(Frag const& dq, float* sdq, uint64_t* full, uint64_t* empty,
                                                  int n_handed) {
  constexpr int V = int(cute::size(Frag{}));
  int t = threadIdx.x % 128;
  EmptyBarrier::wait(empty, (n_handed & 1) ^ 1);
#pragma unroll
  for (int j = 0; j < V / 4; ++j)
    reinterpret_cast<float4*>(sdq)[j * 128 + t] = make_float4(dq(4 * j), dq(4 * j + 1), dq(4 * j + 2), dq(4 * j + 3));
  cutlass::arch::fence_view_async_shared();
  EmptyBarrier::arrive(full);
}

// kDqWriter: the writer side, one thread of producer warp 1. Walks the consumers' (head, query block)
// sequence; per block and warpgroup: wait for the partial, (deterministic: wait for the turn), one
// bulk reduce-add, free the buffer once read, (deterministic: once written, pass the turn on).
template <class Tr>
__device__ void bwd_write_dq(BwdParams<Tr> const& p, typename Tr::SharedStorage& ss, int n_block, int hk, int bi) {
  constexpr int kM = Tr::kBlockM, kN = Tr::kBlockN, kD = Tr::kHeadDim;
  RingFa3BwdArgs const& a = p.a;
  BwdMask<kM, kN> mask(n_block, a.s_q, a.s_k, p.diag_offset, p.win_left, p.win_right);
  int mb = mask.m_begin(), me = mask.m_end();
  bool det = a.deterministic;
  uint32_t src0 = static_cast<uint32_t>(__cvta_generic_to_shared(ss.dq));
  int n = 0;
  for (int g = 0; g < p.group; ++g) {
    size_t hb = size_t(bi) * a.h + hk * p.group + g;   // (batch, query head) row of the workspaces
    float* tile = a.dq_accum + (hb * p.n_m_blocks + mb) * size_t(kM * kD);
    int* sem_m = det ? a.semaphore + 2 * (hb * p.n_m_blocks + mb) : nullptr;
    for (int m = mb; m < me; ++m, ++n, tile += kM * kD, sem_m += 2) {
      CUTE_UNROLL
      for (int w = 0; w < Tr::kConsumerWG; ++w) {
        EmptyBarrier::wait(&ss.dq_full[w], n & 1);
        int* sem = sem_m + (Tr::kSplitD ? w : 0);
        if (det) {
          wait_turn(sem, Tr::kSplitD ? mask.rank_in(m) : 2 * mask.rank_in(m) + w);
          asm volatile("fence.proxy.async.global;" ::: "memory");
        }
        float* dst = tile + (Tr::kSplitD ? w * Tr::kDqPerWG : 0);
        uint32_t src = src0 + w * Tr::kDqPerWG * 4;
        asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;"
                     :: "l"(dst), "r"(src), "r"(Tr::kDqPerWG * 4) : "memory");
        asm volatile("cp.async.bulk.commit_group;" ::: "memory");
        if (det) {
          asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
          asm volatile("fence.proxy.async.global;" ::: "memory");
          __threadfence();
          atomicAdd(sem, 1);
        } else {
          asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
        }
        EmptyBarrier::arrive(&ss.dq_empty[w]);
      }
    }
  }
  asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
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
