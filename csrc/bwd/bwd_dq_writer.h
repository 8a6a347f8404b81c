// The dQ writers: one elected thread per consumer warpgroup, in the producer warpgroup's warps 1-2.
// For every (query head, query block) the CTA visits, a writer takes its warpgroup's dQ partial from
// the smem slot and reduce-adds it into the fp32 workspace with one cp.reduce.async.bulk.
// Deterministic mode adds in a fixed order (of the key blocks, BwdMask::rank_in; per
// warpgroup's half of the head dim, or warpgroup 0 before 1 where both cover it): before its add the
// writer spins on the query block's counter until the adds ahead of this one have landed, and bumps
// it after. Only the writers wait; the consumers run ahead by the kDqBufs slots. One writer per
// warpgroup, so that one warpgroup's wait does not hold the other's slots (run 10's ncu: a single
// writer was busy 84% of the deterministic kernel's time and the consumers waited on its slots in 39%
// of their samples).
#pragma once
#include <cutlass/arch/barrier.h>
#include "../pipeline.h"
#include "bwd_mask.h"
#include "bwd_params.h"
#include "bwd_split.h"
#include "bwd_traits.h"

namespace ringfa3 {

__device__ __forceinline__ int ld_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// *p += v, ordered after this thread's earlier memory operations (release at GPU scope).
__device__ __forceinline__ void red_release(int* p, int v) {
  asm volatile("red.release.gpu.global.add.s32 [%0], %1;" :: "l"(p), "r"(v) : "memory");
}

// dst[0, bytes / 4) += the floats at shared address src, one bulk reduction (committed as a group).
__device__ __forceinline__ void reduce_add_f32(float* dst, uint32_t src, int bytes) {
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;"
               :: "l"(dst), "r"(src), "r"(bytes) : "memory");
  asm volatile("cp.async.bulk.commit_group;" ::: "memory");
}

// The slot goes back to the consumer once the bulk reductions have read it.
template <class SS, class Slot>
__device__ __forceinline__ void release_slot(SS& ss, int wg, Slot const& slot) {
  asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
  EmptyBarrier::arrive(&ss.dq_empty[slot.index][wg]);
}

template <class Tr>
__device__ void bwd_write_dq(BwdParams<Tr> const& p, typename Tr::SharedStorage& ss, int wg, int n_block, int hk,
                             int bi, BwdPiece const& pc) {
  constexpr int kM = Tr::kBlockM, kD = Tr::kHeadDim;
  RingFa3BwdArgs const& a = p.a;
  Extent e = bwd_extent(p, bi);
  auto mask = bwd_block_mask(p, e, n_block);
  int mb = mask.m_begin(), me = mask.m_end();
  piece_blocks(pc, mb, me);
  PipeState<Tr::kDqBufs> slot;
  for (int g = 0; g < p.group; ++g) {
    int head = hk * p.group + g;
    for (int m = mb; m < me; ++m) {
      size_t tile = ws_tile(p, e, bi, head, m);
      EmptyBarrier::wait(&ss.dq_full[slot.index][wg], slot.phase);
      float* dst = a.dq_accum + tile * size_t(kM * kD) + (Tr::kSplitD ? wg * Tr::kDqPerWG : 0);
      uint32_t src = static_cast<uint32_t>(__cvta_generic_to_shared(ss.dq[slot.index][wg]));
      if (a.deterministic) {
        int* sem = a.semaphore + kBwdSemsPerTile * tile + (Tr::kSplitD ? wg : 0);
        int rank = mask.rank_in(m, p.det_high_first);
        int turn = Tr::kSplitD ? rank : 2 * rank + wg;
        // Plain spin: a bounded one with __nanosleep and __trap cost the hd128 consumers register
        // spills when it lived in their code.
        while (ld_acquire(sem) != turn) {}
        asm volatile("fence.proxy.async.global;" ::: "memory");
        reduce_add_f32(dst, src, Tr::kDqPerWG * 4);
        release_slot(ss, wg, slot);
        asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");   // the sums are written
        asm volatile("fence.proxy.async.global;" ::: "memory");
        red_release(sem, 1);   // a full fence and an atomic here: 2.5-5% slower (run 48)
      } else {
        reduce_add_f32(dst, src, Tr::kDqPerWG * 4);
        release_slot(ss, wg, slot);
      }
      slot.advance();
    }
  }
  asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
}

}  // namespace ringfa3
