// The backward's view of the mask: which query blocks a key block must visit, which of those pairs
// need element masks, and the mask on a transposed (keys x queries) score tile.
// Key j is visible to query i iff  j < s_k  and  i + off - left <= j <= i + off + right,
// off = s_k - s_q (bottom-right aligned, as the forward's mask.h).
#pragma once
#include <cmath>
#include <cute/tensor.hpp>
#include "../mask.h"   // AccCoord
#include "bwd_params.h"

namespace ringfa3 {

template <int kBlockM, int kBlockN>
struct BwdMask {
  int s_q, s_k, off, left, right;
  int key_lo, key_hi;   // first / last key of this CTA's block (key_hi may pass s_k - 1)

  __device__ BwdMask(int n_block, int s_q_, int s_k_, int off_, int left_, int right_)
      : s_q(s_q_), s_k(s_k_), off(off_), left(left_), right(right_) {
    key_lo = n_block * kBlockN;
    key_hi = key_lo + kBlockN - 1;
  }
  // Query blocks [m_begin, m_end) hold every query that sees a key of the block.
  __device__ int m_begin() const { return max(0, key_lo - off - right) / kBlockM; }
  __device__ int m_end() const {
    int last = min(s_q - 1, min(key_hi, s_k - 1) - off + left);   // last query that sees a key
    return last < 0 ? 0 : last / kBlockM + 1;
  }
  // Place of this key block in query block m's deterministic dQ order: the key blocks that m visits,
  // from the forward's n_end - 1 down (high_first) or its n_begin up. A band mask (causal, windows)
  // starts a higher key block's CTA at a later query block; with the CTAs launched highest first,
  // the block ahead in the order has passed m by the time this one reaches it, where lowest first
  // makes a wavefront of waits (run 25: deterministic 1k causal at 0.77 of the atomic speed). The CTA
  // launch order must match (bwd_kernel.h).
  __device__ int rank_in(int m, bool high_first) const {
    if (high_first) {
      int row_hi = min(m * kBlockM + kBlockM, s_q) - 1;
      return min(s_k - 1, row_hi + off + right) / kBlockN - key_lo / kBlockN;   // from m's last key
    }
    return key_lo / kBlockN - max(0, m * kBlockM + off - left) / kBlockN;      // from m's first key
  }
  // True when some (query, key) pair of (query block m, this key block) is hidden.
  __device__ bool partial(int m) const {
    int q_lo = m * kBlockM, q_hi = q_lo + kBlockM - 1;
    return key_hi >= s_k || key_hi > q_lo + off + right || key_lo < q_hi + off - left;
  }
  // Hidden entries of a transposed score fragment set to -inf; coords (key, query) inside the tile.
  template <class Frag, class Coords>
  __device__ void apply(Frag& s, Coords const& c, int m) const {
    // The WGMMA accumulator layout (acc_layout.h) with keys as rows: each of the thread's two keys
    // sees the queries [lo, hi] of the block; relative to the thread's first column the bounds meet
    // each value's constant column offset (the forward's BlockMask::apply does the same).
    int col0 = int(cute::get<1>(c(0))), lo[2], hi[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      int key = key_lo + int(cute::get<0>(c(2 * h)));   // values 0 and 2: the two row halves
      int q0 = m * kBlockM + col0;
      lo[h] = key < s_k ? key - off - right - q0 : 1;
      hi[h] = key < s_k ? key - off + left - q0 : 0;
    }
#pragma unroll
    for (int i = 0; i < int(cute::size(s)); ++i) {
      int k = AccCoord::col_offset(i), h = AccCoord::row_half(i);
      if (k < lo[h] || k > hi[h]) s(i) = -INFINITY;
    }
  }
};

// The mask of key block n_block of batch entry (varlen: segment) e, as every role of the kernel sees it.
template <class Tr>
__device__ __forceinline__ BwdMask<Tr::kBlockM, Tr::kBlockN> bwd_block_mask(BwdParams<Tr> const& p, Extent const& e,
                                                                             int n_block) {
  return BwdMask<Tr::kBlockM, Tr::kBlockN>(n_block, e.s_q, e.s_k, e.off, p.win_left, p.win_right);
}

}  // namespace ringfa3
