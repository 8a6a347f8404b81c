// Compile-time configuration of the head-dim-256 backward. dK and dV of 64 keys take 2 x 128 fp32
// registers per thread at d = 256, more than a warpgroup holds beside the score tiles, so here the
// two consumer warpgroups split the head dim, not the keys (bwd_traits.h), and split the two score
// GEMMs by role (bwd_consumer_d256.h):
//   warpgroup 0:  S^T  = K Q^T   (64 keys x 64 queries, red. 256)   -> P^T, then dS^T
//   warpgroup 1:  dP^T = V dO^T  (64 x 64, red. 256)                 -> dP^T - delta, to smem
//   both, for their d half [128 w, 128 w + 128):
//                 dV += P^T dO,  dK += dS^T Q   (64 keys x 128, red. queries; A = P / dS from smem)
//                 dQ  = dS K                    (64 queries x 128, red. keys)
// Per block each warpgroup runs one 64x64x256 GEMM and three 64x128x64 ones.
// Shared memory: K, V, one Q / dO stage, P, dS, the dP exchange and one dQ slot per warpgroup.
#pragma once
#include <cute/tensor.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <cutlass/numeric_types.h>
#include "../reg_budget.h"
#include "bwd_traits.h"   // BwdTma

namespace ringfa3 {
using namespace cute;

template <class T_, bool kVarlen_ = false>
struct BwdTraitsD256 {
  static constexpr bool kVarlen = kVarlen_;
  static constexpr bool kRoleSplit = true;   // bwd_kernel.h: the consumers of bwd_consumer_d256.h
  using T = T_;
  static constexpr int kHeadDim = 256, kBlockM = 64, kBlockN = 64, kStages = 1;
  static constexpr int kConsumerWG = 2;
  static constexpr int kThreads = 128 * (kConsumerWG + 1);
  static constexpr int kConsumerWarps = 4 * kConsumerWG;
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = 240;
  static_assert(reg_split_fits(kProducerRegs, kConsumerRegs, kConsumerWG), "register budget");

  using SmemLayoutQ = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<T>{},
                                             Shape<Int<kBlockM>, Int<kHeadDim>, Int<kStages>>{}));
  using SmemLayoutK = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<T>{},
                                             Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  // P and dS as (queries, keys), keys contiguous: the K-major A of dQ = dS K; the transposed views
  // (keys, queries) are the MN-major A of dV += P^T dO and dK += dS^T Q.
  using SmemLayoutPdS = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<T>{},
                                               Shape<Int<kBlockM>, Int<kBlockN>>{}));
  using SmemLayoutPdSt = decltype(composition(SmemLayoutPdS{},
      make_layout(Shape<Int<kBlockN>, Int<kBlockM>>{}, Stride<Int<kBlockM>, _1>{})));     // (keys, queries)
  using SmemLayoutQt = decltype(composition(SmemLayoutQ{},
      make_layout(Shape<Int<kHeadDim>, Int<kBlockM>, Int<kStages>>{},
                  Stride<Int<kBlockM>, _1, Int<kBlockM * kHeadDim>>{})));                   // (d, queries, stage)
  using SmemLayoutKt = decltype(composition(SmemLayoutK{},
      make_layout(Shape<Int<kHeadDim>, Int<kBlockN>>{}, Stride<Int<kBlockN>, _1>{})));     // (d, keys)

  // One warpgroup per score GEMM (keys as M).
  using MmaScore = decltype(make_tiled_mma(
      GMMA::ss_op_selector<T, T, float, Shape<Int<kBlockN>, Int<kBlockM>, Int<kHeadDim>>>(),
      Layout<Shape<_1, _1, _1>>{}));
  // The two warpgroups side by side along d (N): warpgroup w takes columns [128 w, 128 w + 128).
  using MmadKV = decltype(make_tiled_mma(
      GMMA::ss_op_selector<T, T, float, Shape<Int<kBlockN>, _128, Int<kBlockM>>,
                           GMMA::Major::MN, GMMA::Major::MN>(),
      Layout<Shape<_1, _2, _1>>{}));
  using MmadQ = decltype(make_tiled_mma(
      GMMA::ss_op_selector<T, T, float, Shape<Int<kBlockM>, _128, Int<kBlockN>>,
                           GMMA::Major::K, GMMA::Major::MN>(),
      Layout<Shape<_1, _2, _1>>{}));

  using Tma = BwdTma<T, SmemLayoutQ, SmemLayoutK, kBlockM, kBlockN, kHeadDim>;
  using TmaQ = typename Tma::Q;
  using TmaK = typename Tma::K;

  // dQ: each warpgroup's d half of the partial, as with the d split of bwd_traits.h.
  static constexpr bool kSplitD = true;
  static constexpr int kDqPerWG = kBlockM * kHeadDim / 2;   // floats
  static constexpr int kDqBufs = 1;
  static constexpr int kScoreValues = kBlockN * kBlockM / 128;   // fp32 per thread of a score tile

  struct SharedStorage {
    alignas(1024) T k[cosize_v<SmemLayoutK>];
    alignas(1024) T v[cosize_v<SmemLayoutK>];
    alignas(1024) T q[cosize_v<SmemLayoutQ>];
    alignas(1024) T dout[cosize_v<SmemLayoutQ>];
    alignas(1024) T p[cosize_v<SmemLayoutPdS>];
    alignas(1024) T ds[cosize_v<SmemLayoutPdS>];
    alignas(128) float dp[128 * kScoreValues];   // warpgroup 1's dP^T - delta, register order
    alignas(128) float dq[kDqBufs][kConsumerWG][kDqPerWG];
    alignas(16) float lse[kStages][kBlockM];
    alignas(16) float delta[kStages][kBlockM];
    alignas(8) uint64_t kv_full;
    uint64_t q_full[kStages], q_empty[kStages];
    uint64_t dq_full[kDqBufs][kConsumerWG], dq_empty[kDqBufs][kConsumerWG];
  };
  static constexpr int kSmemBytes = int(sizeof(SharedStorage));
  static_assert(kSmemBytes <= 227 * 1024, "tile does not fit shared memory");
};

}  // namespace ringfa3
