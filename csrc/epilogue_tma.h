// The output tile through shared memory: each consumer warpgroup writes its normalized (64, d) slice
// into its smem slice (128-byte swizzle, so a warp's 8 rows of register pairs hit distinct banks), and
// one of its threads hands the slice to a TMA store. Straight from the accumulators, a warp store
// covered 8 rows with 16 bytes of each, and the next tile's first instructions stalled on the
// registers those stores still held (ncu, run 51: 11% of the warps' samples at 1k causal).
// The TMA box clips rows past s_q; lse goes as in store_output.
#pragma once
#include <cute/arch/copy_sm90_tma.hpp>
#include <cutlass/arch/barrier.h>
#include "epilogue.h"
#include "params.h"
#include "warpgroup.h"

namespace ringfa3 {

// Named barrier of warpgroup wg's epilogue (ids above the ping-pong ones, consumer.h).
template <class Tr> __device__ __forceinline__ int epilogue_barrier(int wg) { return 1 + Tr::kConsumerWG + wg; }

template <class Tr, class Frag>
__device__ void store_output_tma(FwdParams<Tr> const& p, typename Tr::SharedStorage& ss, Frag const& o,
                                 float const (&inv)[2], float const (&lse)[2], int bi, int hi, int m_block, int wg,
                                 AccCoord const& c) {
  using namespace cute;
  using TOut = typename Tr::TOut;
  constexpr int N = int(size(Frag{}));
  RingFa3FwdArgs const& a = p.a;
  bool leader = threadIdx.x % 128 == 0;   // issues the warpgroup's stores, so it alone can wait on them
  if constexpr (Tr::kOverV) {
    named_sync(epilogue_barrier<Tr>(Tr::kConsumerWG), 128 * Tr::kConsumerWG);   // every P V has read V
  } else {
    if (leader) tma_store_wait<0>();        // the previous tile's store has read the slice
    named_sync(epilogue_barrier<Tr>(wg), 128);
  }
  // SmemLayoutO's bytes: the slice is (d / 64) blocks of 64 rows x 128 bytes; the 16-byte chunk j of
  // row r sits at chunk j ^ (r % 8). A thread's rows are row0 and row0 + 8 (same r % 8), so its stores
  // differ by constants and by the 8 swizzled chunk offsets, computed here: made opaque, the compiler
  // cannot hoist them out of the tile loop (hoisted, they spilled).
  static_assert(sizeof(TOut) == 2, "16-bit out");
  int x16 = (c.row0 % 8) * 16;
  asm volatile("" : "+r"(x16));
  char* staging = reinterpret_cast<char*>(Tr::kOverV ? static_cast<void*>(ss.v) : static_cast<void*>(ss.o));
  char* base = staging + wg * 64 * Tr::kHeadDim * 2 + c.row0 * 128 + c.col0 * 2;
#pragma unroll
  for (int i = 0; i < N; i += 2) {   // values i, i+1: adjacent columns of one row, in chunk i / 4
    int r = AccCoord::row_half(i), j = i / 4;
    int off = (j / 8) * 64 * 128 + r * 8 * 128 + (((j % 8) * 16) ^ x16);
    *reinterpret_cast<uint32_t*>(base + off) = pack2<TOut>(o(i) * inv[r], o(i + 1) * inv[r]);
  }
  cutlass::arch::fence_view_async_shared();   // the slice is visible to the TMA unit
  named_sync(epilogue_barrier<Tr>(wg), 128);
  if (leader) {
    Tensor sO = make_tensor(make_smem_ptr(reinterpret_cast<TOut*>(staging)), typename Tr::SmemLayoutO{})(_, _, wg);
    Tensor mO = p.tma_o.get_tma_tensor(make_shape(a.s_q, a.d, a.h, a.b));   // (s_q, d, h, b)
    Tensor gO = local_tile(mO(_, _, hi, bi), Shape<_64, Int<Tr::kHeadDim>>{},
                           make_coord(m_block * Tr::kConsumerWG + wg, _0{}));   // (64, d)
    auto tO = tma_partition(p.tma_o, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sO), group_modes<0, 2>(gO));
    copy(p.tma_o, get<1>(tO), get<0>(tO));
    tma_store_arrive();
    if constexpr (Tr::kOverV) {   // V's stages are free for the next tile once the store has read them
      tma_store_wait<0>();
      EmptyBarrier::arrive(&ss.o_free);
    }
  }
  store_lse(a, lse, bi, hi, 0, a.s_q, m_block * Tr::kBlockM + 64 * wg, c);
}

// Before the CTA exits: its last stores have read shared memory.
__device__ __forceinline__ void drain_output_tma() {
  if (threadIdx.x % 128 == 0) cute::tma_store_wait<0>();
}

}  // namespace ringfa3
