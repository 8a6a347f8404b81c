// TMA producer: one elected thread of warpgroup 0 walks the same tiles and key blocks as the
// consumers and keeps the Q buffer and the K/V stages filled ahead of them.
#pragma once
#include "kernel_traits.h"
#include "mask.h"
#include "params.h"
#include "pipeline.h"
#include "seq_slice.h"
#include "tile_scheduler.h"

namespace ringfa3 {

template <class Tr>
__device__ void produce(FwdParams<Tr> const& p, typename Tr::SharedStorage& ss) {
  using namespace cute;
  constexpr int kM = Tr::kBlockM, kN = Tr::kBlockN, kD = Tr::kHeadDim;
  RingFa3FwdArgs const& a = p.a;
  int n_b = Tr::kVarlen ? 1 : a.b;   // varlen: one packed batch entry
  Tensor mQ = p.tma_q.get_tma_tensor(make_shape(a.s_q, a.d, a.h, n_b));      // (s_q, d, h, b)
  Tensor mK = p.tma_k.get_tma_tensor(make_shape(a.s_k, a.d, a.h_kv, n_b));   // (s_k, d, h_kv, b)
  Tensor mV = p.tma_v.get_tma_tensor(make_shape(a.d, v_keys<Tr>(a), a.h_kv, n_b));   // (d, s_v, h_kv, b)
  Tensor sQ = make_tensor(make_smem_ptr(ss.q), typename Tr::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(ss.k), typename Tr::SmemLayoutK{});
  Tensor sV = make_tensor(make_smem_ptr(ss.v), typename Tr::SmemLayoutV{});

  TileScheduler<Tr::kClusterM> sched{p.n_tiles, p.n_m_blocks, a.h, p.heads_per_chunk, p.tile_counter};
  if constexpr (Tr::kClusterM > 1) sched.mail = {ss.pair.unit, ss.pair.unit_full, ss.pair.unit_empty};
  TileRing ring{ss.tile_id, ss.tile_full, ss.tile_empty};
  PipeState<Tr::kStages> ks, vs;   // K and V rings advance in step (same block sequence)
  auto cta_rank = [] {   // this CTA's slice of the K/V boxes (a constant 0 outside clusters)
    if constexpr (Tr::kClusterM == 1) return Int<0>{};
    else return int(cute::block_rank_in_cluster());
  }();
  // A stage is free once this CTA's consumer warps have released it (count: consumer warps). In a
  // cluster the two producers then pass that on to both CTAs' pair barrier (count 2), and load (by
  // multicast) only when both have: the consumers' releases stay local arrives, and their key loop the
  // plain kernel's (remote arrives from the consumers made ptxas schedule it differently, 2-3.5%
  // slower per clock, bench/NOTES.md runs 74 and 82).
  [[maybe_unused]] uint64_t* pair_k = nullptr;
  [[maybe_unused]] uint64_t* pair_v = nullptr;
  if constexpr (Tr::kClusterM > 1) {
    pair_k = ss.pair.k;
    pair_v = ss.pair.v;
  }
  auto acquire_stage = [](uint64_t* empty, uint64_t* pair, PipeState<Tr::kStages> const& st) {
    EmptyBarrier::wait(&empty[st.index], st.phase ^ 1);
    if constexpr (Tr::kClusterM > 1) {
#pragma unroll
      for (int c = 0; c < Tr::kClusterM; ++c) EmptyBarrier::arrive(&pair[st.index], c, 1);
      EmptyBarrier::wait(&pair[st.index], st.phase);   // both CTAs' releases of this use
    }
  };
  int q_round = 0;
  // Out staged over V's stages (Tr::kOverV): the V loads of tile j wait until tile j - 1's stores have
  // read the staging (phase j - 1 of o_free). Phases are awaited in order, one per tile, and never
  // one late: an empty tile (no loads) is awaited before it is published, whose epilogue could
  // otherwise complete the next phase first; any other tile's epilogue needs its V loads.
  bool o_over_v = Tr::kOverV && p.o_tma;
  for (int t = blockIdx.x, j = 0;; ++j) {
    if (!Tr::kOverV || !sched.valid(t)) ring.publish(t);
    if (!sched.valid(t)) break;
    auto tile = sched.decode(t);
    Extent e = locate(p, tile);
    BlockMask<kM, kN> mask(tile.m_block, e.s_q, e.s_k, e.off, p.win_left, p.win_right);
    int nb = mask.n_begin(), ne = mask.template n_end_walked<Tr::kClusterM>();
    bool await_o = o_over_v && j > 0;
    if constexpr (Tr::kOverV) {
      if (await_o && ne <= nb) EmptyBarrier::wait(&ss.o_free, (j - 1) & 1);
      ring.publish(t);
    }
    if (ne <= nb) {   // consumers write the empty result without any load
      t = sched.draw_next();
      continue;
    }
    int hk = tile.head / p.group;

    Tensor gQ = local_tile(seq_slice<Tr, 0>(mQ, tile.head, tile.batch, e.q0), Shape<Int<kM>, Int<kD>>{},
                           make_coord(tile.m_block, _0{}));                      // (kM, d)
    Tensor gK = local_tile(seq_slice<Tr, 0>(mK, hk, tile.batch, e.k0), Shape<Int<kN>, Int<kD>>{},
                           make_coord(_, _0{}));                                 // (kN, d, n)
    Tensor gV = local_tile(seq_slice<Tr, 1>(mV, hk, tile.batch, e.k0), Shape<Int<kD>, Int<kN>>{},
                           make_coord(_0{}, _));                                 // (d, kN, n)
    // (global TMA coords, smem) pairs: Q (TMA), K and V (TMA, block) / (TMA, stage)
    auto tQ = tma_partition(p.tma_q, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sQ), group_modes<0, 2>(gQ));
    // In a cluster each CTA loads its slice of every K/V block and multicasts it to both.
    auto tK = tma_partition(p.tma_k, cta_rank, Layout<Int<Tr::kClusterM>>{}, group_modes<0, 2>(sK), group_modes<0, 2>(gK));
    auto tV = tma_partition(p.tma_v, cta_rank, Layout<Int<Tr::kClusterM>>{}, group_modes<0, 2>(sV), group_modes<0, 2>(gV));

    // A stage is refilled once every consumer warp that reads it (of both CTAs in a cluster) has let
    // it go; its full barrier expects the whole block, both slices.
    auto kv_copy = [&](auto const& tma, uint64_t& full) {
      if constexpr (Tr::kClusterM == 1) return tma.with(full);
      else return tma.with(full, uint16_t((1 << Tr::kClusterM) - 1));
    };
    auto load_k = [&](int n) {
      acquire_stage(ss.k_empty, pair_k, ks);
      FullBarrier::arrive_and_expect_tx(&ss.k_full[ks.index], Tr::kBytesKV);
      copy(kv_copy(p.tma_k, ss.k_full[ks.index]), get<0>(tK)(_, n), get<1>(tK)(_, ks.index));
      ks.advance();
    };
    auto load_v = [&](int n) {
      acquire_stage(ss.v_empty, pair_v, vs);
      FullBarrier::arrive_and_expect_tx(&ss.v_full[vs.index], Tr::kBytesKV);
      copy(kv_copy(p.tma_v, ss.v_full[vs.index]), get<0>(tV)(_, n), get<1>(tV)(_, vs.index));
      vs.advance();
    };

    // The tile's first K goes out before the wait for the Q buffer: that wait lasts until the
    // previous tile's last Q K^T is done, and the K stage is usually free long before, so the first
    // Q K^T of this tile no longer waits for K behind Q. (Until run 4 the order was Q, K, V.)
    load_k(ne - 1);
    EmptyBarrier::wait(&ss.q_empty, (q_round & 1) ^ 1);
    FullBarrier::arrive_and_expect_tx(&ss.q_full, Tr::kBytesQ);
    copy(p.tma_q.with(ss.q_full), get<0>(tQ), get<1>(tQ));
    ++q_round;
    if (await_o) EmptyBarrier::wait(&ss.o_free, (j - 1) & 1);
    load_v(ne - 1);
    // Then K(n), V(n) in the order the consumers finish with them. (Run 4a measured K(n) next to
    // V(n+1), the order the overlapped consumers use them: no faster.)
    for (int n = ne - 2; n >= nb; --n) {
      load_k(n);
      load_v(n);
    }
    // The next tile is drawn only now, with this tile's loads out (about kStages blocks before its
    // end): an SM commits to a tile when it can start it soon. Drawn at this tile's start, a long
    // causal tile held its successor back for its whole length, while the SMs that drew nothing more
    // idled at the end (hd256 16k causal: a 3-8% tail).
    t = sched.draw_next();
    // Warm L2 with that tile's Q (HBM latency otherwise shows at its start: its Q load can only be
    // issued once this tile's last Q K^T is done).
    if (sched.valid(t)) {
      auto nt = sched.decode(t);
      int nq0 = locate(p, nt).q0;
      Tensor gQn = local_tile(seq_slice<Tr, 0>(mQ, nt.head, nt.batch, nq0), Shape<Int<kM>, Int<kD>>{},
                              make_coord(nt.m_block, _0{}));
      auto tQn = tma_partition(p.tma_q, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sQ), group_modes<0, 2>(gQn));
      cute::prefetch(p.tma_q, get<0>(tQn));
    }
  }
  sched.finish();
  // In a cluster the CTA stays until the peer has made its last arrives on the pair barriers: one more
  // round of every stage, without loads. Not unrolled: unrolled (or as a cluster barrier at exit) it
  // made ptxas schedule the consumers' key loop differently (bench/NOTES.md run 82).
  if constexpr (Tr::kClusterM > 1) {
#pragma unroll 1
    for (int i = 0; i < Tr::kStages; ++i) {
      acquire_stage(ss.k_empty, pair_k, ks);
      acquire_stage(ss.v_empty, pair_v, vs);
      ks.advance();
      vs.advance();
    }
  }
}

}  // namespace ringfa3
