// Kernel-side parameters of the backward main kernel: TMA descriptors plus resolved scalars.
#pragma once
#include "bwd_args.h"

namespace ringfa3 {

constexpr int kBwdUnbounded = 1 << 29;   // stands for an unbounded window side

template <class Tr>
struct BwdParams {
  typename Tr::TmaQ tma_q;
  typename Tr::TmaQ tma_do;
  typename Tr::TmaK tma_k;
  typename Tr::TmaK tma_v;
  RingFa3BwdArgs a;
  int n_m_blocks;     // ceil(s_q / kBlockM): rows of the padded workspace = n_m_blocks * kBlockM
  int n_n_blocks;     // ceil(s_k / kBlockN)
  int group;          // h / h_kv
  int diag_offset;    // s_k - s_q
  int win_left, win_right;   // finite
  float scale_log2;   // softmax_scale * log2(e)
};

}  // namespace ringfa3
