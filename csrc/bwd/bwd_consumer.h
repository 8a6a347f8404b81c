// Consumer warpgroups of the backward. Warpgroup w owns keys [64w, 64w+64) of the CTA's key block and
// keeps their dK, dV accumulators in registers across every (query head of the group, query block):
//   S^T = K Q^T, dP^T = V dO^T (issued back to back), P^T = exp2(S^T * scale*log2e - lse*log2e),
//   dV += P^T dO (P^T from registers), dS^T = P^T * (dP^T - delta), dK += dS^T Q (dS^T from registers),
//   dS -> smem, dQ_partial = dS K, handed to the dQ writer warp (bwd_dq_writer.h).
// dQ split: head dim >= 128, the two warpgroups share dS (double-buffered smem, one 256-thread
// barrier per block) and each computes half of dQ's columns; head dim 64, each warpgroup multiplies
// its own keys' dS (no cross-warpgroup barrier) and both add full-width partials.
// 80-row query blocks (unmasked hd128, bwd_instantiations.h; FA3's register plan): dQ^T = K^T dS^T
// per d half (kDqT), and dV issued after the dS stores (run 144: +0.4-1.8% full, +3-7% deterministic
// full at base clock, against the same sources at 64 rows).
#pragma once
#include <cutlass/arch/barrier.h>
#include <cute/arch/mma_sm90_gmma.hpp>
#include <cute/arch/copy_sm90.hpp>
#include <cute/atom/copy_traits_sm90.hpp>
#include "../epilogue.h"
#include "../pipeline.h"
#include "../softmax.h"
#include "../warpgroup.h"
#include "bwd_epilogue.h"
#include "bwd_mask.h"
#include "bwd_params.h"
#include "bwd_split.h"
#include "bwd_traits.h"
#include "stsm_rows.h"

namespace ringfa3 {

// fp32 accumulator (keys x queries, one warpgroup) -> 16-bit A operand of a (keys x .) GEMM over
// queries: the accumulator's value order is the A-fragment order (see the forward's consumer.h).
template <class T, int kBlockM, class Acc>
__device__ __forceinline__ auto bwd_to_a_operand(Acc const& acc) {
  using namespace cute;
  Tensor r = make_tensor<T>(Layout<Shape<Shape<_2, _2, _2>, _1, Int<kBlockM / 16>>>{});
  Tensor r32 = recast<uint32_t>(r);
  CUTE_UNROLL
  for (int i = 0; i < size(acc) / 2; ++i) r32(i) = pack2<T>(acc(2 * i), acc(2 * i + 1));
  return r;
}

template <class Tr>
__device__ void bwd_consume(BwdParams<Tr> const& p, typename Tr::SharedStorage& ss, int ct,
                            int n_block, int hk, int bi, BwdPiece const& pc) {
  using namespace cute;
  using T = typename Tr::T;
  constexpr int kM = Tr::kBlockM, kN = Tr::kBlockN, kD = Tr::kHeadDim;
  constexpr bool kSplitD = Tr::kSplitD, kDqT = Tr::kDqT;
  RingFa3BwdArgs const& a = p.a;
  Extent e = bwd_extent(p, bi);
  auto mask = bwd_block_mask(p, e, n_block);
  int mb = mask.m_begin(), me = mask.m_end();
  piece_blocks(pc, mb, me);
  // Broadcast from lane 0: warp-uniform to the compiler, so the smem-operand fragments (WGMMA
  // descriptors, which depend only on the warpgroup) live in uniform registers.
  int wg = __shfl_sync(0xffffffff, ct / 128, 0);

  typename Tr::MmaSdP mma_sdp;
  typename Tr::MmadKV mma_dkv;
  typename Tr::MmadQ mma_dq;
  auto thr_sdp = mma_sdp.get_thread_slice(ct);   // accumulator coordinates and the dS smem stores
  auto thr_dkv = mma_dkv.get_thread_slice(ct);
  auto frag_sdp = mma_sdp.get_thread_slice(wg * 128);   // smem operands
  auto frag_dkv = mma_dkv.get_thread_slice(wg * 128);
  auto thr_dq = mma_dq.get_thread_slice(kSplitD ? wg * 128 : 0);

  Tensor sQ = make_tensor(make_smem_ptr(ss.q), typename Tr::SmemLayoutQ{});      // (kM, d, stage)
  Tensor sdO = make_tensor(make_smem_ptr(ss.dout), typename Tr::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(ss.k), typename Tr::SmemLayoutK{});      // (kN, d)
  Tensor sV = make_tensor(make_smem_ptr(ss.v), typename Tr::SmemLayoutK{});
  Tensor sQt = make_tensor(make_smem_ptr(ss.q), typename Tr::SmemLayoutQt{});    // (d, kM, stage)
  Tensor sdOt = make_tensor(make_smem_ptr(ss.dout), typename Tr::SmemLayoutQt{});
  Tensor sKt = make_tensor(make_smem_ptr(ss.k), typename Tr::SmemLayoutKt{});    // (d, kN)
  Tensor sdS = make_tensor(make_smem_ptr(ss.ds), typename Tr::SmemLayoutdS{});   // (kM, kN, buf)
  Tensor sdSt = make_tensor(make_smem_ptr(ss.ds), typename Tr::SmemLayoutdSt{}); // (kN, kM, buf)

  Tensor tSrK = frag_sdp.partition_fragment_A(sK);       // (MMA, 1, d/16)
  Tensor tSrV = frag_sdp.partition_fragment_A(sV);
  Tensor tSrQ = frag_sdp.partition_fragment_B(sQ);       // (MMA, 1, d/16, stage)
  Tensor tSrdO = frag_sdp.partition_fragment_B(sdO);
  Tensor tdVrdO = frag_dkv.partition_fragment_B(sdOt);   // (MMA, 1, kM/16, stage)
  Tensor tdKrQ = frag_dkv.partition_fragment_B(sQt);
  // dQ operands: split over d -> all keys, this warpgroup's d half (the tiled MMA picks it);
  // split over keys -> this warpgroup's 64 keys, all of d; transposed (kDqT) -> K^T's d half, all of dS.
  auto dq_a = [&](int buf) {
    if constexpr (kDqT) return thr_dq.partition_fragment_A(sKt);
    else if constexpr (kSplitD) return thr_dq.partition_fragment_A(sdS(_, _, buf));
    else return thr_dq.partition_fragment_A(local_tile(sdS(_, _, buf), Shape<Int<kM>, _64>{}, make_coord(0, wg)));
  };
  auto dq_b = [&](int buf) {
    if constexpr (kDqT) return thr_dq.partition_fragment_B(sdS(_, _, buf));
    else if constexpr (kSplitD) return thr_dq.partition_fragment_B(sKt);
    else return thr_dq.partition_fragment_B(local_tile(sKt, Shape<Int<kD>, _64>{}, make_coord(0, wg)));
  };
  auto tdQrK = [&]() {   // the operand that does not change with the dS buffer
    if constexpr (kDqT) return dq_a(0);
    else return dq_b(0);
  }();

  Tensor tdVrdV = partition_fragment_C(mma_dkv, Shape<Int<kN>, Int<kD>>{});   // (MMA, 1, 1) fp32
  Tensor tdKrdK = partition_fragment_C(mma_dkv, Shape<Int<kN>, Int<kD>>{});
  clear(tdVrdV);
  clear(tdKrdK);
  Tensor tSrS = partition_fragment_C(mma_sdp, Shape<Int<kN>, Int<kM>>{});      // S^T, then P^T
  Tensor tSrdP = partition_fragment_C(mma_sdp, Shape<Int<kN>, Int<kM>>{});     // dP^T, then dS^T
  Tensor tScS = thr_sdp.partition_C(make_identity_tensor(Shape<Int<kN>, Int<kM>>{}));   // (key, query)
  auto ds_copy = make_tiled_copy_C(Copy_Atom<SM90_U16x8_STSM_T, T>{}, mma_sdp);   // dS^T regs -> smem
  auto ds_thr = ds_copy.get_thread_slice(ct);
  // Split over d (two dS buffers): the stores from row addresses computed once, buffer 1 a whole number
  // of swizzle periods on (+2.7-4.1% at hd128 4k-16k at base clock). Head dim 64 keeps cute's stores
  // into its one buffer: 1-2.6% slower with them (bench/NOTES-bwd.md run 134).
  auto ds_rows = stsm_rows(ds_thr, sdSt(_, _, 0));
  constexpr uint32_t kDsBufBytes = kM * kN * sizeof(T);
  static_assert(kDsBufBytes % 1024 == 0, "dS buffers whole swizzle periods apart");

  if (me > mb) FullBarrier::wait(&ss.kv_full, 0);
  cta_trace(p.trace, blockIdx.x, kTraceKv);
  PipeState<Tr::kStages> st;
  PipeState<Tr::kDqBufs> dq_slot;
  int buf = 0;
  for (int g = 0; g < p.group; ++g) {
    int head = hk * p.group + g;
    for (int m = mb; m < me; ++m) {
      FullBarrier::wait(&ss.q_full[st.index], st.phase);
      // lse is read before the GEMMs are issued: read after them, the loads queued behind 16 WGMMAs
      // and lse's first use was 11% of the consumers' stall samples (run 22's ncu). delta waits until
      // after dV's issue (read before the GEMMs as well, it spilled and was slower: run 23).
      float const* lse = ss.lse[st.index];
      float const* delta = ss.delta[st.index];
      float lse_i[size(tSrS)], delta_i[size(tSrS)];
      CUTE_UNROLL
      for (int i = 0; i < size(tSrS); ++i) lse_i[i] = lse[get<1>(tScS(i))];
      issue_gemm<true, false>(mma_sdp, tSrK, tSrQ(_, _, _, st.index), tSrS);
      issue_gemm<true, false>(mma_sdp, tSrV, tSrdO(_, _, _, st.index), tSrdP);
      warpgroup_wait<1>();   // S^T landed
      if (mask.partial(m)) mask.apply(tSrS, tScS, m);
      // P by ex2.approx.ftz, as the forward's softmax: exp2f's subnormal fix-up costs three
      // instructions per score, and a P below 2^-126 is 0 either way after the 16-bit conversion
      CUTE_UNROLL
      for (int i = 0; i < size(tSrS); ++i) tSrS(i) = fast_exp2(tSrS(i) * p.scale_log2 - lse_i[i]);
      auto issue_dv = [&]() {
        Tensor tdVrP = bwd_to_a_operand<T, kM>(tSrS);
        issue_gemm<false, true>(mma_dkv, tdVrP, tdVrdO(_, _, _, st.index), tdVrdV);
      };
      // 64 rows: dV fills the tensor pipe while dS is computed. 80 rows (FA3's order): dV after the dS
      // stores, so that P's 16-bit copy is not live beside dP's accumulator.
      if constexpr (!kDqT) issue_dv();
      CUTE_UNROLL
      for (int i = 0; i < size(tSrS); ++i) delta_i[i] = delta[get<1>(tScS(i))];
      warpgroup_wait<kDqT ? 0 : 1>();   // dP^T landed (dV may still run)
      CUTE_UNROLL
      for (int i = 0; i < size(tSrdP); ++i) tSrdP(i) = tSrS(i) * (tSrdP(i) - delta_i[i]);
      Tensor tdKrdS = bwd_to_a_operand<T, kM>(tSrdP);
      // dS (16 bit, the dK operand's packed values) into smem for dQ = dS K; made visible to the
      // tensor cores (async proxy). Transposing stmatrix: 8 keys (16 bytes) of one query per row,
      // four 8x8 tiles per instruction, instead of one 16-bit store per value.
      Tensor tdSrdS = make_tensor_like<T>(tSrdP);   // the same values in the accumulator's layout
      CUTE_UNROLL
      for (int i = 0; i < size(tSrdP); ++i) tdSrdS(i) = tdKrdS(i);
      if constexpr (kSplitD) ds_rows.store(ds_thr.retile_S(tdSrdS), buf * kDsBufBytes);
      else cute::copy(ds_copy, ds_thr.retile_S(tdSrdS), ds_thr.partition_D(sdSt(_, _, buf)));
      if constexpr (kDqT) issue_dv();
      cutlass::arch::fence_view_async_shared();
      if constexpr (kSplitD) named_sync(1, 256);
      else named_sync(2 + wg, 128);
      // dQ before dK (as FA3 orders them): the dQ partial goes to the writer's slot while dK runs
      Tensor tdQrdQ = partition_fragment_C(mma_dq, Shape<Int<kDqT ? kD : kM>, Int<kDqT ? kM : kD>>{});
      if constexpr (kDqT) issue_gemm<true, false>(mma_dq, tdQrK, dq_b(buf), tdQrdQ);
      else issue_gemm<true, false>(mma_dq, dq_a(buf), tdQrK, tdQrdQ);
      issue_gemm<false, true>(mma_dkv, tdKrdS, tdKrQ(_, _, _, st.index), tdKrdK);
      warpgroup_wait<1>();   // dQ landed (and dV before it)
      hand_dq<Tr>(tdQrdQ, ss, wg, dq_slot);
      warpgroup_wait<0>();
      warp_release(&ss.q_empty[st.index]);
      st.advance();
      if constexpr (kSplitD) buf ^= 1;
    }
  }
  auto coords = thr_dkv.partition_C(make_identity_tensor(Shape<Int<kN>, Int<kD>>{}));   // (key, d)
  cta_trace(p.trace, blockIdx.x, kTraceLoopEnd);
  if (!merge_pieces(a, pc, tdKrdK, tdVrdV, ct)) return;
  store_dkdv<Tr>(a, tdKrdK, tdVrdV, coords, ss, mask, Tr::kVarlen ? 0 : bi, hk, e.k0);
}

}  // namespace ringfa3
