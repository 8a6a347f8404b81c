// Which key blocks a query tile must visit, which of them need element masks, and the mask itself.
// Key j is visible to query i iff  j < s_k  and  i + off - left <= j <= i + off + right,
// off = s_k - s_q (bottom-right aligned causal, flash-attn convention; causal = right 0).
#pragma once
#include <cmath>
#include <cute/tensor.hpp>
#include "acc_layout.h"

namespace ringfa3 {

template <int kBlockM, int kBlockN>
struct BlockMask {
  int s_q, s_k, off, left, right;
  int row_lo, row_hi;   // first / last valid query row of this tile

  __device__ BlockMask(int m_block, int s_q_, int s_k_, int off_, int left_, int right_)
      : s_q(s_q_), s_k(s_k_), off(off_), left(left_), right(right_) {
    row_lo = m_block * kBlockM;
    row_hi = min(row_lo + kBlockM, s_q) - 1;
  }
  // Key blocks [n_begin, n_end) hold every visible key; empty when n_end <= n_begin.
  __device__ int n_begin() const { return max(0, row_lo + off - left) / kBlockN; }
  __device__ int n_end() const { return n_end_to(row_hi); }
  // The end of the blocks this tile's CTA walks (producer.h, consumer.h): its own, or in a cluster of
  // two (kernel_traits.h kClusterM) the union with its peer's, query block m_block ^ 1 (tile_scheduler.h).
  // Without a left window (fwd_launch.h) both begin at block 0, and the union ends where the later one
  // ends; the blocks past this tile's own are fully masked.
  template <int kCluster>
  __device__ int n_end_walked() const {
    if constexpr (kCluster == 1) return n_end();
    int peer_row_lo = (row_lo / kBlockM ^ 1) * kBlockM;
    return max(n_end(), n_end_to(min(peer_row_lo + kBlockM, s_q) - 1));
  }
  __device__ int n_end_to(int last_row) const {
    int last = min(s_k - 1, last_row + off + right);   // last visible key up to that row, may be < 0
    return last < 0 ? 0 : last / kBlockN + 1;
  }
  // True when some element of block n is hidden (tail of s_k, diagonal, or left window edge).
  __device__ bool partial(int n) const {
    int k_lo = n * kBlockN, k_hi = k_lo + kBlockN - 1;
    return k_hi >= s_k || k_hi > row_lo + off + right || k_lo < row_hi + off - left;
  }
  // Set hidden scores of block n to -inf. rows_base: this warpgroup's first row in the tile.
  template <class Frag>
  __device__ void apply(Frag& s, int n, int rows_base, AccCoord const& c) const {
    int r0 = row_lo + rows_base + c.row0;
    // Each of the thread's two rows sees keys [lo, hi); taken relative to the thread's first column
    // of the block, the bounds meet each value's constant column offset: two compares against an
    // immediate and a select per value, the row arithmetic done twice per block instead of per value.
    int base = n * kBlockN + c.col0, lo[2], hi[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      int row = r0 + 8 * h;
      lo[h] = row + off - left - base;
      hi[h] = min(s_k, row + off + right + 1) - base;
    }
#pragma unroll
    for (int i = 0; i < int(cute::size(s)); ++i) {
      int k = AccCoord::col_offset(i), h = AccCoord::row_half(i);
      if (k < lo[h] || k >= hi[h]) s(i) = -INFINITY;
    }
  }
};

}  // namespace ringfa3
