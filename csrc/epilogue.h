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

// Rows [0, s_q) of (batch bi, head hi) start at packed row q0: dense bi from row 0, varlen bi 0 from
// its segment's first row (lse and lse_acc are then (h, total rows)).
template <class T, class Frag>
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
      float mx = fmaxf(la, lse[r]);
      if (mx == -INFINITY) { lse_new[r] = -INFINITY; w_old[r] = 1.f; w_new[r] = 0.f; continue; }
      float ea = __expf(la - mx), eb = __expf(lse[r] - mx);
      lse_new[r] = mx + __logf(ea + eb);
      w_old[r] = ea / (ea + eb);
      w_new[r] = eb / (ea + eb) * inv[r];
    }
    __syncwarp();   // every lane of the quad has read lse_acc before lane 0 of it overwrites
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    int row = row_base + c.row0 + 8 * r;
    if (row >= s_q) continue;
    if (a.merge) {
      float* dst = a.out_acc + bi * a.oacc_stride[0] + (q0 + row) * a.oacc_stride[1] + hi * a.oacc_stride[2];
#pragma unroll
      for (int i = 2 * r; i < N; i += 4) {   // values i, i+1 of row half r are adjacent columns
        float2* p = reinterpret_cast<float2*>(dst + c.col(i));
        float2 old = *p;
        *p = make_float2(old.x * w_old[r] + o(i) * w_new[r], old.y * w_old[r] + o(i + 1) * w_new[r]);
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
