// Backward outputs:
//   hand_dq:     this warpgroup's dQ partial of one (query head, query block) into its smem slot,
//                for the dQ writer warp (bwd_dq_writer.h).
//   store_dkdv:  dK (times softmax_scale) and dV of the CTA's keys, input dtype or fp32, through
//                shared memory; rows from key0 (the segment's first, varlen).
#pragma once
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include "../epilogue.h"
#include "../pipeline.h"
#include "../warpgroup.h"
#include "bwd_mask.h"
#include "bwd_params.h"

namespace ringfa3 {

// The warpgroup's partial goes to its smem slot in register order (float4 j of thread t at
// j * 512 + 4 t: conflict-free), made visible to the async proxy, and is handed to the dQ writer warp
// (bwd_dq_writer.h), which reduce-adds it into the workspace; the tensor cores go on to the next block.
template <class Tr, class Frag>
__device__ void hand_dq(Frag const& dq, typename Tr::SharedStorage& ss, int wg, PipeState<Tr::kDqBufs>& slot) {
  constexpr int V = int(cute::size(Frag{}));
  static_assert(V * 128 == Tr::kDqPerWG && V % 4 == 0, "one warpgroup's dQ partial");
  int t = threadIdx.x % 128;
  EmptyBarrier::wait(&ss.dq_empty[slot.index][wg], slot.phase ^ 1);
  float* sdq = ss.dq[slot.index][wg];
#pragma unroll
  for (int j = 0; j < V / 4; ++j)
    reinterpret_cast<float4*>(sdq)[j * 128 + t] = make_float4(dq(4 * j), dq(4 * j + 1), dq(4 * j + 2), dq(4 * j + 3));
  cutlass::arch::fence_view_async_shared();
  __syncwarp();
  warp_release(&ss.dq_full[slot.index][wg]);
  slot.advance();
}

// Staged through shared memory: straight from the accumulators each warp store covered 8 rows with 16
// bytes of each; here each thread writes 16 contiguous bytes and 16 or 32 threads a whole row (run 30:
// +10% at 1k, +12% at 4k causal, even at 16k). The K, V, Q and dO tiles (contiguous from ss.k) are
// free once both warpgroups are past their last GEMM: the producer loads nothing after the consumers'
// last block (and nothing at all for a CTA with no query block). Region (tensor j, warpgroup w) holds
// the warpgroup's 64 rows (its keys; d = 256: all 64 keys, its d half) with room for fp32, at
// (2 j + w) times its size; the 16-byte chunks of row r are XOR-swizzled by r % 8, so that a warp's
// 8 rows of register pairs hit distinct banks.
template <class Tr, class Frag, class Coords>
__device__ void store_dkdv(RingFa3BwdArgs const& a, Frag& dk, Frag const& dv, Coords const& c,
                           typename Tr::SharedStorage& ss, BwdMask<Tr::kBlockM, Tr::kBlockN> const& mask,
                           int bi, int hk, int key0) {
  constexpr bool kColSplit = Tr::kRoleSplit;   // warpgroups own d halves (bwd_traits_d256.h), else 64 keys each
  constexpr int kD = Tr::kHeadDim, kCols = kColSplit ? kD / 2 : kD, N = int(cute::size(Frag{}));
  constexpr int kRegion = 64 * kCols * 4;
  using SS = typename Tr::SharedStorage;
  static_assert(offsetof(SS, v) == offsetof(SS, k) + sizeof(SS::k) && offsetof(SS, q) == offsetof(SS, v) + sizeof(SS::v) &&
                offsetof(SS, dout) == offsetof(SS, q) + sizeof(SS::q) && 4 * kRegion <= 2 * sizeof(SS::k) + 2 * sizeof(SS::q),
                "K, V, Q, dO tiles: one span that holds four regions");
  static_assert(kColSplit ? Tr::kBlockN == 64 : Tr::kBlockN == 128, "64 rows per warpgroup");
  int wg = kColSplit ? int(cute::get<1>(c(0))) / kCols : int(cute::get<0>(c(0))) / 64;
  int row0 = kColSplit ? 0 : 64 * wg, col0 = kColSplit ? kCols * wg : 0;   // the region's place in the tile
  named_sync(1, 256);   // both warpgroups' GEMMs are done with the tiles
  auto stage = [&](auto o) {   // o: the output element type
    using O = decltype(o);
    constexpr int kRowBytes = kCols * int(sizeof(O));
    auto at = [&](int j, int r, int byte) {   // region j's row r, byte offset in the row
      int chunk = (byte / 16) ^ (r % 8);
      return reinterpret_cast<char*>(ss.k) + (2 * j + wg) * kRegion + r * kRowBytes + chunk * 16 + byte % 16;
    };
#pragma unroll
    for (int i = 0; i < N; i += 2) {
      int r = int(cute::get<0>(c(i))) - row0, byte = (int(cute::get<1>(c(i))) - col0) * int(sizeof(O));
      float k0 = dk(i) * a.softmax_scale, k1 = dk(i + 1) * a.softmax_scale;
      if constexpr (sizeof(O) == 4) {
        *reinterpret_cast<float2*>(at(0, r, byte)) = make_float2(k0, k1);
        *reinterpret_cast<float2*>(at(1, r, byte)) = make_float2(dv(i), dv(i + 1));
      } else {
        *reinterpret_cast<uint32_t*>(at(0, r, byte)) = pack2<O>(k0, k1);
        *reinterpret_cast<uint32_t*>(at(1, r, byte)) = pack2<O>(dv(i), dv(i + 1));
      }
    }
    named_sync(2 + wg, 128);   // the warpgroup's rows are in smem
    constexpr int kChunks = kRowBytes / 16, kRowsPerPass = 128 / kChunks;
    int t = threadIdx.x % 128, chunk = t % kChunks;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      void* out = j == 0 ? a.dk : a.dv;
      int64_t const* st = j == 0 ? a.dk_stride : a.dv_stride;
#pragma unroll
      for (int r = t / kChunks; r < 64; r += kRowsPerPass) {
        int key = mask.key_lo + row0 + r;
        if (key >= mask.s_k) break;
        uint4 v = *reinterpret_cast<uint4 const*>(at(j, r, chunk * 16));
        char* dst = reinterpret_cast<char*>(static_cast<O*>(out) + bi * st[0] + (key0 + key) * st[1] + hk * st[2] + col0);
        *reinterpret_cast<uint4*>(dst + chunk * 16) = v;
      }
    }
  };
  if (a.grads_fp32) stage(float{});
  else stage(typename Tr::T{});
}

}  // namespace ringfa3
