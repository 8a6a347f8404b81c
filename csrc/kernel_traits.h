// Compile-time configuration of one forward instantiation: tile sizes, shared-memory layouts that
// both TMA and WGMMA agree on, the two tiled MMAs, and the shared-storage struct.
#pragma once
#include <cute/tensor.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <type_traits>
#include <cutlass/numeric_types.h>
#include "reg_budget.h"

namespace ringfa3 {
using namespace cute;

// V's (d, keys, stage) smem layout. 16 bit: MN-major, atoms stacked along keys first, so each
// 64-wide slice of d is one contiguous box for TMA. e4m3: K-major (keys contiguous).
template <bool kFp8, class T, int kD, int kN, int kStages> struct VSmemLayout {
  using type = decltype(tile_to_shape(GMMA::Layout_MN_SW128_Atom<T>{}, Shape<Int<kD>, Int<kN>, Int<kStages>>{},
                                      Step<_2, _1, _3>{}));
};
// The K-major atom is the widest swizzle whose row (128, 64 or 32 bytes of keys) tiles the key block.
template <class T, int kD, int kN, int kStages> struct VSmemLayout<true, T, kD, kN, kStages> {
  static constexpr int kRowBytes = kN * int(sizeof(T));
  using Atom = std::conditional_t<kRowBytes % 128 == 0, GMMA::Layout_K_SW128_Atom<T>,
               std::conditional_t<kRowBytes % 64 == 0, GMMA::Layout_K_SW64_Atom<T>, GMMA::Layout_K_SW32_Atom<T>>>;
  static_assert(kRowBytes % 32 == 0, "e4m3 V^T: the key block must fill 32-byte swizzle rows");
  using type = decltype(tile_to_shape(Atom{}, Shape<Int<kD>, Int<kN>, Int<kStages>>{}));
};

template <class T_, int kHeadDim_, int kBlockM_, int kBlockN_, int kStages_, bool kVarlen_ = false,
          bool kMerge_ = false, int kClusterM_ = 1>
struct FwdTraits {
  using T = T_;
  static constexpr bool kVarlen = kVarlen_;   // packed segments (cu_seqlens): fwd_args.h
  // Merges into (out_acc, lse_acc) (a ring step): an instantiation of its own, whose merge batches its
  // loads (epilogue.h). Batched loads in the one shared kernel cost the plain launches 3-6% at hd128
  // 8k-16k at base clock (ptxas scheduled the key loop differently; bench/NOTES.md run 65).
  static constexpr bool kMerge = kMerge_;
  // CTAs per cluster along M (RINGFA3_CLUSTER, fwd_launch.h): the two take adjacent query blocks of one
  // (batch, head) and walk the union of their key blocks (under a causal mask the lower query block's
  // extra key block is fully masked); each loads half of every K/V block and multicasts it to both
  // (FA3's cluster, which FA3 keeps to full attention). The producers exchange the stages' releases
  // (producer.h).
  static constexpr int kClusterM = kClusterM_;
  static_assert(kClusterM == 1 || (kClusterM == 2 && !kVarlen), "clusters of 2, dense only");
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
  // e4m3: FP8 WGMMA takes both operands K-major and 32-deep k-steps; one Q scale per query tile and
  // one K scale per key block (ops/fp8.py block_q, block_k: the prep kernels quantize Q by kBlockM
  // rows and K by kBlockN rows, ringfa3_sm90_fp8_key_rows).
  static constexpr bool kFp8 = sizeof(T) == 1;
  // e4m3: FA3's FP8 order. Once S has landed, the first row's max; then the P V wait; then the second
  // row's max under the first row's exponentials, and O's rescale among them (MUFU time is what an
  // e4m3 block is short of). At base clock, over the 16-bit kernels' order: +8-10% at hd128 8k-16k
  // (224-key blocks), +3-8% at hd128 1k-2k and +5-7% at hd256 (128-key blocks). Both
  // rows' maxima first gained only half of it, and 4 max chains per row nothing (bench/NOTES-fp8.md,
  // runs 99, 101, 104).
  static constexpr bool kRescaleUnderExp = kFp8;
  // e4m3 hd256: after a tile's first block, exponentials against the running max without the block's own
  // max (softmax.h lazy_exp_step); the warpgroup votes, and the rare block that needs it is recomputed
  // exactly. At base clock +4-8% at 4k-16k, 0.94-0.99 at 1k; at hd128 0.96-1.02, so not there
  // (bench/NOTES-fp8.md runs 109-112).
  static constexpr bool kLazyMax = kFp8 && kHeadDim == 256;
  // The P V wait placed after the first row half's exponentials (consumer.h): +1.4-3.1% at hd128 4k-16k,
  // but 0-4% slower at hd64 and up to 9% at hd256 (bench/NOTES.md run 15), which keep it after both.
  static constexpr bool kSplitSoftmax = kHeadDim == 128 && !kRescaleUnderExp;
  // O's rescale after the P conversion (FA3's order for head dims <= 128) instead of between the two
  // GEMM issues: +0.4-5.6% at base clock for hd128's 128-key blocks, -1 to -2% with 176-key blocks,
  // 0 to -4% at hd64 / hd256 (bench/NOTES.md runs 53-54).
  static constexpr bool kLateRescale = kHeadDim == 128 && kBlockN == 128 && !kRescaleUnderExp;
  // The second row's max chain pinned behind the first row's max (softmax.h kPinRow1, FA3's order):
  // at base clock +0.9 to +1.8% at 4k causal in four runs with 128-key blocks (+0.7% on average over
  // 1k-16k), 0.97-1.01 with 176-key blocks (bench/NOTES.md runs 95-96).
  static constexpr bool kPinRowOrder = kSplitSoftmax && kBlockN == 128 && !kFp8;
  static_assert(!kFp8 || kBlockN % 32 == 0, "e4m3 tiles: 32-key k-steps");
  using TOut = std::conditional_t<kFp8, cutlass::bfloat16_t, T>;   // out dtype unless out_fp32
  static_assert(!(kFp8 && kVarlen), "varlen is 16-bit only");

  // Q and K are read K-major (head dim contiguous). V is the B operand of P @ V, whose reduction
  // runs over keys: 16-bit V is loaded into a (d, keys) MN-major layout; e4m3 V comes transposed
  // (keys contiguous) and is loaded K-major.
  using SmemLayoutQ = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<T>{},
                                             Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  using SmemLayoutK = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<T>{},
                                             Shape<Int<kBlockN>, Int<kHeadDim>, Int<kStages>>{}));
  using SmemLayoutV = typename VSmemLayout<kFp8, T, kHeadDim, kBlockN, kStages>::type;
  static constexpr GMMA::Major kMajorV = kFp8 ? GMMA::Major::K : GMMA::Major::MN;

  // One 64-row MMA atom per consumer warpgroup, stacked along M.
  using AtomLayout = Layout<Shape<Int<kConsumerWG>, _1, _1>>;
  using MmaQK = decltype(make_tiled_mma(
      GMMA::ss_op_selector<T, T, float, Shape<_64, Int<kBlockN>, Int<kHeadDim>>>(), AtomLayout{}));
  using MmaPV = decltype(make_tiled_mma(
      GMMA::rs_op_selector<T, T, float, Shape<_64, Int<kHeadDim>, Int<kBlockN>>, GMMA::Major::K, kMajorV>(),
      AtomLayout{}));

  // Global views handed to TMA: Q/K as (seq, d, head, batch), V as (d, seq, head, batch) with d
  // contiguous (16 bit) or keys contiguous (e4m3, V^T).
  using ShapeG = Shape<int32_t, int32_t, int32_t, int32_t>;
  using StrideQK = Stride<int64_t, _1, int64_t, int64_t>;
  using StrideV = std::conditional_t<kFp8, Stride<int64_t, _1, int64_t, int64_t>, Stride<_1, int64_t, int64_t, int64_t>>;
  using TmaQ = decltype(make_tma_copy(SM90_TMA_LOAD{},
      make_tensor(make_gmem_ptr(static_cast<T const*>(nullptr)), ShapeG{}, StrideQK{}),
      SmemLayoutQ{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}, _1{}));
  using TmaLoadKV = std::conditional_t<kClusterM == 1, SM90_TMA_LOAD, SM90_TMA_LOAD_MULTICAST>;
  using TmaK = decltype(make_tma_copy(TmaLoadKV{},
      make_tensor(make_gmem_ptr(static_cast<T const*>(nullptr)), ShapeG{}, StrideQK{}),
      take<0, 2>(SmemLayoutK{}), Shape<Int<kBlockN>, Int<kHeadDim>>{}, Int<kClusterM>{}));
  using TmaV = decltype(make_tma_copy(TmaLoadKV{},
      make_tensor(make_gmem_ptr(static_cast<T const*>(nullptr)), ShapeG{}, StrideV{}),
      take<0, 2>(SmemLayoutV{}), Shape<Int<kHeadDim>, Int<kBlockN>>{}, Int<kClusterM>{}));

  // The output tile staged in shared memory, one (64, d) slice per consumer warpgroup, leaves by one
  // TMA store per warpgroup: where the buffer fits beside Q and the K/V stages (not at hd128's 176-key
  // blocks, nor hd256), not for varlen, whose segment ends the box would write past, and not when
  // merging (no out to write).
  static constexpr int kBytesTiles = int((kBlockM + 2 * kStages * kBlockN) * kHeadDim * sizeof(T));
  static constexpr bool kSmemO = !kVarlen && !kMerge && kBytesTiles + kBlockM * kHeadDim * int(sizeof(TOut)) + 1024 <= 227 * 1024;
  // Where it does not fit, the staging lies over V's stages (kOverV, FA3's scheme): the two warpgroups
  // first wait for each other's last P V, and the producer holds the next tile's V loads until the
  // stores have read it (producer.h, o_free). At hd256 +0-12% at base clock; at hd128's 176-key blocks
  // -2 to 0% (bench/NOTES.md run 63), so those keep the register epilogue (RINGFA3_O_OVER_V=1: A/B).
#ifndef RINGFA3_O_OVER_V
#define RINGFA3_O_OVER_V 0
#endif
  static constexpr bool kOverV = (RINGFA3_O_OVER_V || kHeadDim == 256) && !kSmemO && !kVarlen && !kMerge &&
                                 kClusterM == 1 && sizeof(TOut) == 2 &&
                                 kStages * kBlockN >= kBlockM;
  using SmemLayoutO = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<TOut>{},
                                             Shape<_64, Int<kHeadDim>, Int<kConsumerWG>>{}));
  using TmaO = decltype(make_tma_copy(SM90_TMA_STORE{},
      make_tensor(make_gmem_ptr(static_cast<TOut*>(nullptr)), ShapeG{}, StrideQK{}),
      take<0, 2>(SmemLayoutO{}), Shape<_64, Int<kHeadDim>>{}, _1{}));

  static constexpr uint32_t kBytesQ = kBlockM * kHeadDim * sizeof(T);
  static constexpr uint32_t kBytesKV = kBlockN * kHeadDim * sizeof(T);

  struct SharedStorage {
    alignas(1024) T q[cosize_v<SmemLayoutQ>];
    alignas(1024) T k[cosize_v<SmemLayoutK>];
    alignas(1024) T v[cosize_v<SmemLayoutV>];
    alignas(1024) TOut o[kSmemO ? cosize_v<SmemLayoutO> : 8];
    alignas(8) uint64_t q_full, q_empty;
    uint64_t k_full[kStages], k_empty[kStages], v_full[kStages], v_empty[kStages];
    uint64_t tile_full[2], tile_empty[2];
    uint64_t o_free;   // kOverV: count = consumer warpgroups, one phase per tile
    int tile_id[2];
    // Clusters: a stage is free in both CTAs (producer.h); after everything else, so that the other
    // kernels' layout is unchanged.
    struct PairBarriers {
      uint64_t k[kStages], v[kStages];
      uint64_t unit_full[2], unit_empty[2];   // the drawn pairs' mailbox (tile_scheduler.h)
      int unit[2];
    };
    struct NoPairBarriers {};
    std::conditional_t<(kClusterM > 1), PairBarriers, NoPairBarriers> pair;
  };
  static constexpr int kSmemBytes = int(sizeof(SharedStorage));
  static_assert(kSmemBytes <= 227 * 1024, "tile does not fit shared memory");
};

}  // namespace ringfa3
