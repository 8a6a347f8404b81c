// TMA producer of the backward: one elected thread loads the CTA's K and V once, then for every
// (query head of the group, query block) the CTA visits: Q and dO tiles (TMA) and the block's
// lse_log2 and delta rows (1-D bulk copies), into a kStages ring.
#pragma once
#include <cute/arch/copy_sm90_tma.hpp>
#include "../pipeline.h"
#include "../seq_slice.h"
#include "bwd_mask.h"
#include "bwd_params.h"
#include "bwd_split.h"
#include "bwd_traits.h"

namespace ringfa3 {

template <class Tr>
__device__ void bwd_produce(BwdParams<Tr> const& p, typename Tr::SharedStorage& ss,
                            int n_block, int hk, int bi, BwdPiece const& pc) {
  using namespace cute;
  constexpr int kM = Tr::kBlockM, kN = Tr::kBlockN, kD = Tr::kHeadDim;
  RingFa3BwdArgs const& a = p.a;
  Extent e = bwd_extent(p, bi);
  auto mask = bwd_block_mask(p, e, n_block);
  int mb = mask.m_begin(), me = mask.m_end();
  piece_blocks(pc, mb, me);
  if (me <= mb) return;   // nothing visible: the consumers write zero dK, dV without loads

  int n_b = Tr::kVarlen ? 1 : a.b;   // varlen: the packed rows are one batch entry
  Tensor mQ = p.tma_q.get_tma_tensor(make_shape(a.s_q, a.d, a.h, n_b));      // (s_q, d, h, b)
  Tensor mdO = p.tma_do.get_tma_tensor(make_shape(a.s_q, a.d, a.h, n_b));
  Tensor mK = p.tma_k.get_tma_tensor(make_shape(a.s_k, a.d, a.h_kv, n_b));   // (s_k, d, h_kv, b)
  Tensor mV = p.tma_v.get_tma_tensor(make_shape(a.s_k, a.d, a.h_kv, n_b));
  Tensor sQ = make_tensor(make_smem_ptr(ss.q), typename Tr::SmemLayoutQ{});
  Tensor sdO = make_tensor(make_smem_ptr(ss.dout), typename Tr::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(ss.k), typename Tr::SmemLayoutK{});
  Tensor sV = make_tensor(make_smem_ptr(ss.v), typename Tr::SmemLayoutK{});

  Tensor gK = local_tile(seq_slice<Tr, 0>(mK, hk, bi, e.k0), Shape<Int<kN>, Int<kD>>{}, make_coord(n_block, _0{}));
  Tensor gV = local_tile(seq_slice<Tr, 0>(mV, hk, bi, e.k0), Shape<Int<kN>, Int<kD>>{}, make_coord(n_block, _0{}));
  auto tK = tma_partition(p.tma_k, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sK), group_modes<0, 2>(gK));
  auto tV = tma_partition(p.tma_v, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sV), group_modes<0, 2>(gV));
  FullBarrier::arrive_and_expect_tx(&ss.kv_full, 2 * Tr::Tma::kBytesK);
  copy(p.tma_k.with(ss.kv_full), get<0>(tK), get<1>(tK));
  copy(p.tma_v.with(ss.kv_full), get<0>(tV), get<1>(tV));

  PipeState<Tr::kStages> st;
  for (int g = 0; g < p.group; ++g) {
    int head = hk * p.group + g;
    Tensor gQ = local_tile(seq_slice<Tr, 0>(mQ, head, bi, e.q0), Shape<Int<kM>, Int<kD>>{}, make_coord(_, _0{}));   // (kM, d, m)
    Tensor gdO = local_tile(seq_slice<Tr, 0>(mdO, head, bi, e.q0), Shape<Int<kM>, Int<kD>>{}, make_coord(_, _0{}));
    auto tQ = tma_partition(p.tma_q, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sQ), group_modes<0, 2>(gQ));
    auto tdO = tma_partition(p.tma_do, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sdO), group_modes<0, 2>(gdO));
    size_t row0 = ws_tile(p, e, bi, head, 0) * kM;
    for (int m = mb; m < me; ++m) {
      EmptyBarrier::wait(&ss.q_empty[st.index], st.phase ^ 1);
      FullBarrier::arrive_and_expect_tx(&ss.q_full[st.index], 2 * Tr::Tma::kBytesQ + 2 * Tr::Tma::kBytesRow);
      copy(p.tma_q.with(ss.q_full[st.index]), get<0>(tQ)(_, m), get<1>(tQ)(_, st.index));
      copy(p.tma_do.with(ss.q_full[st.index]), get<0>(tdO)(_, m), get<1>(tdO)(_, st.index));
      SM90_BULK_COPY_G2S::copy(a.lse_log2 + row0 + m * kM, &ss.q_full[st.index], ss.lse[st.index], Tr::Tma::kBytesRow);
      SM90_BULK_COPY_G2S::copy(a.delta + row0 + m * kM, &ss.q_full[st.index], ss.delta[st.index], Tr::Tma::kBytesRow);
      st.advance();
    }
  }
}

}  // namespace ringfa3
