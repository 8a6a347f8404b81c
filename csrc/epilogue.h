// Writes one warpgroup's 64 x d output slice straight from the accumulator registers (no smem
// round trip): normalized O in the input dtype or fp32, and lse; or, in merge mode, folds this
// block into the running fp32 (out_acc, lse_acc) in place so a ring never stores a bf16 partial.
#pragma once
#include <cmath>
#include <cute/tensor.hpp>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include "acc_layout.h"
#include "fwd_args.h"

namespace ringfa3 {

template <class T> __device__ __forceinline__ uint32_t pack2(float a, float b);
template <> __device__ __forceinline__ uint32_t pack2<cutlass::bfloat16_t>(float a, float b) {
  __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <> __device__ __forceinline__ uint32_t pack2<cutlass::half_t>(float a, float b) {
  __half2 v = __floats2half2_rn(a, b);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Four floats as e4m3 bytes (saturating), the first in the lowest byte.
__device__ __forceinline__ uint32_t pack4_e4m3(float a, float b, float c, float d) {
  uint32_t lo = __nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, __NV_E4M3);
  uint32_t hi = __nv_cvt_float2_to_fp8x2(make_float2(c, d), __NV_SATFINITE, __NV_E4M3);
  return lo | (hi << 16);
}

// lse of the thread's two rows, written by one lane of each quad (the four share the rows).
__device__ __forceinline__ void store_lse(RingFa3FwdArgs const& a, float const (&lse)[2], int bi, int hi, int q0,
                                          int s_q, int row_base, AccCoord const& c) {
  if (a.lse == nullptr || threadIdx.x % 4 != 0) return;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    int row = row_base + c.row0 + 8 * r;
    if (row < s_q) a.lse[bi * a.lse_stride[0] + hi * a.lse_stride[1] + q0 + row] = lse[r];
  }
}

// Weights of the running result (lse la) and of this block (lse lb, its output still scaled by 1 / inv):
// the softmax over the two lse values, and the merged lse.
__device__ __forceinline__ void merge_weights(float la, float lb, float inv, float& w_old, float& w_new,
                                              float& lse_new) {
  float mx = fmaxf(la, lb);
  if (mx == -INFINITY) { lse_new = -INFINITY; w_old = 1.f; w_new = 0.f; return; }
  float ea = __expf(la - mx), eb = __expf(lb - mx);
  lse_new = mx + __logf(ea + eb);
  w_old = ea / (ea + eb);
  w_new = eb / (ea + eb) * inv;
}

// Rows [0, s_q) of (batch bi, head hi) start at packed row q0: dense bi from row 0, varlen bi 0 from
// its segment's first row (lse and lse_acc are then (h, total rows)).
// kBatchLoads (the merge instantiations, kernel_traits.h kMerge): the merge issues a chunk's loads of
// out_acc before its stores. The compiler cannot tell the stores from later loads, so interleaved, each
// load waits out a full memory round trip (32 in a row at hd128); batched, the ring forward is 4-5% faster
// (bench/NOTES.md run 67). The plain instantiations keep the interleaved form they never run: without
// it ptxas schedules their key loop differently, 6-8% slower at hd128 8k-16k at base clock (run 66);
// with this form both kinds get that faster loop (identical SASS, modulo registers).
template <class T, class Frag, bool kBatchLoads = false>
__device__ void store_output(RingFa3FwdArgs const& a, Frag const& o, float const (&inv)[2],
                             float const (&lse)[2], int bi, int hi, int q0, int s_q, int row_base,
                             AccCoord const& c) {
  constexpr int N = int(cute::size(Frag{}));
  int lane = threadIdx.x % 32;
  float lse_new[2], w_old[2], w_new[2];
  if (a.merge) {
    // Weights of the running result and of this block: softmax over their two lse values.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      int row = row_base + c.row0 + 8 * r;
      float la = row < s_q ? a.lse_acc[bi * a.lacc_stride[0] + hi * a.lacc_stride[1] + q0 + row] : -INFINITY;
      merge_weights(la, lse[r], inv[r], w_old[r], w_new[r], lse_new[r]);
    }
    __syncwarp();   // every lane of the quad has read lse_acc before lane 0 of it overwrites
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    int row = row_base + c.row0 + 8 * r;
    if (row >= s_q) continue;
    if (a.merge) {
      float* dst = a.out_acc + bi * a.oacc_stride[0] + (q0 + row) * a.oacc_stride[1] + hi * a.oacc_stride[2];
      if constexpr (kBatchLoads) {
        constexpr int kChunk = N / 4 < 16 ? N / 4 : 16;   // float2 in flight: 32 registers (hd256 spills at 64)
#pragma unroll
        for (int i0 = 2 * r; i0 < N; i0 += 4 * kChunk) {
          float2 old[kChunk];
#pragma unroll
          for (int j = 0; j < kChunk; ++j) old[j] = *reinterpret_cast<float2 const*>(dst + c.col(i0 + 4 * j));
#pragma unroll
          for (int j = 0; j < kChunk; ++j) {
            int i = i0 + 4 * j;
            *reinterpret_cast<float2*>(dst + c.col(i)) =
                make_float2(old[j].x * w_old[r] + o(i) * w_new[r], old[j].y * w_old[r] + o(i + 1) * w_new[r]);
          }
        }
      } else {
#pragma unroll
        for (int i = 2 * r; i < N; i += 4) {   // values i, i+1 of row half r are adjacent columns
          float2* p = reinterpret_cast<float2*>(dst + c.col(i));
          float2 old = *p;
          *p = make_float2(old.x * w_old[r] + o(i) * w_new[r], old.y * w_old[r] + o(i + 1) * w_new[r]);
        }
      }
      if (lane % 4 == 0) a.lse_acc[bi * a.lacc_stride[0] + hi * a.lacc_stride[1] + q0 + row] = lse_new[r];
      continue;
    }
    if (a.out_fp32) {
      float* dst = static_cast<float*>(a.out) + bi * a.o_stride[0] + (q0 + row) * a.o_stride[1] + hi * a.o_stride[2];
#pragma unroll
      for (int i = 2 * r; i < N; i += 4)
        *reinterpret_cast<float2*>(dst + c.col(i)) = make_float2(o(i) * inv[r], o(i + 1) * inv[r]);
    } else {
      T* dst = static_cast<T*>(a.out) + bi * a.o_stride[0] + (q0 + row) * a.o_stride[1] + hi * a.o_stride[2];
#pragma unroll
      for (int i = 2 * r; i < N; i += 4)
        *reinterpret_cast<uint32_t*>(dst + c.col(i)) = pack2<T>(o(i) * inv[r], o(i + 1) * inv[r]);
    }
  }
  if (!a.merge) store_lse(a, lse, bi, hi, q0, s_q, row_base, c);
}

}  // namespace ringfa3
