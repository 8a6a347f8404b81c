// The backward main kernel: one CTA per (key block, kv head, batch entry or varlen segment); warpgroup
// 0 holds the TMA producer (warp 0) and one dQ writer per consumer warpgroup (warps 1-2), registers
// given away; warpgroups 1-2 are the consumers (registers taken for dK, dV, S, dP).
// Block order (1-D grid): groups of key blocks, then runs of launch_heads (kv head, batch) pairs, key
// block next, the pair fastest (bwd_launch.h picks the sizes):
//   atomic dQ, no mask:  one group, runs of one pair: key block fastest, so the resident CTAs share
//                     one head's Q/dO in L2.
//   atomic dQ, a mask:   one group, runs of as many pairs as an L2-sized share of Q/dO/dQ holds: the
//                     longest CTAs (lowest key blocks under a causal mask) of a run start first across
//                     its heads, as FA3's LPT order. Key block fastest left the last head's longest CTAs
//                     running alone at the end (run 147, causal at base clock: +3.5-4.2% at 2k-8k,
//                     level at 16k; per clock against FA3's main kernel 0.94 -> 0.99 at 4k and 8k).
//   deterministic dQ: key blocks in the first-to-last order of the dQ order (BwdMask::rank_in), so
//                     that a CTA waits only on CTAs launched earlier: in groups of kBwdDetGroup,
//                     (kv head, batch) next, key block fastest inside a group. With key block
//                     fastest, resident CTA n could add to a query block only after its neighbour
//                     had, a chain as long as the head's key blocks (run 1: 0.66x full, 0.40x causal
//                     of the atomic speed); groups keep the chain short and give a head several CTAs
//                     per wave, where (kv head, batch) fastest gave ~2 at 4k (run 13, 4k full: 357 ->
//                     460 TF/s, 0.71 -> 0.92 of the atomic speed). Groups of 8 against 4 (run 32):
//                     4k causal 0.89 -> 0.92, 8k causal 0.89 -> 0.93 of the atomic speed; groups of
//                     2 were slower. Inside a group, runs of launch_heads pairs interleave: a head's
//                     next key block comes launch_heads CTAs later, so that it starts about
//                     kBwdDetLag query blocks behind its predecessor instead of level with it and
//                     waiting at every add (run 142, base clock, deterministic 1k full 326 -> 362
//                     TF/s; from 16k queries launch_heads is 1).
//   varlen:           the host's tile list (longest first; in deterministic mode a segment's key
//                     blocks highest first), kv head fastest: with segments in the grid's slowest
//                     place, a long last segment ran alone after all others (long-tail document
//                     ring, runs 10 -> 11: 34.3 -> 29.1 ms).
#pragma once
#include <cutlass/arch/reg_reconfig.h>
#include <cute/arch/cluster_sm90.hpp>
#include "bwd_consumer.h"
#include "bwd_consumer_d256.h"
#include "bwd_dq_writer.h"
#include "bwd_producer.h"

namespace ringfa3 {

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, 1) bwd_kernel(CUTE_GRID_CONSTANT BwdParams<Tr> const p) {
  extern __shared__ __align__(1024) unsigned char smem_buf[];
  auto& ss = *reinterpret_cast<typename Tr::SharedStorage*>(smem_buf);
  int n_block, hk, bi;
  cta_trace(p.trace, blockIdx.x, kTraceStart);
  int lin = blockIdx.x, hb = p.a.h_kv * p.a.b;
  BwdPiece pc;
  if (lin >= p.split_from) {   // a piece of one of the last tiles (bwd_split.h), pieces of a tile together
    int j = lin - p.split_from;
    pc = BwdPiece{j % p.split_pieces, p.split_pieces, j / p.split_pieces};
    lin = p.split_from + pc.slot;
  }
  if constexpr (Tr::kVarlen) {
    int const* tile = p.a.varlen_tiles + 2 * (lin / p.a.h_kv);
    bi = tile[0];
    n_block = tile[1];
    hk = lin % p.a.h_kv;
  } else {   // groups of key blocks; runs of launch_heads (kv head, batch) pairs; key block; pair in the run
    int group = p.a.deterministic ? kBwdDetGroup : p.n_n_blocks;
    int g = lin / (hb * group), r = lin - g * group * hb;
    int size = min(group, p.n_n_blocks - g * group);
    int run = r / (size * p.launch_heads), q = r - run * size * p.launch_heads;
    int width = min(p.launch_heads, hb - run * p.launch_heads);
    n_block = g * group + q / width;   // deterministic: counted from the first key block of the dQ order
    if (p.a.deterministic && p.det_high_first) n_block = p.n_n_blocks - 1 - n_block;
    int hbi = run * p.launch_heads + q % width;
    hk = hbi % p.a.h_kv;
    bi = hbi / p.a.h_kv;
  }
  if (threadIdx.x == 0) {
    FullBarrier::init(&ss.kv_full, 1);
    for (int i = 0; i < Tr::kStages; ++i) {
      FullBarrier::init(&ss.q_full[i], 1);
      EmptyBarrier::init(&ss.q_empty[i], Tr::kConsumerWarps);
    }
    for (int i = 0; i < Tr::kDqBufs; ++i)
      for (int w = 0; w < Tr::kConsumerWG; ++w) {
        EmptyBarrier::init(&ss.dq_full[i][w], 4);   // the warpgroup's four warps
        EmptyBarrier::init(&ss.dq_empty[i][w], 1);  // the writer
      }
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();

  if (threadIdx.x / 128 == 0) {
    cutlass::arch::warpgroup_reg_dealloc<Tr::kProducerRegs>();
    int warp = threadIdx.x / 32;   // whole warps into each branch: elect_one_sync needs all 32 lanes
    if (warp == 0) {
      if (cute::elect_one_sync()) {
        cute::prefetch_tma_descriptor(p.tma_q.get_tma_descriptor());
        cute::prefetch_tma_descriptor(p.tma_do.get_tma_descriptor());
        cute::prefetch_tma_descriptor(p.tma_k.get_tma_descriptor());
        cute::prefetch_tma_descriptor(p.tma_v.get_tma_descriptor());
        bwd_produce<Tr>(p, ss, n_block, hk, bi, pc);
      }
    } else if (warp <= Tr::kConsumerWG) {
      if (cute::elect_one_sync()) bwd_write_dq<Tr>(p, ss, warp - 1, n_block, hk, bi, pc);
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Tr::kConsumerRegs>();
    if constexpr (Tr::kRoleSplit) bwd_consume_d256<Tr>(p, ss, threadIdx.x - 128, n_block, hk, bi, pc);
    else bwd_consume<Tr>(p, ss, threadIdx.x - 128, n_block, hk, bi, pc);
    cta_trace(p.trace, blockIdx.x, kTraceEnd);
  }
}

}  // namespace ringfa3
