// Compile-time configuration of one forward instantiation: tile sizes, shared-memory layouts that
// both TMA and WGMMA agree on, the two tiled MMAs, and the shared-storage struct.
#pragma once
#include <cute/tensor.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <cutlass/numeric_types.h>
#include "reg_budget.h"

namespace ringfa3 {
using namespace cute;

template <class T_, int kHeadDim_, int kBlockM_, int kBlockN_, int kStages_>
struct FwdTraits {
  using T = T_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;   // query rows per CTA tile; 64 per consumer warpgroup
  static constexpr int kBlockN = kBlockN_;   // keys per pipeline stage
  static constexpr int kStages = kStages_;
  static constexpr int kConsumerWG = kBlockM / 64;   // they take turns issuing GEMMs (ping-pong)
  static constexpr int kThreads = 128 * (kConsumerWG + 1);  // warpgroup 0 = TMA producer
  static constexpr int kConsumerWarps = 4 * kConsumerWG;
  // setmaxnreg budgets (multiples of 8, within the launch pool: reg_budget.h).
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = kConsumerWG == 2 ? 240 : 160;
  static_assert(kConsumerWG == 2 || kConsumerWG == 3, "two or three consumer warpgroups");
  static_assert(reg_split_fits(kProducerRegs, kConsumerRegs, kConsumerWG), "register budget");
  static_assert(kHeadDim % 64 == 0, "128-byte swizzle needs head_dim % 64 == 0");
  static_assert(kBlockN % 16 == 0, "P @ V consumes kBlockN in k-steps of 16");

  // Q and K are read K-major (head dim contiguous). V is read as the B operand of P @ V, whose
  // reduction runs over keys, so it is loaded into a (d, keys) MN-major layout.
  using SmemLayoutQ = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<T>{},
                                             Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  using SmemLayoutK = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<T>{},
                                             Shape<Int<kBlockN>, Int<kHeadDim>, Int<kStages>>{}));
  // Atoms stacked along keys first, so each 64-wide slice of d is one contiguous box for TMA.
  using SmemLayoutV = decltype(tile_to_shape(GMMA::Layout_MN_SW128_Atom<T>{},
                                             Shape<Int<kHeadDim>, Int<kBlockN>, Int<kStages>>{},
                                             Step<_2, _1, _3>{}));

  // One 64-row MMA atom per consumer warpgroup, stacked along M.
  using AtomLayout = Layout<Shape<Int<kConsumerWG>, _1, _1>>;
  using MmaQK = decltype(make_tiled_mma(
      GMMA::ss_op_selector<T, T, float, Shape<_64, Int<kBlockN>, Int<kHeadDim>>>(), AtomLayout{}));
  using MmaPV = decltype(make_tiled_mma(
      GMMA::rs_op_selector<T, T, float, Shape<_64, Int<kHeadDim>, Int<kBlockN>>,
                           GMMA::Major::K, GMMA::Major::MN>(), AtomLayout{}));

  // Global views handed to TMA: Q/K as (seq, d, head, batch), V as (d, seq, head, batch).
  using ShapeG = Shape<int32_t, int32_t, int32_t, int32_t>;
  using StrideQK = Stride<int64_t, _1, int64_t, int64_t>;
  using StrideV = Stride<_1, int64_t, int64_t, int64_t>;
  using TmaQ = decltype(make_tma_copy(SM90_TMA_LOAD{},
      make_tensor(make_gmem_ptr(static_cast<T const*>(nullptr)), ShapeG{}, StrideQK{}),
      SmemLayoutQ{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}, _1{}));
  using TmaK = decltype(make_tma_copy(SM90_TMA_LOAD{},
      make_tensor(make_gmem_ptr(static_cast<T const*>(nullptr)), ShapeG{}, StrideQK{}),
      take<0, 2>(SmemLayoutK{}), Shape<Int<kBlockN>, Int<kHeadDim>>{}, _1{}));
  using TmaV = decltype(make_tma_copy(SM90_TMA_LOAD{},
      make_tensor(make_gmem_ptr(static_cast<T const*>(nullptr)), ShapeG{}, StrideV{}),
      take<0, 2>(SmemLayoutV{}), Shape<Int<kHeadDim>, Int<kBlockN>>{}, _1{}));

  static constexpr uint32_t kBytesQ = kBlockM * kHeadDim * sizeof(T);
  static constexpr uint32_t kBytesKV = kBlockN * kHeadDim * sizeof(T);

  struct SharedStorage {
    alignas(1024) T q[cosize_v<SmemLayoutQ>];
    alignas(1024) T k[cosize_v<SmemLayoutK>];
    alignas(1024) T v[cosize_v<SmemLayoutV>];
    alignas(8) uint64_t q_full, q_empty;
    uint64_t k_full[kStages], k_empty[kStages], v_full[kStages], v_empty[kStages];
    uint64_t tile_full[2], tile_empty[2];
    int tile_id[2];
  };
  static constexpr int kSmemBytes = int(sizeof(SharedStorage));
  static_assert(kSmemBytes <= 227 * 1024, "tile does not fit shared memory");
};

}  // namespace ringfa3
