// Consumer warpgroups: per key block, S = Q K^T (WGMMA, both operands in smem), mask, online
// softmax, P cast to 16 bit (or e4m3) in registers, O += P V (WGMMA with P as the register A operand).
// Each warpgroup owns 64 query rows of the tile; all share the K/V stages.
#pragma once
#include <type_traits>
#include <cute/arch/mma_sm90_gmma.hpp>
#include "epilogue.h"
#include "epilogue_tma.h"
#include "kernel_traits.h"
#include "mask.h"
#include "params.h"
#include "pipeline.h"
#include "softmax.h"
#include "tile_scheduler.h"
#include "warpgroup.h"

namespace ringfa3 {

// Ping-pong among the consumer warpgroups: warpgroup w may issue its GEMMs only after warpgroup w-1
// (cyclically) has issued its own, so one warpgroup's softmax runs under the others' GEMMs. Named
// barrier 1 + w (0 is __syncthreads) counts warpgroup w's sync and its predecessor's arrive. The last
// warpgroup opens with an arrive so warpgroup 0 goes first; warpgroup 0 absorbs the last dangling
// arrive at the end.
template <class Tr> __device__ __forceinline__ void pingpong_wait(int wg) { named_sync(1 + wg, 256); }
template <class Tr> __device__ __forceinline__ void pingpong_signal(int wg) {
  named_arrive(1 + (wg + 1) % Tr::kConsumerWG, 256);
}

// A copy of an smem-descriptor fragment whose base the compiler cannot see through, so the per-k-step
// descriptors are rebuilt at each GEMM issue (one integer add each) instead of being hoisted out of
// the loops into two registers per k-step (16 registers for Q at hd128, 32 at hd256).
template <class Frag>
__device__ __forceinline__ auto opaque_desc(Frag const& f) {
  auto it = f.data();
  asm volatile("" : "+r"(it.desc_.reg32_[0]));
  return cute::make_tensor(it, f.layout());
}

template <class Tr>
__device__ void consume(FwdParams<Tr> const& p, typename Tr::SharedStorage& ss, int ct) {
  using namespace cute;
  using T = typename Tr::T;
  constexpr int kM = Tr::kBlockM, kN = Tr::kBlockN, kD = Tr::kHeadDim;
  RingFa3FwdArgs const& a = p.a;

  typename Tr::MmaQK mma_qk;
  typename Tr::MmaPV mma_pv;
  // The smem-operand fragments (WGMMA descriptors) depend only on the warpgroup. Sliced by its first
  // thread, broadcast from lane 0, they are warp-uniform to the compiler and live in uniform registers.
  int wg_thread0 = __shfl_sync(0xffffffff, ct & ~127, 0);
  auto thr_qk = mma_qk.get_thread_slice(wg_thread0);
  auto thr_pv = mma_pv.get_thread_slice(wg_thread0);
  Tensor sQ = make_tensor(make_smem_ptr(ss.q), typename Tr::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(ss.k), typename Tr::SmemLayoutK{});
  Tensor sV = make_tensor(make_smem_ptr(ss.v), typename Tr::SmemLayoutV{});
  Tensor tSrQ = thr_qk.partition_fragment_A(sQ);   // smem descriptors (MMA, 1, d/16)
  Tensor tSrK = thr_qk.partition_fragment_B(sK);   // (MMA, 1, d/16, stages)
  Tensor tOrV = thr_pv.partition_fragment_B(sV);   // (MMA, 1, kN/16, stages)

  // P in registers laid out as the A operand of P @ V: for 16-bit types the accumulator order of
  // S (pairs of columns, row halves, 8-column chunks) is exactly the A-fragment order, k-step = 16.
  // e4m3: (4 keys, row halves, 16-key halves) per 32-deep k-step (convert_p).
  using PLayout = std::conditional_t<Tr::kFp8, Layout<Shape<Shape<_4, _2, _2>, _1, Int<kN / 32>>>,
                                     Layout<Shape<Shape<_2, _2, _2>, _1, Int<kN / 16>>>>;
  Tensor tOrP = make_tensor<T>(PLayout{});
  Tensor tOrP32 = recast<uint32_t>(tOrP);

  AccCoord coord(ct % 128);
  int wg = ct / 128;
  int rows_base = wg * 64;
  TileScheduler<Tr::kClusterM> sched{p.n_tiles, p.n_m_blocks, a.h, p.heads_per_chunk, p.tile_counter};
  TileRing ring{ss.tile_id, ss.tile_full, ss.tile_empty};
  PipeState<Tr::kStages> kv;
  int q_round = 0;
  if (wg == Tr::kConsumerWG - 1) named_arrive(1, 256);

  for (;;) {
    int t = ring.receive();
    if (!sched.valid(t)) break;
    cta_trace(p.trace, t, kTraceStart);
    auto tile = sched.decode(t);
    Extent e = locate(p, tile);
    BlockMask<kM, kN> mask(tile.m_block, e.s_q, e.s_k, e.off, p.win_left, p.win_right);
    int nb = mask.n_begin(), ne = mask.template n_end_walked<Tr::kClusterM>();
    Tensor tOrO = partition_fragment_C(mma_pv, Shape<Int<kM>, Int<kD>>{});   // (MMA, 1, 1) fp32
    clear(tOrO);
    OnlineSoftmax softmax(p.scale_log2);
    Tensor tSrS = partition_fragment_C(mma_qk, Shape<Int<kM>, Int<kN>>{});   // (MMA, 1, 1) fp32

    // Issue S = Q K(n)^T on the current K stage (asynchronous).
    auto scores = [&]() {
      FullBarrier::wait(&ss.k_full[kv.index], kv.phase);
      auto q = opaque_desc(tSrQ);
      issue_gemm<true, false>(mma_qk, q, tSrK(_, _, _, kv.index), tSrS);
    };
    // e4m3: the scores' dequantization scale, q_scale of the tile times k_scale of key block n
    // (k_scale row of this batch and kv head, strided by h_kv over kN-key blocks). Each block's
    // k_scale is loaded one block ahead: read once S had landed, its global-load latency stalled
    // the softmax of every block.
    [[maybe_unused]] float q_scale = 1.f, k_next = 1.f;
    [[maybe_unused]] float const* k_scale = nullptr;
    if constexpr (Tr::kFp8) {
      int n_kb = (a.s_k + kN - 1) / kN;
      q_scale = a.q_scale[(size_t(tile.batch) * p.n_m_blocks + tile.m_block) * a.h + tile.head];
      k_scale = a.k_scale + size_t(tile.batch) * n_kb * a.h_kv + tile.head / p.group;
      if (ne > nb) k_next = k_scale[(ne - 1) * a.h_kv];
    }
    // Once S(n) has landed: mask, softmax, then free its K stage (and Q after the tile's last block).
    // The K release reads the softmax result, which pins the P V wait that follows it behind the
    // exponentials (see warp_release_after), so P V runs under them. With kSplitSoftmax the release
    // and wait come after the first row half: the second half then overlaps the P conversion, which
    // has to wait for P V. With kRescaleUnderExp they come after the first row's max; the second
    // row's max, O's rescale and both rows' exponentials follow.
    auto rescale_o = [&](float const (&rescale)[2]) {
      CUTE_UNROLL
      for (int i = 0; i < size(tOrO); ++i) tOrO(i) *= rescale[AccCoord::row_half(i)];
    };
    float c = 1.f;   // e4m3: raw scores x c are the true ones (softmax.h, kScaled)
    [[maybe_unused]] float exp_base[2];   // kRescaleUnderExp: the exp2 offsets from max_step to exp_step
    auto scale_and_mask = [&](int n) {
      if constexpr (Tr::kFp8) {   // blocks run from ne - 1 down to nb
        c = q_scale * k_next;
        k_next = k_scale[max(n - 1, nb) * a.h_kv];
      }
      if (mask.partial(n)) mask.apply(tSrS, n, rows_base, coord);
    };
    auto softmax_part = [&](auto first, int n, float (&rescale)[2]) {
      if (n == nb) warp_release(&ss.q_empty);
      scale_and_mask(n);
      if constexpr (Tr::kRescaleUnderExp)
        softmax.template max_step<decltype(first)::value, Tr::kFp8, 0, 1>(tSrS, rescale, exp_base, c);
      else
        softmax.template step<decltype(first)::value, Tr::kFp8, 0, Tr::kSplitSoftmax ? 1 : 2>(tSrS, rescale, c);
      warp_release_after(&ss.k_empty[kv.index], Tr::kSplitSoftmax || Tr::kRescaleUnderExp ? softmax.row_sum[0]
                                                                  : softmax.row_sum[0] + softmax.row_sum[1], a.s_k);
    };
    auto softmax_rest = [&](auto first, float (&rescale)[2]) {
      if constexpr (Tr::kRescaleUnderExp) {
        softmax.template max_step<decltype(first)::value, Tr::kFp8, 1, 2, true>(tSrS, rescale, exp_base, c);
        if constexpr (!decltype(first)::value) rescale_o(rescale);
        softmax.template exp_step<Tr::kFp8, 0, 2>(tSrS, exp_base, softmax.row_sum, c);
      } else if constexpr (Tr::kSplitSoftmax) {
        softmax.template step<decltype(first)::value, Tr::kFp8, 1, 2, Tr::kPinRowOrder>(tSrS, rescale, c);
      }
    };
    auto convert_p = [&]() {
      if constexpr (Tr::kFp8) {
        // A 32-deep e4m3 k-step wants keys 4t..4t+3 (and +16) of rows r, r+8 in quad lane t; the
        // accumulator holds keys 2t, 2t+1, 8+2t, 9+2t (and +16). V^T's keys are stored in that order
        // (fp8_key_order, ops/fp8.py), so no shuffle: A value i = 8g + 4r + j takes accumulator
        // value 4 (2g + j/2) + 2r + j%2 of the same k-step.
        CUTE_UNROLL
        for (int w = 0; w < size(tOrP32); ++w) {
          int base = 16 * (w / 4), g = (w % 4) / 2, r = w % 2;
          auto acc = [&](int j) { return tSrS(base + 4 * (2 * g + j / 2) + 2 * r + j % 2); };
          tOrP32(w) = pack4_e4m3(acc(0), acc(1), acc(2), acc(3));
        }
      } else {
        CUTE_UNROLL
        for (int i = 0; i < size(tSrS) / 2; ++i) tOrP32(i) = pack2<T>(tSrS(2 * i), tSrS(2 * i + 1));
      }
    };
    float rescale[2];
    // kLazyMax: a block after the tile's first, once S has landed (P V may still run), up to P V's end. If
    // any thread of the warpgroup votes for the exact step, S is computed again (K and Q stay until here)
    // and the block takes softmax_part and softmax_rest's work. The vote uses the warpgroup's epilogue
    // barrier (the same 128 threads; the epilogue comes after the loop).
    auto lazy_softmax = [&](int n) {
      scale_and_mask(n);
      float blk[2];
      bool exact = any_sync(epilogue_barrier<Tr>(wg), 128, softmax.template lazy_exp_step<Tr::kFp8>(tSrS, blk, c));
      warpgroup_wait<0>();   // P V too, on both paths (a wait on one path only serializes every WGMMA: ptxas C7515)
      if (exact) {
        issue_gemm<true, false>(mma_qk, opaque_desc(tSrQ), tSrK(_, _, _, kv.index), tSrS);
        warpgroup_wait<0>();
        if (mask.partial(n)) mask.apply(tSrS, n, rows_base, coord);
        softmax.template step<false, Tr::kFp8, 0, 2>(tSrS, rescale, c);
        rescale_o(rescale);
      } else {
        softmax.add_block_sums(blk);
      }
      if (n == nb) warp_release(&ss.q_empty);
      warp_release(&ss.k_empty[kv.index]);
    };

    if (ne > nb) {
      FullBarrier::wait(&ss.q_full, q_round & 1);
      // Software pipeline (intra-warpgroup overlap): issue S(n) = Q K(n)^T, rescale O under it, issue
      // O += P(n+1) V(n+1), run the softmax of S(n) while P V is still on the tensor cores. With
      // ping-pong, the warpgroups take turns issuing, so one's softmax also overlaps the others'
      // GEMMs. The P V wait stays behind the softmax (or its first row half) only because the K
      // release before it reads the softmax result (warp_release_after; run 6: without it ptxas
      // hoisted the wait above the softmax and nothing overlapped).
      pingpong_wait<Tr>(wg);
      scores();
      pingpong_signal<Tr>(wg);
      warpgroup_wait<0>();
      cta_trace(p.trace, t, kTraceKv);
      softmax_part(cute::true_type{}, ne - 1, rescale);
      softmax_rest(cute::true_type{}, rescale);
      convert_p();
      PipeState<Tr::kStages> prev = kv;
      kv.advance();
      for (int n = ne - 2; n >= nb; --n) {
        pingpong_wait<Tr>(wg);
        scores();
        // O holds P V up to block prev + 1, relative to the max before block prev (late: before block n).
        if constexpr (!Tr::kLateRescale && !Tr::kRescaleUnderExp) rescale_o(rescale);
        FullBarrier::wait(&ss.v_full[prev.index], prev.phase);
        issue_gemm<false, true>(mma_pv, tOrP, tOrV(_, _, _, prev.index), tOrO);
        pingpong_signal<Tr>(wg);
        warpgroup_wait<1>();   // S(n) is done; P V may still run
        if constexpr (Tr::kLazyMax) {
          lazy_softmax(n);
          warp_release(&ss.v_empty[prev.index]);
        } else {
          softmax_part(cute::false_type{}, n, rescale);
          warpgroup_wait<0>();
          warp_release(&ss.v_empty[prev.index]);
          softmax_rest(cute::false_type{}, rescale);
        }
        convert_p();
        if constexpr (Tr::kLateRescale) rescale_o(rescale);
        prev = kv;
        kv.advance();
      }
      pingpong_wait<Tr>(wg);
      if constexpr (!Tr::kLateRescale && !Tr::kRescaleUnderExp) rescale_o(rescale);
      FullBarrier::wait(&ss.v_full[prev.index], prev.phase);
      issue_gemm<false, true>(mma_pv, tOrP, tOrV(_, _, _, prev.index), tOrO);
      pingpong_signal<Tr>(wg);
      warpgroup_wait<0>();
      warp_release(&ss.v_empty[prev.index]);
      ++q_round;
    }
    cta_trace(p.trace, t, kTraceLoopEnd);
    float inv[2], lse[2];
    softmax.finish(a.softmax_scale, inv, lse);
    if constexpr (Tr::kFp8) {   // V's dequantization scale, one per (batch, kv head)
      float v_scale = a.v_scale[size_t(tile.batch) * a.h_kv + tile.head / p.group];
      inv[0] *= v_scale;
      inv[1] *= v_scale;
    }
    if constexpr (Tr::kSmemO || Tr::kOverV) {
      if (p.o_tma) {
        store_output_tma<Tr>(p, ss, tOrO, inv, lse, tile.batch, tile.head, tile.m_block, wg, coord);
        cta_trace(p.trace, t, kTraceEnd);
        continue;
      }
    }
    int bi = Tr::kVarlen ? 0 : tile.batch, row_base = tile.m_block * kM + rows_base;
    if constexpr (Tr::kMerge) asm volatile("griddepcontrol.wait;" ::: "memory");   // fwd_kernel.h
    store_output<typename Tr::TOut, decltype(tOrO), Tr::kMerge>(a, tOrO, inv, lse, bi, tile.head, e.q0, e.s_q, row_base, coord);
    cta_trace(p.trace, t, kTraceEnd);
  }
  if constexpr (Tr::kSmemO || Tr::kOverV) {
    if (p.o_tma) drain_output_tma();
  }
  if (wg == 0) named_sync(1, 256);
}

}  // namespace ringfa3
