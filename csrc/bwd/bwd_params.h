// Kernel-side parameters of the backward main kernel: TMA descriptors plus resolved scalars, and
// where a batch entry (varlen: a segment) lives in the packed tensors and in the workspace.
#pragma once
#include <cstddef>
#include "../seq_slice.h"
#include "bwd_args.h"
#include "../cta_trace.h"

namespace ringfa3 {

constexpr int kBwdUnbounded = 1 << 29;   // stands for an unbounded window side
// Key blocks of a head launched together in deterministic mode (bwd_kernel.h).
constexpr int kBwdDetGroup = 8;
// Deterministic mode: query blocks a CTA starts behind the one whose dQ adds it follows (bwd_launch.h).
constexpr float kBwdDetLag = 1.5f;
// Masked calls: bytes of Q, dO and dQ sums (per query row and head dim column, 8) that a run of the
// launch order shares in L2 (bwd_launch.h).
constexpr double kBwdRunL2Bytes = 32.0 * 1024 * 1024;
// Deterministic-order semaphores per workspace tile: one per warpgroup's d half (head dim 64, where
// both warpgroups add full-width partials: one, shared; bwd_dq_writer.h).
constexpr int kBwdSemsPerTile = 2;

template <class Tr>
struct BwdParams {
  typename Tr::TmaQ tma_q;
  typename Tr::TmaQ tma_do;
  typename Tr::TmaK tma_k;
  typename Tr::TmaK tma_v;
  RingFa3BwdArgs a;
  int n_n_blocks;     // dense: key blocks of a batch entry, ceil(s_k / kBlockN) (varlen: unused)
  int ws_rows;        // workspace rows per (batch entry, head); varlen per head (bwd_launch.h)
  int group;          // h / h_kv
  int diag_offset;    // s_k - s_q
  int win_left, win_right;   // finite
  float scale_log2;   // softmax_scale * log2(e)
  int launch_heads;    // (kv head, batch) pairs interleaved in a run of the launch order (bwd_kernel.h)
  bool det_high_first;   // deterministic dQ order: key blocks highest first (BwdMask::rank_in)
  int split_from;     // launch index of the first piece of a split tile (bwd_split.h); the grid size if none
  int split_pieces;   // CTAs per split tile
  unsigned long long* trace;   // debug builds: per-CTA timeline (cta_trace.h), else NULL
};

// Batch entry bi's rows (varlen: segment bi's), as the forward finds a tile's (seq_slice.h).
template <class Tr>
__device__ __forceinline__ Extent bwd_extent(BwdParams<Tr> const& p, int bi) {
  if constexpr (Tr::kVarlen) return segment_extent(p.a.cu_seqlens_q, p.a.cu_seqlens_k, bi);
  else return Extent{0, p.a.s_q, 0, p.a.s_k, p.diag_offset};
}

// Varlen workspace: segment seg's rows of a head start at (q0 / kBlockM + seg) * kBlockM, past the
// padded rows of every segment before it.
template <int kBlockM>
__device__ __forceinline__ int varlen_ws_row0(int q0, int seg) { return (q0 / kBlockM + seg) * kBlockM; }

// Index of the workspace's kBlockM-row tile (of dq_accum, lse_log2, delta, semaphore pairs) that
// holds query block m of (bi, head).
template <class Tr>
__device__ __forceinline__ size_t ws_tile(BwdParams<Tr> const& p, Extent const& e, int bi, int head, int m) {
  if constexpr (Tr::kVarlen)
    return (size_t(head) * p.ws_rows + varlen_ws_row0<Tr::kBlockM>(e.q0, bi)) / Tr::kBlockM + m;
  else return (size_t(bi) * p.a.h + head) * (p.ws_rows / Tr::kBlockM) + m;
}

}  // namespace ringfa3
