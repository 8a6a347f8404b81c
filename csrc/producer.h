// TMA producer: one elected thread of warpgroup 0 walks the same tiles and key blocks as the
// consumers and keeps the Q buffer and the K/V stages filled ahead of them.
#pragma once
#include "kernel_traits.h"
#include "mask.h"
#include "params.h"
#include "pipeline.h"
#include "tile_scheduler.h"

namespace ringfa3 {

template <class Tr>
__device__ void produce(FwdParams<Tr> const& p, typename Tr::SharedStorage& ss) {
  using namespace cute;
  constexpr int kM = Tr::kBlockM, kN = Tr::kBlockN, kD = Tr::kHeadDim;
  RingFa3FwdArgs const& a = p.a;
  Tensor mQ = p.tma_q.get_tma_tensor(make_shape(a.s_q, a.d, a.h, a.b));      // (s_q, d, h, b)
  Tensor mK = p.tma_k.get_tma_tensor(make_shape(a.s_k, a.d, a.h_kv, a.b));   // (s_k, d, h_kv, b)
  Tensor mV = p.tma_v.get_tma_tensor(make_shape(a.d, a.s_k, a.h_kv, a.b));   // (d, s_k, h_kv, b)
  Tensor sQ = make_tensor(make_smem_ptr(ss.q), typename Tr::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(ss.k), typename Tr::SmemLayoutK{});
  Tensor sV = make_tensor(make_smem_ptr(ss.v), typename Tr::SmemLayoutV{});

  TileScheduler sched{p.n_tiles, p.n_m_blocks, a.h, p.heads_per_chunk, p.tile_counter};
  TileRing ring{ss.tile_id, ss.tile_full, ss.tile_empty};
  PipeState<Tr::kStages> ks, vs;   // K and V rings advance in step (same block sequence)
  int q_round = 0;
  for (int t = blockIdx.x;;) {
    ring.publish(t);
    if (!sched.valid(t)) break;
    int t_next = sched.template draw_next<Tr::kDynamic>(t);   // drawn early: atomic latency hides
    auto tile = sched.decode(t);
    BlockMask<kM, kN> mask(tile.m_block, a.s_q, a.s_k, p.diag_offset, p.win_left, p.win_right);
    int nb = mask.n_begin(), ne = mask.n_end();
    t = t_next;
    if (ne <= nb) continue;   // consumers write the empty result without any load
    int hk = tile.head / p.group;

    Tensor gQ = local_tile(mQ(_, _, tile.head, tile.batch), Shape<Int<kM>, Int<kD>>{},
                           make_coord(tile.m_block, _0{}));                      // (kM, d)
    Tensor gK = local_tile(mK(_, _, hk, tile.batch), Shape<Int<kN>, Int<kD>>{},
                           make_coord(_, _0{}));                                 // (kN, d, n)
    Tensor gV = local_tile(mV(_, _, hk, tile.batch), Shape<Int<kD>, Int<kN>>{},
                           make_coord(_0{}, _));                                 // (d, kN, n)
    // (global TMA coords, smem) pairs: Q (TMA), K and V (TMA, block) / (TMA, stage)
    auto tQ = tma_partition(p.tma_q, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sQ), group_modes<0, 2>(gQ));
    auto tK = tma_partition(p.tma_k, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sK), group_modes<0, 2>(gK));
    auto tV = tma_partition(p.tma_v, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sV), group_modes<0, 2>(gV));

    auto load_k = [&](int n) {
      EmptyBarrier::wait(&ss.k_empty[ks.index], ks.phase ^ 1);
      FullBarrier::arrive_and_expect_tx(&ss.k_full[ks.index], Tr::kBytesKV);
      copy(p.tma_k.with(ss.k_full[ks.index]), get<0>(tK)(_, n), get<1>(tK)(_, ks.index));
      ks.advance();
    };
    auto load_v = [&](int n) {
      EmptyBarrier::wait(&ss.v_empty[vs.index], vs.phase ^ 1);
      FullBarrier::arrive_and_expect_tx(&ss.v_full[vs.index], Tr::kBytesKV);
      copy(p.tma_v.with(ss.v_full[vs.index]), get<0>(tV)(_, n), get<1>(tV)(_, vs.index));
      vs.advance();
    };

    // Q of the previous tile must be fully consumed (its last QK^T done) before it is replaced.
    EmptyBarrier::wait(&ss.q_empty, (q_round & 1) ^ 1);
    FullBarrier::arrive_and_expect_tx(&ss.q_full, Tr::kBytesQ);
    copy(p.tma_q.with(ss.q_full), get<0>(tQ), get<1>(tQ));
    ++q_round;

    if constexpr (Tr::kLagV) {
      // Same order as the overlapped consumers use them: K(n) with V(n+1), since each consumer
      // iteration runs Q K(n)^T next to P(n+1) V(n+1); V then never holds up the next K load.
      load_k(ne - 1);
      for (int n = ne - 2; n >= nb; --n) {
        load_k(n);
        load_v(n + 1);
      }
      load_v(nb);
    } else {
      // K(n), V(n): the order measured in runs 1-3 (the single producer thread can block on
      // V(n)'s free slot before it issues K(n-1)).
      for (int n = ne - 1; n >= nb; --n) {
        load_k(n);
        load_v(n);
      }
    }
  }
  sched.template finish<Tr::kDynamic>();
}

}  // namespace ringfa3
