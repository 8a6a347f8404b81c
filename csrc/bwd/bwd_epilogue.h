// Backward outputs:
//   hand_dq:     this warpgroup's dQ partial of one (query head, query block) into its smem slot,
//                for the dQ writer warp (bwd_dq_writer.h).
//   store_dkdv:  dK (times softmax_scale) and dV of the CTA's keys, input dtype or fp32, straight
//                from the accumulator registers; rows from key0 (the segment's first, varlen).
#pragma once
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include "../epilogue.h"
#include "../pipeline.h"
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

template <class Tr, class Frag, class Coords>
__device__ void store_dkdv(RingFa3BwdArgs const& a, Frag& dk, Frag const& dv, Coords const& c,
                           BwdMask<Tr::kBlockM, Tr::kBlockN> const& mask, int bi, int hk, int key0) {
  using T = typename Tr::T;
  constexpr int N = int(cute::size(Frag{}));
#pragma unroll
  for (int i = 0; i < N; i += 2) {
    int key = mask.key_lo + int(cute::get<0>(c(i))), col = int(cute::get<1>(c(i)));
    if (key >= mask.s_k) continue;
    key += key0;   // the packed row (varlen: the segment's first key; dense 0)
    float k0 = dk(i) * a.softmax_scale, k1 = dk(i + 1) * a.softmax_scale;
    if (a.grads_fp32) {
      float* pk = static_cast<float*>(a.dk) + bi * a.dk_stride[0] + key * a.dk_stride[1] + hk * a.dk_stride[2] + col;
      float* pv = static_cast<float*>(a.dv) + bi * a.dv_stride[0] + key * a.dv_stride[1] + hk * a.dv_stride[2] + col;
      *reinterpret_cast<float2*>(pk) = make_float2(k0, k1);
      *reinterpret_cast<float2*>(pv) = make_float2(dv(i), dv(i + 1));
    } else {
      T* pk = static_cast<T*>(a.dk) + bi * a.dk_stride[0] + key * a.dk_stride[1] + hk * a.dk_stride[2] + col;
      T* pv = static_cast<T*>(a.dv) + bi * a.dv_stride[0] + key * a.dv_stride[1] + hk * a.dv_stride[2] + col;
      *reinterpret_cast<uint32_t*>(pk) = pack2<T>(k0, k1);
      *reinterpret_cast<uint32_t*>(pv) = pack2<T>(dv(i), dv(i + 1));
    }
  }
}

}  // namespace ringfa3
