// Compile-time configuration of one backward instantiation. A CTA owns kBlockN keys of one kv head
// (dK, dV live in registers) and walks the query blocks of every query head of its group.
// Two consumer warpgroups split the keys (64 each); the TMA producer is warpgroup 0.
//
// All five GEMMs are WGMMA. The two score-shaped ones are computed transposed (keys as the M side):
//   S^T  = K Q^T      (keys x queries, red. d)      A = K  smem,  B = Q  smem (K-major)
//   dP^T = V dO^T     (keys x queries, red. d)      A = V  smem,  B = dO smem (K-major)
//   dV  += P^T dO     (keys x d, red. queries)      A = P^T registers, B = dO smem read d-major
//   dK  += dS^T Q     (keys x d, red. queries)      A = dS^T registers, B = Q smem read d-major
//   dQ   = dS K       (queries x d, red. keys)      A = dS smem (written by the consumers), B = K d-major
//          (80-row blocks: dQ^T = K^T dS^T, d x queries, A = K d-major, B = dS smem)
// so P^T and dS^T never leave registers for dV/dK, and only dS goes through smem (for dQ).
// The d-major ("transposed") views of Q, dO, K are compositions of their TMA layouts, not copies.
#pragma once
#include <type_traits>
#include <cute/tensor.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <cutlass/numeric_types.h>
#include "../reg_budget.h"

namespace ringfa3 {
using namespace cute;

// TMA copies of the four inputs from their global views (seq, d, head, batch), d contiguous: Q and dO
// into one stage of SmemLayoutQ (kBlockM, d, stage), K and V into SmemLayoutK (kBlockN, d); and the
// bytes the producer's loads bring (a Q or dO tile, a K or V tile, a stage's lse or delta rows).
template <class T, class SmemLayoutQ, class SmemLayoutK, int kBlockM, int kBlockN, int kHeadDim>
struct BwdTma {
  static constexpr uint32_t kBytesQ = kBlockM * kHeadDim * sizeof(T);
  static constexpr uint32_t kBytesK = kBlockN * kHeadDim * sizeof(T);
  static constexpr uint32_t kBytesRow = kBlockM * sizeof(float);
  using ShapeG = Shape<int32_t, int32_t, int32_t, int32_t>;
  using StrideG = Stride<int64_t, _1, int64_t, int64_t>;
  using Q = decltype(make_tma_copy(SM90_TMA_LOAD{},
      make_tensor(make_gmem_ptr(static_cast<T const*>(nullptr)), ShapeG{}, StrideG{}),
      take<0, 2>(SmemLayoutQ{}), Shape<Int<kBlockM>, Int<kHeadDim>>{}, _1{}));
  using K = decltype(make_tma_copy(SM90_TMA_LOAD{},
      make_tensor(make_gmem_ptr(static_cast<T const*>(nullptr)), ShapeG{}, StrideG{}),
      SmemLayoutK{}, Shape<Int<kBlockN>, Int<kHeadDim>>{}, _1{}));
};

template <class T_, int kHeadDim_, int kBlockM_, int kBlockN_, int kStages_, bool kVarlen_ = false>
struct BwdTraits {
  static constexpr bool kVarlen = kVarlen_;   // packed segments (cu_seqlens): bwd_args.h
  static constexpr bool kRoleSplit = false;   // the warpgroups split keys (bwd_traits_d256.h: roles)
  using T = T_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;   // query rows per pipeline stage
  static constexpr int kBlockN = kBlockN_;   // keys per CTA: 64 per consumer warpgroup
  static constexpr int kStages = kStages_;   // Q / dO / lse / delta stages
  static constexpr int kConsumerWG = kBlockN / 64;
  static constexpr int kThreads = 128 * (kConsumerWG + 1);
  static constexpr int kConsumerWarps = 4 * kConsumerWG;
  static_assert(kConsumerWG == 2, "dQ = dS K splits the head dim over exactly two warpgroups");
  static constexpr int kProducerRegs = 24;    // setmaxnreg budgets, within the launch pool
  static constexpr int kConsumerRegs = 240;
  static_assert(reg_split_fits(kProducerRegs, kConsumerRegs, kConsumerWG), "register budget");
  static_assert(kHeadDim % 64 == 0 && kBlockM % 16 == 0, "128-byte swizzle tiles, whole WGMMA k-steps");

  // K-major (head dim contiguous) tiles, as TMA writes them.
  using SmemLayoutQ = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<T>{},
                                             Shape<Int<kBlockM>, Int<kHeadDim>, Int<kStages>>{}));
  using SmemLayoutK = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<T>{},
                                             Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  // dS (queries, keys), keys contiguous: the K-major A operand of dQ = dS K. Two buffers.
  using SmemLayoutdS = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<T>{},
                                              Shape<Int<kBlockM>, Int<kBlockN>, _2>{}));
  // Transposed views over the same bytes: element (x, y) of the view is element (y, x) of the tile.
  using SmemLayoutQt = decltype(composition(SmemLayoutQ{},
      make_layout(Shape<Int<kHeadDim>, Int<kBlockM>, Int<kStages>>{},
                  Stride<Int<kBlockM>, _1, Int<kBlockM * kHeadDim>>{})));          // (d, queries, stage)
  using SmemLayoutKt = decltype(composition(SmemLayoutK{},
      make_layout(Shape<Int<kHeadDim>, Int<kBlockN>>{}, Stride<Int<kBlockN>, _1>{})));  // (d, keys)
  using SmemLayoutdSt = decltype(composition(SmemLayoutdS{},
      make_layout(Shape<Int<kBlockN>, Int<kBlockM>, _2>{},
                  Stride<Int<kBlockM>, _1, Int<kBlockM * kBlockN>>{})));           // (keys, queries, buf)

  // Warpgroups stacked along the keys (M) for S^T, dP^T, dV, dK; along d (N) for dQ.
  using MmaSdP = decltype(make_tiled_mma(
      GMMA::ss_op_selector<T, T, float, Shape<_64, Int<kBlockM>, Int<kHeadDim>>>(),
      Layout<Shape<Int<kConsumerWG>, _1, _1>>{}));
  using MmadKV = decltype(make_tiled_mma(
      GMMA::rs_op_selector<T, T, float, Shape<_64, Int<kHeadDim>, Int<kBlockM>>,
                           GMMA::Major::K, GMMA::Major::MN>(),
      Layout<Shape<Int<kConsumerWG>, _1, _1>>{}));
  // dQ = dS K. Head dim >= 128: split over d (warpgroup w computes columns [w d/2, (w+1) d/2) from
  // all kBlockN keys). Head dim 64: split over keys (each warpgroup multiplies its own 64 keys, a
  // full-width partial); a 32-column half would start inside a 128-byte swizzle atom.
  static constexpr bool kSplitD = kHeadDim >= 128;
  // A query block that is not a multiple of WGMMA's 64 rows takes dQ transposed, dQ^T = K^T dS^T
  // (d x queries, red. keys): the warpgroups stack along d (M), the queries are N.
  static constexpr bool kDqT = kBlockM % 64 != 0;
  static_assert(!kDqT || kSplitD, "transposed dQ splits the head dim");
  using MmadQ = std::conditional_t<kDqT,
      decltype(make_tiled_mma(GMMA::ss_op_selector<T, T, float, Shape<_64, Int<kBlockM>, Int<kBlockN>>,
                                                   GMMA::Major::MN, GMMA::Major::K>(),
                              Layout<Shape<Int<kConsumerWG>, _1, _1>>{})),
      decltype(make_tiled_mma(
          GMMA::ss_op_selector<T, T, float,
                               Shape<_64, Int<kSplitD ? kHeadDim / 2 : kHeadDim>, Int<kSplitD ? kBlockN : 64>>,
                               GMMA::Major::K, GMMA::Major::MN>(),
          Layout<Shape<_1, Int<kSplitD ? kConsumerWG : 1>, _1>>{}))>;

  using Tma = BwdTma<T, SmemLayoutQ, SmemLayoutK, kBlockM, kBlockN, kHeadDim>;
  using TmaQ = typename Tma::Q;
  using TmaK = typename Tma::K;

  static constexpr int kDqPerWG = kBlockM * (kSplitD ? kHeadDim / 2 : kHeadDim);   // floats
  // dQ partial buffers per warpgroup: a consumer fills one while the writer warp drains the other,
  // so a deterministic-order wait stalls the writer, not the tensor cores (for a block).
  static constexpr int kDqBufs = kDqT ? 1 : 2;   // at 80 rows two do not fit beside the stages

  struct SharedStorage {
    alignas(1024) T k[cosize_v<SmemLayoutK>];
    alignas(1024) T v[cosize_v<SmemLayoutK>];
    alignas(1024) T q[cosize_v<SmemLayoutQ>];
    alignas(1024) T dout[cosize_v<SmemLayoutQ>];
    alignas(1024) T ds[cosize_v<SmemLayoutdS>];
    alignas(128) float dq[kDqBufs][kConsumerWG][kDqPerWG];   // dQ partials, register order
    alignas(16) float lse[kStages][kBlockM];     // lse * log2(e) of the stage's query rows
    alignas(16) float delta[kStages][kBlockM];   // rowsum(dO * O)
    alignas(8) uint64_t kv_full;
    uint64_t q_full[kStages], q_empty[kStages];
    uint64_t dq_full[kDqBufs][kConsumerWG], dq_empty[kDqBufs][kConsumerWG];   // consumer <-> dQ writer
  };
  static constexpr int kSmemBytes = int(sizeof(SharedStorage));
  static_assert(kSmemBytes <= 227 * 1024, "tile does not fit shared memory");
};

}  // namespace ringfa3
