// Online softmax over key blocks (log2 domain). Each thread owns two query rows of the warpgroup
// tile; row maxima are made exact across the quad every block (the rescale factor must agree),
// while row sums stay per-thread partial sums until the end (one quad reduction, not one per block).
#pragma once
#include <cmath>
#include <cute/tensor.hpp>
#include "acc_layout.h"

namespace ringfa3 {

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// kChains > 1 (not yet measured on a GPU): split each row's max and sum into independent chains,
// so the reductions are kChains times shorter dependency chains on the softmax critical path.
template <int kChains = 1>
struct OnlineSoftmax {
  static_assert(kChains == 1 || kChains == 2 || kChains == 4, "chains: 1, 2 or 4");
  float row_max[2];   // running max of raw scores (unscaled); -inf while every key so far is hidden
  float row_sum[2];   // partial sum of exp2 over this thread's columns
  float scale_log2;

  __device__ explicit OnlineSoftmax(float scale_log2_) : scale_log2(scale_log2_) {
    row_max[0] = row_max[1] = -INFINITY;
    row_sum[0] = row_sum[1] = 0.f;
  }

  // Turns scores S into unnormalized probabilities in place; returns per-row factors by which the
  // output accumulated so far must be multiplied. First block: nothing to rescale.
  template <bool kFirst, class Frag>
  __device__ void step(Frag& s, float (&rescale)[2]) {
    constexpr int N = int(cute::size(Frag{}));
    float mx[2] = {row_max[0], row_max[1]};
    if constexpr (kChains == 1) {
#pragma unroll
      for (int i = 0; i < N; ++i) mx[AccCoord::row_half(i)] = fmaxf(mx[AccCoord::row_half(i)], s(i));
    } else {
      float part[2][kChains];
#pragma unroll
      for (int c = 0; c < kChains; ++c) part[0][c] = mx[0], part[1][c] = mx[1];
#pragma unroll
      for (int i = 0; i < N; ++i) {
        float& m = part[AccCoord::row_half(i)][chain(i)];
        m = fmaxf(m, s(i));
      }
#pragma unroll
      for (int c = 0; c < kChains; ++c) mx[0] = fmaxf(mx[0], part[0][c]), mx[1] = fmaxf(mx[1], part[1][c]);
    }
    float base[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = quad_max(mx[r]);
      // A row with no visible key yet keeps max -inf; subtract 0 so exp2(-inf) stays 0, not NaN.
      base[r] = (mx[r] == -INFINITY ? 0.f : mx[r]) * scale_log2;
      rescale[r] = kFirst ? 1.f : fast_exp2(row_max[r] * scale_log2 - base[r]);
      if (!kFirst && row_max[r] == -INFINITY) rescale[r] = 0.f;   // nothing accumulated yet
      row_max[r] = mx[r];
      row_sum[r] *= rescale[r];
    }
    if constexpr (kChains == 1) {
#pragma unroll
      for (int i = 0; i < N; ++i) {
        int r = AccCoord::row_half(i);
        float p = fast_exp2(fmaf(s(i), scale_log2, -base[r]));
        s(i) = p;
        row_sum[r] += p;
      }
    } else {
      float part[2][kChains] = {};
#pragma unroll
      for (int i = 0; i < N; ++i) {
        int r = AccCoord::row_half(i);
        float p = fast_exp2(fmaf(s(i), scale_log2, -base[r]));
        s(i) = p;
        part[r][chain(i)] += p;
      }
#pragma unroll
      for (int c = 0; c < kChains; ++c) row_sum[0] += part[0][c], row_sum[1] += part[1][c];
    }
  }
  // Chain of value i: alternate over the column pair and the 8-column chunks.
  __device__ static constexpr int chain(int i) { return ((i & 1) + 2 * (i >> 2)) % kChains; }

  // Final per-row normalizer 1/sum and lse (natural log); fully hidden rows give 0 and -inf.
  __device__ void finish(float softmax_scale, float (&inv)[2], float (&lse)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float sum = quad_sum(row_sum[r]);
      bool empty = !(sum > 0.f) || row_max[r] == -INFINITY;
      inv[r] = empty ? 0.f : 1.f / sum;
      lse[r] = empty ? -INFINITY : row_max[r] * softmax_scale + logf(sum);
    }
  }
};

}  // namespace ringfa3
