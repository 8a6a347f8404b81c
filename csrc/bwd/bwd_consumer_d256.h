// Consumer warpgroups of the head-dim-256 backward (bwd_traits_d256.h). Per (query head, query
// block):
//   warpgroup 1: dP^T = V dO^T; dP^T - delta into smem in register order; arrive "dP ready".
//   warpgroup 0: S^T = K Q^T; P^T = exp2(S^T * scale*log2e - lse*log2e); wait "dP ready";
//                P and dS = P (dP - delta) into smem (16 bit, transposing stmatrix); arrive "P, dS".
//   both:        wait "P, dS" (warpgroup 1); dV[:, half] += P^T dO[:, half], dQ[:, half] = dS K[:, half],
//                dK[:, half] += dS^T Q[:, half]; the stage released, then the dQ partial to the writer.
// Both warpgroups hold one score tile's accumulator layout, so the dP exchange is plain float4 stores
// and loads at the same (thread, value) places.
// Buffer reuse: warpgroup 0 writes P and dS only after this block's "dP ready", when warpgroup 1 has
// finished the previous block's GEMMs; warpgroup 1 rewrites dP only after the previous block's
// "P, dS", when warpgroup 0 has read it.
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

namespace ringfa3 {

constexpr int kBarDpReady = 3, kBarPdSReady = 4;   // named barriers (1-2: bwd_consumer.h)

template <class Tr>
__device__ void bwd_consume_d256(BwdParams<Tr> const& p, typename Tr::SharedStorage& ss, int ct,
                                 int n_block, int hk, int bi, BwdPiece const& pc) {
  using namespace cute;
  using T = typename Tr::T;
  constexpr int kM = Tr::kBlockM, kN = Tr::kBlockN, kD = Tr::kHeadDim;
  RingFa3BwdArgs const& a = p.a;
  Extent e = bwd_extent(p, bi);
  auto mask = bwd_block_mask(p, e, n_block);
  int mb = mask.m_begin(), me = mask.m_end();
  piece_blocks(pc, mb, me);
  int wg = __shfl_sync(0xffffffff, ct / 128, 0);   // warp-uniform: smem descriptors in uniform registers
  int t = ct % 128;

  typename Tr::MmaScore mma_s;
  typename Tr::MmadKV mma_dkv;
  typename Tr::MmadQ mma_dq;
  auto thr_s = mma_s.get_thread_slice(t);
  auto frag_s = mma_s.get_thread_slice(0);
  auto thr_dkv = mma_dkv.get_thread_slice(ct);
  auto frag_dkv = mma_dkv.get_thread_slice(wg * 128);   // this warpgroup's d half
  auto frag_dq = mma_dq.get_thread_slice(wg * 128);

  // Score operands by role: K Q^T for warpgroup 0, V dO^T for warpgroup 1.
  Tensor sA = make_tensor(make_smem_ptr(wg == 0 ? ss.k : ss.v), typename Tr::SmemLayoutK{});    // (kN, d)
  Tensor sB = make_tensor(make_smem_ptr(wg == 0 ? ss.q : ss.dout), typename Tr::SmemLayoutQ{}); // (kM, d, stage)
  Tensor sQt = make_tensor(make_smem_ptr(ss.q), typename Tr::SmemLayoutQt{});     // (d, kM, stage)
  Tensor sdOt = make_tensor(make_smem_ptr(ss.dout), typename Tr::SmemLayoutQt{});
  Tensor sKt = make_tensor(make_smem_ptr(ss.k), typename Tr::SmemLayoutKt{});     // (d, kN)
  Tensor sdS = make_tensor(make_smem_ptr(ss.ds), typename Tr::SmemLayoutPdS{});   // (kM, kN)
  Tensor sPt = make_tensor(make_smem_ptr(ss.p), typename Tr::SmemLayoutPdSt{});   // (kN, kM)
  Tensor sdSt = make_tensor(make_smem_ptr(ss.ds), typename Tr::SmemLayoutPdSt{});

  Tensor tSrA = frag_s.partition_fragment_A(sA);           // (MMA, 1, d/16)
  Tensor tSrB = frag_s.partition_fragment_B(sB);           // (MMA, 1, d/16, stage)
  Tensor tdVrP = frag_dkv.partition_fragment_A(sPt);       // (MMA, 1, kM/16)
  Tensor tdVrdO = frag_dkv.partition_fragment_B(sdOt);     // (MMA, 1, kM/16, stage)
  Tensor tdKrdS = frag_dkv.partition_fragment_A(sdSt);
  Tensor tdKrQ = frag_dkv.partition_fragment_B(sQt);
  Tensor tdQrdS = frag_dq.partition_fragment_A(sdS);       // (MMA, 1, kN/16)
  Tensor tdQrK = frag_dq.partition_fragment_B(sKt);

  Tensor tdVrdV = partition_fragment_C(mma_dkv, Shape<Int<kN>, Int<kD>>{});   // this warpgroup's d half
  Tensor tdKrdK = partition_fragment_C(mma_dkv, Shape<Int<kN>, Int<kD>>{});
  clear(tdVrdV);
  clear(tdKrdK);
  Tensor tSrS = partition_fragment_C(mma_s, Shape<Int<kN>, Int<kM>>{});        // S^T or dP^T
  Tensor tScS = thr_s.partition_C(make_identity_tensor(Shape<Int<kN>, Int<kM>>{}));   // (key, query)
  auto pds_copy = make_tiled_copy_C(Copy_Atom<SM90_U16x8_STSM_T, T>{}, mma_s);   // (keys, queries) regs -> smem
  auto pds_thr = pds_copy.get_thread_slice(t);
  constexpr int V = int(size(decltype(tSrS){}));
  static_assert(V == Tr::kScoreValues && V % 4 == 0, "one score tile per warpgroup");
  float4* dp_x = reinterpret_cast<float4*>(ss.dp);   // float4 j of thread t at j * 128 + t

  if (me > mb) FullBarrier::wait(&ss.kv_full, 0);
  cta_trace(p.trace, blockIdx.x, kTraceKv);
  PipeState<Tr::kStages> st;
  PipeState<Tr::kDqBufs> dq_slot;
  for (int g = 0; g < p.group; ++g) {
    for (int m = mb; m < me; ++m) {
      FullBarrier::wait(&ss.q_full[st.index], st.phase);
      float const* row_stat = wg == 0 ? ss.lse[st.index] : ss.delta[st.index];
      float stat_i[V];
      CUTE_UNROLL
      for (int i = 0; i < V; ++i) stat_i[i] = row_stat[get<1>(tScS(i))];
      issue_gemm<true, false>(mma_s, tSrA, tSrB(_, _, _, st.index), tSrS);
      warpgroup_wait<0>();
      if (wg == 1) {
        CUTE_UNROLL
        for (int j = 0; j < V / 4; ++j)
          dp_x[j * 128 + t] = make_float4(tSrS(4 * j) - stat_i[4 * j], tSrS(4 * j + 1) - stat_i[4 * j + 1],
                                          tSrS(4 * j + 2) - stat_i[4 * j + 2], tSrS(4 * j + 3) - stat_i[4 * j + 3]);
        named_arrive(kBarDpReady, 256);
        named_sync(kBarPdSReady, 256);
      } else {
        if (mask.partial(m)) mask.apply(tSrS, tScS, m);
        CUTE_UNROLL
        for (int i = 0; i < V; ++i) tSrS(i) = fast_exp2(tSrS(i) * p.scale_log2 - stat_i[i]);
        Tensor rP = make_tensor_like<T>(tSrS);
        CUTE_UNROLL
        for (int i = 0; i < V; ++i) rP(i) = static_cast<T>(tSrS(i));
        named_sync(kBarDpReady, 256);
        cute::copy(pds_copy, pds_thr.retile_S(rP), pds_thr.partition_D(sPt));
        Tensor rdS = make_tensor_like<T>(tSrS);
        CUTE_UNROLL
        for (int j = 0; j < V / 4; ++j) {
          float4 x = dp_x[j * 128 + t];
          rdS(4 * j) = static_cast<T>(tSrS(4 * j) * x.x);
          rdS(4 * j + 1) = static_cast<T>(tSrS(4 * j + 1) * x.y);
          rdS(4 * j + 2) = static_cast<T>(tSrS(4 * j + 2) * x.z);
          rdS(4 * j + 3) = static_cast<T>(tSrS(4 * j + 3) * x.w);
        }
        cute::copy(pds_copy, pds_thr.retile_S(rdS), pds_thr.partition_D(sdSt));
        cutlass::arch::fence_view_async_shared();   // P, dS visible to the tensor cores
        named_arrive(kBarPdSReady, 256);
      }
      issue_gemm<false, false>(mma_dkv, tdVrP, tdVrdO(_, _, _, st.index), tdVrdV);
      Tensor tdQrdQ = partition_fragment_C(mma_dq, Shape<Int<kM>, Int<kD>>{});
      issue_gemm<true, false>(mma_dq, tdQrdS, tdQrK, tdQrdQ);
      issue_gemm<false, false>(mma_dkv, tdKrdS, tdKrQ(_, _, _, st.index), tdKrdK);
      // The stage is released before the dQ partial is handed over, so that the producer's loads of
      // the next block (one stage: the consumers wait for them) go ahead of the writer's 32 KB
      // reduce-add in the TMA unit. Handed over while dK ran, the add went first (run 35: 4k full
      // 280 -> 414 TF/s, 16k causal 293 -> 425).
      warpgroup_wait<0>();
      warp_release(&ss.q_empty[st.index]);
      hand_dq<Tr>(tdQrdQ, ss, wg, dq_slot);
      st.advance();
    }
  }
  cta_trace(p.trace, blockIdx.x, kTraceLoopEnd);
  if (!merge_pieces(a, pc, tdKrdK, tdVrdV, ct)) return;
  store_dkdv<Tr>(a, tdKrdK, tdVrdV, thr_dkv.partition_C(make_identity_tensor(Shape<Int<kN>, Int<kD>>{})),
                 ss, mask, Tr::kVarlen ? 0 : bi, hk, e.k0);
}

}  // namespace ringfa3
