// The kernel: warpgroup 0 is the TMA producer (registers given away), the others are consumers
// (registers taken), so the consumers can hold the O and S accumulators without spilling.
#pragma once
#include <cutlass/arch/reg_reconfig.h>
#include <cute/arch/cluster_sm90.hpp>
#include "consumer.h"
#include "producer.h"

namespace ringfa3 {

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, 1) fwd_kernel(CUTE_GRID_CONSTANT FwdParams<Tr> const p) {
  extern __shared__ __align__(1024) unsigned char smem_buf[];
  auto& ss = *reinterpret_cast<typename Tr::SharedStorage*>(smem_buf);

  // Merging (a ring step, launched with programmatic stream serialization, fwd_launch.h): the next
  // step may be scheduled at once, so its CTAs take the SMs this launch's tail leaves idle and run
  // their key loops there. Each waits for this launch to finish before its merge touches out_acc and
  // lse_acc (consumer.h); its Q/K/V are never what a merge writes.
  if constexpr (Tr::kMerge) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  if (threadIdx.x == 0) {
    FullBarrier::init(&ss.q_full, 1);
    EmptyBarrier::init(&ss.q_empty, Tr::kConsumerWarps);
    for (int i = 0; i < Tr::kStages; ++i) {
      FullBarrier::init(&ss.k_full[i], 1);
      FullBarrier::init(&ss.v_full[i], 1);
      EmptyBarrier::init(&ss.k_empty[i], Tr::kConsumerWarps);
      EmptyBarrier::init(&ss.v_empty[i], Tr::kConsumerWarps);
      if constexpr (Tr::kClusterM > 1) {   // one arrive per CTA of the cluster (producer.h)
        EmptyBarrier::init(&ss.pair.k[i], Tr::kClusterM);
        EmptyBarrier::init(&ss.pair.v[i], Tr::kClusterM);
      }
    }
    if constexpr (Tr::kClusterM > 1) {
      for (int i = 0; i < 2; ++i) {
        FullBarrier::init(&ss.pair.unit_full[i], 1);
        EmptyBarrier::init(&ss.pair.unit_empty[i], 1);
      }
    }
    for (int i = 0; i < 2; ++i) {
      EmptyBarrier::init(&ss.tile_full[i], 1);
      EmptyBarrier::init(&ss.tile_empty[i], Tr::kConsumerWarps);
    }
    EmptyBarrier::init(&ss.o_free, Tr::kConsumerWG);
    cutlass::arch::fence_barrier_init();
  }
  // In a cluster the peer arrives on the pair barriers and multicasts into this smem: its barriers must be
  // initialized first. (Neither CTA may exit while the other can still do either: produce() ends by
  // waiting until both CTAs have released every stage.)
  if constexpr (Tr::kClusterM > 1) {
    cute::cluster_arrive_relaxed();
    cute::cluster_wait();
  } else {
    __syncthreads();
  }

  if (threadIdx.x / 128 == 0) {
    cutlass::arch::warpgroup_reg_dealloc<Tr::kProducerRegs>();
    if (threadIdx.x / 32 == 0 && cute::elect_one_sync()) {
      cute::prefetch_tma_descriptor(p.tma_q.get_tma_descriptor());
      cute::prefetch_tma_descriptor(p.tma_k.get_tma_descriptor());
      cute::prefetch_tma_descriptor(p.tma_v.get_tma_descriptor());
      produce<Tr>(p, ss);
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Tr::kConsumerRegs>();
    consume<Tr>(p, ss, threadIdx.x - 128);
  }
}

}  // namespace ringfa3
