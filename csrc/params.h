// Kernel-side parameters: the three TMA descriptors plus the plain arguments, resolved once on the
// host (window bounds made finite, scale in log2 units) so the kernel does no per-tile setup math.
#pragma once
#include "cta_trace.h"
#include "fwd_args.h"
#include "seq_slice.h"
#include "tile_scheduler.h"

namespace ringfa3 {

// Stand-in for "unbounded" window sides: far beyond any sequence, small enough not to overflow int.
constexpr int kUnbounded = 1 << 29;

// Keys in V's global view: s_k, or for e4m3 V^T s_k rounded up to the 16-key groups its key order
// permutes within (the zero padding of the last group is read, and meets P = 0).
template <class Tr>
__host__ __device__ inline int v_keys(RingFa3FwdArgs const& a) {
  return Tr::kFp8 ? (a.s_k + 15) / 16 * 16 : a.s_k;
}

template <class Tr>
struct FwdParams {
  typename Tr::TmaQ tma_q;
  typename Tr::TmaK tma_k;
  typename Tr::TmaV tma_v;
  RingFa3FwdArgs a;
  int n_m_blocks;      // ceil(s_q / kBlockM); varlen: n_varlen_tiles
  int n_tiles;         // n_m_blocks * h * b (varlen: n_m_blocks * h)
  int group;           // h / h_kv (query heads per kv head)
  int heads_per_chunk; // tile order: query heads whose K/V fit L2 together (see tile_scheduler.h)
  int diag_offset;     // s_k - s_q: key j is on row i's causal diagonal when j == i + diag_offset (dense)
  int win_left, win_right;   // finite (kUnbounded for -1)
  float scale_log2;    // softmax_scale * log2(e)
  int* tile_counter;   // dynamic scheduler: 2 ints, zero at launch, reset by the kernel at exit
  typename Tr::TmaO tma_o;   // out through shared memory (Tr::kSmemO); set only when o_tma
  int o_tma;                 // 1: this launch stores out by TMA (16-bit out, not merging, aligned)
  unsigned long long* trace; // debug builds: per-tile timeline (cta_trace.h), else NULL
};

// The scheduled tile as the kernel computes it. Varlen schedules entries of the tile list
// (tile.m_block indexes it, batch is 0) and becomes the listed (segment, query block).
template <class Tr>
__device__ __forceinline__ Extent locate(FwdParams<Tr> const& p, ScheduledTile& tile) {
  if constexpr (Tr::kVarlen) {
    int seg = p.a.varlen_tiles[2 * tile.m_block];
    tile.m_block = p.a.varlen_tiles[2 * tile.m_block + 1];
    tile.batch = seg;
    return segment_extent(p.a.cu_seqlens_q, p.a.cu_seqlens_k, seg);
  } else {
    return Extent{0, p.a.s_q, 0, p.a.s_k, p.diag_offset};
  }
}

}  // namespace ringfa3
