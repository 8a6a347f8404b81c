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

struct OnlineSoftmax {
  float row_max[2];   // running max of raw scores (unscaled); -inf while every key so far is hidden
  float row_sum[2];   // partial sum of exp2 over this thread's columns
  float scale_log2;

  template <int kRow0, int kRow1>
  __device__ static constexpr bool mine(int i) { return AccCoord::row_half(i) >= kRow0 && AccCoord::row_half(i) < kRow1; }

  __device__ explicit OnlineSoftmax(float scale_log2_) : scale_log2(scale_log2_) {
    row_max[0] = row_max[1] = -INFINITY;
    row_sum[0] = row_sum[1] = 0.f;
  }

  // Turns the scores S of row halves [kRow0, kRow1) into unnormalized probabilities in place; returns
  // per-row factors by which the output accumulated so far must be multiplied. First block: nothing to
  // rescale. Both rows at once, or one at a time so a caller can overlap the second row's work with
  // waits that follow the first (consumer.h, kSplitSoftmax).
  // (Run 4: splitting the row max / sum into 4 independent chains measured no faster.)
  // kScaled (e4m3): the raw scores are the true ones divided by `c` > 0 (their dequantization
  // scale for this block): the max is taken raw and scaled once per row, and c joins the exp2's FMA,
  // instead of a multiply per score.
  // kPinRow1: the second row's max chain starts only once the first row's max is known (x - inf is
  // -inf, or NaN, which fmaxf drops), so ptxas runs it under the first row's exponentials (FA3's
  // order) instead of ahead of them.
  template <bool kFirst, bool kScaled, int kRow0, int kRow1, bool kPinRow1 = false, class Frag>
  __device__ void step(Frag& s, float (&rescale)[2], float c = 1.f) {
    float base[2];
    max_step<kFirst, kScaled, kRow0, kRow1, kPinRow1>(s, rescale, base, c);
    exp_step<kScaled, kRow0, kRow1>(s, base, row_sum, c);
  }

  // exp2's offset for a row whose max is m: a row with no visible key yet keeps max -inf; subtract 0
  // so exp2(-inf) stays 0, not NaN.
  __device__ float exp_offset(float m) const { return (m == -INFINITY ? 0.f : m) * scale_log2; }

  // step's two halves, for callers that work between them (consumer.h, kRescaleUnderExp): the
  // rows' new maxima, rescale factors and exp2 offsets (base), then the exponentials, summed into
  // `sums` (row_sum, or a block's own sums: lazy_exp_step).
  template <bool kFirst, bool kScaled, int kRow0, int kRow1, bool kPinRow1 = false, class Frag>
  __device__ void max_step(Frag& s, float (&rescale)[2], float (&base)[2], float c = 1.f) {
    constexpr int N = int(cute::size(Frag{}));
    float mx[2];
    if constexpr (kScaled) {
      mx[0] = mx[1] = -INFINITY;
    } else {
      mx[0] = row_max[0];
      mx[1] = row_max[1];
    }
    if constexpr (kPinRow1 && kRow0 == 1) mx[1] = fmaxf(mx[1], row_max[0] - INFINITY);
#pragma unroll
    for (int i = 0; i < N; ++i)
      if (mine<kRow0, kRow1>(i)) mx[AccCoord::row_half(i)] = fmaxf(mx[AccCoord::row_half(i)], s(i));
#pragma unroll
    for (int r = kRow0; r < kRow1; ++r) {
      mx[r] = quad_max(mx[r]);
      if constexpr (kScaled) mx[r] = fmaxf(row_max[r], mx[r] * c);
      base[r] = exp_offset(mx[r]);
      rescale[r] = kFirst ? 1.f : fast_exp2(row_max[r] * scale_log2 - base[r]);
      if (!kFirst && row_max[r] == -INFINITY) rescale[r] = 0.f;   // nothing accumulated yet
      row_max[r] = mx[r];
      row_sum[r] *= rescale[r];
    }
  }

  template <bool kScaled, int kRow0, int kRow1, class Frag>
  __device__ void exp_step(Frag& s, float const (&base)[2], float (&sums)[2], float c = 1.f) {
    constexpr int N = int(cute::size(Frag{}));
    float scale_s = kScaled ? scale_log2 * c : scale_log2;
#pragma unroll
    for (int i = 0; i < N; ++i) {
      if (!mine<kRow0, kRow1>(i)) continue;
      int r = AccCoord::row_half(i);
      float p = fast_exp2(fmaf(s(i), scale_s, -base[r]));
      s(i) = p;
      sums[r] += p;
    }
  }

  // Lazy max (e4m3, consumer.h kLazyMax): the exponentials of a block against the running max as it stands,
  // without this block's max first (a dependent FMNMX chain and two shuffles before the first exp2). While
  // no score of the block exceeds that max by more than log2(448), each probability stays within e4m3's
  // range and the result equals the exact step's except for P's scale. Sums over this block go to blk;
  // returns whether this thread needs the exact step instead: a per-thread block sum above 448 (so some
  // probability may be; also inf and NaN), or keys of a row that had seen none (its max must be set).
  template <bool kScaled, class Frag>
  __device__ bool lazy_exp_step(Frag& s, float (&blk)[2], float c = 1.f) {
    float base[2] = {exp_offset(row_max[0]), exp_offset(row_max[1])};
    blk[0] = blk[1] = 0.f;
    exp_step<kScaled, 0, 2>(s, base, blk, c);
    bool exact = false;
#pragma unroll
    for (int r = 0; r < 2; ++r) exact |= !(blk[r] <= 448.f) || (row_max[r] == -INFINITY && blk[r] > 0.f);
    return exact;
  }
  __device__ void add_block_sums(float const (&blk)[2]) {
    row_sum[0] += blk[0];
    row_sum[1] += blk[1];
  }

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
