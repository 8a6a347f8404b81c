// Backward preprocessing, one pass over (dO, O) before the main kernel:
//   delta[b, h, i]    = sum_d dO[b, i, h, d] * O[b, i, h, d]        (fp32)
//   lse_log2[b, h, i] = lse * log2(e), +inf where lse = -inf (a row that sees no key: P = 0, not NaN)
// and zeroes the fp32 dQ accumulator and the deterministic-order semaphores. The padding rows of each
// batch entry's (or segment's) workspace get delta 0 and lse +inf, so the main kernel needs no row
// bounds.
// Thread layout: kChunks = d / 8 threads per row, 8 elements (16 bytes of a 16-bit tensor) each.
#pragma once
#include <cmath>
#include <cuda_runtime.h>
#include <cute/tensor.hpp>
#include "bwd_args.h"
#include "bwd_params.h"

namespace ringfa3 {

template <class T>
__device__ __forceinline__ void load8(const T* p, float (&x)[8]) {
  uint4 raw = *reinterpret_cast<const uint4*>(p);
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) x[i] = float(e[i]);
}
__device__ __forceinline__ void load8(const float* p, float (&x)[8]) {
  float4 lo = *reinterpret_cast<const float4*>(p), hi = *reinterpret_cast<const float4*>(p + 4);
  x[0] = lo.x; x[1] = lo.y; x[2] = lo.z; x[3] = lo.w; x[4] = hi.x; x[5] = hi.y; x[6] = hi.z; x[7] = hi.w;
}

// This thread's place in the preprocess grid: (row blocks, h, b) blocks of 256 threads; varlen: the
// row blocks cover a head's whole packed workspace (b = 1), not the longest segment once per segment
// (run 12: with 191 documents of up to ~16k rows that grid held millions of empty blocks).
template <int kHeadDim>
struct RowChunk {
  static constexpr int kChunks = kHeadDim / 8;
  static constexpr int kRows = 256 / kChunks;
  int hi = blockIdx.y, bi = blockIdx.z;
  int chunk = threadIdx.x % kChunks;
  int row = blockIdx.x * kRows + threadIdx.x / kChunks;
};

// Where a grid row lives, for both kernels: its batch entry (varlen: segment) bi, its row in it, the
// entry's first packed row and length, and its first workspace row of head hi (varlen: as the main
// kernel lays segments out, varlen_ws_row0 in bwd_params.h). Varlen grid rows are workspace rows;
// those in the gaps between segments' padded tiles get a row past the padding.
template <int kBlockM, bool kVarlen>
struct WsRows {
  int bi, row, q0, s_q;
  size_t ws0;
  __device__ WsRows(RingFa3BwdArgs const& a, int grid_bi, int hi, int grid_row, int ws_rows) {
    if constexpr (kVarlen) {
      int lo = 0, up = a.b;   // the last segment whose workspace starts at or before grid_row
      while (up - lo > 1) {
        int mid = (lo + up) / 2;
        if (varlen_ws_row0<kBlockM>(a.cu_seqlens_q[mid], mid) <= grid_row) lo = mid;
        else up = mid;
      }
      bi = lo;
      Extent e = segment_extent(a.cu_seqlens_q, a.cu_seqlens_k, bi);
      q0 = e.q0;
      s_q = e.s_q;
      int r0 = varlen_ws_row0<kBlockM>(q0, bi);
      row = grid_row - r0;
      ws0 = size_t(hi) * ws_rows + r0;
    } else {
      bi = grid_bi;
      row = grid_row;
      q0 = 0;
      s_q = a.s_q;
      ws0 = (size_t(bi) * a.h + hi) * ws_rows;
    }
  }
};

// ws_rows: the workspace rows of one batch entry and head (dense), or of one head (varlen);
// call_rows: the dense call's rows, s_q padded to kBlockM (at most ws_rows, which may be a shared
// workspace's: RingFa3BwdArgs::ws_rows).
template <class T, class TO, int kHeadDim, int kBlockM, bool kVarlen>
__global__ void __launch_bounds__(256) bwd_preprocess_kernel(RingFa3BwdArgs a, int ws_rows, int call_rows) {
  auto [hi, grid_bi, chunk, grid_row] = RowChunk<kHeadDim>{};
  WsRows<kBlockM, kVarlen> w(a, grid_bi, hi, grid_row, ws_rows);
  int pad = kVarlen ? (w.s_q + kBlockM - 1) / kBlockM * kBlockM : call_rows, row = w.row;
  if (row >= pad) return;
  size_t ws_row = w.ws0 + row;
  int bb = kVarlen ? 0 : w.bi, src = w.q0 + row;   // varlen: packed rows, one batch entry
  float dot = 0.f;
  if (row < w.s_q) {
    float x[8], y[8];
    load8(static_cast<const T*>(a.dout) + bb * a.do_stride[0] + src * a.do_stride[1] + hi * a.do_stride[2] + chunk * 8, x);
    load8(static_cast<const TO*>(a.out) + bb * a.o_stride[0] + src * a.o_stride[1] + hi * a.o_stride[2] + chunk * 8, y);
#pragma unroll
    for (int i = 0; i < 8; ++i) dot += x[i] * y[i];
  }
#pragma unroll
  for (int w2 = RowChunk<kHeadDim>::kChunks / 2; w2 > 0; w2 /= 2) dot += __shfl_xor_sync(0xffffffff, dot, w2);
  float4* acc = reinterpret_cast<float4*>(a.dq_accum + ws_row * kHeadDim + chunk * 8);
  acc[0] = make_float4(0.f, 0.f, 0.f, 0.f);
  acc[1] = make_float4(0.f, 0.f, 0.f, 0.f);
  if (chunk == 0) {
    float l = row < w.s_q ? a.lse[bb * a.lse_stride[0] + hi * a.lse_stride[1] + src] : -INFINITY;
    a.lse_log2[ws_row] = l == -INFINITY ? INFINITY : l * float(M_LOG2E);
    a.delta[ws_row] = dot;
    if (a.deterministic && row % kBlockM == 0) {
      int* sem = a.semaphore + kBwdSemsPerTile * (ws_row / kBlockM);
#pragma unroll
      for (int i = 0; i < kBwdSemsPerTile; ++i) sem[i] = 0;
    }
  }
}

// Rows [row0, s_q) of a staged pass (kCols columns per row, pitch kPitch floats from column col0),
// scaled, to dq row q0 + row of batch entry bi and head hi: 16 or 32 contiguous bytes per thread.
template <class TQ, int kCols, int kBlockM, int kPitch>
__device__ __forceinline__ void convert_rows(RingFa3BwdArgs const& a, const float* rows_s, int row0, int s_q,
                                             int bi, int q0, int hi, int col0) {
  constexpr int kChunks = kCols / 8, kRowsPerPass = 256 / kChunks;
  int chunk = threadIdx.x % kChunks;
#pragma unroll
  for (int r = threadIdx.x / kChunks; r < kBlockM; r += kRowsPerPass) {
    int row = row0 + r;
    if (row >= s_q) break;
    float x[8];
    load8(&rows_s[r * kPitch + chunk * 8], x);
    TQ* dst = static_cast<TQ*>(a.dq) + bi * a.dq_stride[0] + (q0 + row) * a.dq_stride[1] + hi * a.dq_stride[2] +
              col0 + chunk * 8;
    if constexpr (sizeof(TQ) == 4) {
      float4* d4 = reinterpret_cast<float4*>(dst);
      float4 run0 = a.dq_accumulate ? d4[0] : make_float4(0.f, 0.f, 0.f, 0.f);   // a ring's running dQ
      float4 run1 = a.dq_accumulate ? d4[1] : make_float4(0.f, 0.f, 0.f, 0.f);
      d4[0] = make_float4(run0.x + x[0] * a.softmax_scale, run0.y + x[1] * a.softmax_scale,
                          run0.z + x[2] * a.softmax_scale, run0.w + x[3] * a.softmax_scale);
      d4[1] = make_float4(run1.x + x[4] * a.softmax_scale, run1.y + x[5] * a.softmax_scale,
                          run1.z + x[6] * a.softmax_scale, run1.w + x[7] * a.softmax_scale);
    } else {
      uint4 raw;
      TQ* e = reinterpret_cast<TQ*>(&raw);
#pragma unroll
      for (int i = 0; i < 8; ++i) e[i] = TQ(x[i] * a.softmax_scale);
      *reinterpret_cast<uint4*>(dst) = raw;
    }
  }
}

// dq[b, i, h, :] = softmax_scale * dq_accum[b, h, i, :], in the input dtype or fp32. One CTA per
// (kBlockM x d) workspace tile, which holds the main kernel's order (hand_dq): per warpgroup region
// (d split in two halves, or one full-width region), float4 j * 128 + t of the region holds the
// values (x, y), (x, y + 1), (x + 8, y), (x + 8, y + 1) of accumulator thread t,
//   x = (t / 32) * 16 + (t % 32) / 4,   y = 8 j + (t % 4) * 2,
// x a query and y a column of d, or the other way round for a query block that is not a multiple of
// 64 rows (dQ^T, BwdTraits::kDqT).
// The tile is read in that order (each warp 512 contiguous bytes), turned into rows in smem, and
// written row by row (16 / 32 contiguous bytes per thread). Reading the rows straight from the
// workspace left most of each sector to a later instruction (run 24: 77 us for 201 MB).
template <class TQ, int kHeadDim, int kBlockM, bool kVarlen>
__global__ void __launch_bounds__(256) bwd_convert_dq_kernel(RingFa3BwdArgs a, int ws_rows) {
  constexpr int kCols = kHeadDim >= 128 ? kHeadDim / 2 : kHeadDim;   // columns per region
  // Columns staged per pass: the whole tile up to d = 128; one region at d = 256 (static smem).
  constexpr int kPassCols = kHeadDim > 128 ? kCols : kHeadDim;
  constexpr int kPitch = kPassCols + 8;   // floats per smem row: 8 rows of a float2 store use 2 wavefronts
  __shared__ __align__(16) float rows_s[kBlockM * kPitch];
  int hi = blockIdx.y;
  WsRows<kBlockM, kVarlen> w(a, blockIdx.z, hi, blockIdx.x * kBlockM, ws_rows);
  if (w.row >= w.s_q) return;   // padding tile, or a varlen gap between segments
  const float4* tile = reinterpret_cast<const float4*>(a.dq_accum + (w.ws0 + w.row) * kHeadDim);
#pragma unroll
  for (int pass = 0; pass < kHeadDim / kPassCols; ++pass) {
    if (pass > 0) __syncthreads();   // the previous pass's rows are written out
#pragma unroll
    for (int j = 0; j < kBlockM * kPassCols / 4 / 256; ++j) {
      int q = pass * (kBlockM * kPassCols / 4) + j * 256 + threadIdx.x;
      int region = q / (kBlockM * kCols / 4), in = q % (kBlockM * kCols / 4);
      int t = in % 128, x = (t / 32) * 16 + (t % 32) / 4, y = (in / 128) * 8 + (t % 4) * 2;
      float4 v = tile[q];
      if constexpr (kBlockM % 64 != 0) {   // dQ^T (BwdTraits::kDqT): x a column of d, y a query
        int c = x + region * kCols - pass * kPassCols;
        rows_s[y * kPitch + c] = v.x;
        rows_s[(y + 1) * kPitch + c] = v.y;
        rows_s[y * kPitch + c + 8] = v.z;
        rows_s[(y + 1) * kPitch + c + 8] = v.w;
      } else {
        int c = y + region * kCols - pass * kPassCols;
        *reinterpret_cast<float2*>(&rows_s[x * kPitch + c]) = make_float2(v.x, v.y);
        *reinterpret_cast<float2*>(&rows_s[(x + 8) * kPitch + c]) = make_float2(v.z, v.w);
      }
    }
    __syncthreads();
    convert_rows<TQ, kPassCols, kBlockM, kPitch>(a, rows_s, w.row, w.s_q, kVarlen ? 0 : w.bi, w.q0, hi,
                                                 pass * kPassCols);
  }
}

}  // namespace ringfa3
