// The tail split of an unmasked dense call. Its key-block CTAs all take the same time, so when their
// number is not a multiple of the SMs the last wave leaves SMs idle for a whole CTA: 2048 CTAs on 132
// SMs idle 64 of them, 3.2% of the kernel at every length (bench/NOTES-bwd.md run 149). Instead the
// last wave's tiles (their number mod the SMs) run as `pieces` CTAs each, over contiguous shares of the
// tile's query blocks. A piece writes its float32 dK, dV partial to its slot; the tile's last piece to
// finish adds every slot in piece order (the same sum whichever piece finishes last) and stores the
// tile. Masked calls launch their longest CTAs first instead (bwd_kernel.h); deterministic and varlen
// calls are not split, nor a ring's steps (a shared workspace, RingFa3BwdArgs::ws_rows): the previous
// step's dK/dV adds on the side stream already run in their last wave (bench/NOTES-bwd.md runs 42-43),
// and split, the ring was 0.2-0.4% slower (run 153).
#pragma once
#include <algorithm>
#include <cmath>
#include <cuda_runtime.h>
#include <cute/tensor.hpp>
#include "../warpgroup.h"
#include "bwd_args.h"
#include "bwd_instantiations.h"

#ifndef RINGFA3_BWD_SPLIT_MAX   // most pieces per tile; an A/B knob, 1 turns the split off
#define RINGFA3_BWD_SPLIT_MAX 4
#endif

namespace ringfa3 {

// A piece's fixed cost in query-block iterations: its prologue and epilogue (about 3600 + 3400 cycles
// at hd128 against about 4200 per 80-row iteration, run 149) and its partial's round trip through L2.
// At 2.0, 1k full split its tail in three and was 0.4% slower at base clock (run 150).
constexpr double kBwdSplitOverhead = 2.5;

struct BwdSplitPlan {
  long long whole;   // tiles run as one CTA each, first in launch order
  int tiles = 0;     // tiles split, after them
  int pieces = 1;    // CTAs per split tile
};

constexpr int bwd_block_n(int head_dim) { return head_dim == 256 ? 64 : kBwdBlockN; }   // BwdTraitsD256: 64 keys

// The split that shortens the tail most on `sms` SMs, by a model of equal iterations per query block.
inline BwdSplitPlan bwd_split_plan(RingFa3BwdArgs const& a, int sms) {
  int block_m = bwd_dense_block_m(a), block_n = bwd_block_n(a.d);
  long long tiles = (long long)((a.s_k + block_n - 1) / block_n) * a.b * a.h_kv;
  BwdSplitPlan plan{tiles};
  int tail = sms > 0 ? int(tiles % sms) : 0;
  bool unmasked = bwd_unmasked_own_workspace(a.window_left, a.window_right, a.ws_rows);
  if (a.cu_seqlens_q != nullptr || a.deterministic || !unmasked || tail == 0) return plan;
  int n_m = (a.s_q + block_m - 1) / block_m, group = a.h / a.h_kv;
  double best = double(n_m) * group;   // the tail unsplit
  for (int k = 2; k <= std::min(RINGFA3_BWD_SPLIT_MAX, n_m); ++k) {
    double t = std::ceil(double(tail) * k / sms) * (double((n_m + k - 1) / k) * group + kBwdSplitOverhead);
    if (t < best) best = t, plan.pieces = k;
  }
  if (plan.pieces > 1) plan.whole = tiles - tail, plan.tiles = tail;
  return plan;
}

// The current device's ordinal and SM count (the split's plan, and the launch).
inline cudaError_t current_device_sms(int* dev, int* sms) {
  cudaError_t err = cudaGetDevice(dev);
  return err != cudaSuccess ? err : cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, *dev);
}

// Piece `index` of the `count` of split tile `slot`; a whole tile is piece 0 of 1.
struct BwdPiece {
  int index = 0, count = 1, slot = 0;
};

// The tile's query blocks [mb, me) -> this piece's share.
__device__ __forceinline__ void piece_blocks(BwdPiece const& pc, int& mb, int& me) {
  int n = me - mb, first = mb;
  mb = first + n * pc.index / pc.count;
  me = first + n * (pc.index + 1) / pc.count;
}

// A piece's dK, dV partial goes to its slot. True for a whole tile, and for the tile's last piece to
// finish, whose dk, dv then hold the sum of every piece's, in piece order. Called by all 256 consumer
// threads (ct), which named barrier 1 counts.
template <class Frag>
__device__ bool merge_pieces(RingFa3BwdArgs const& a, BwdPiece const& pc, Frag& dk, Frag& dv, int ct) {
  constexpr int kVec = int(cute::size(Frag{})) / 4, kThreads = 256;
  static_assert(kVec * 4 == int(cute::size(Frag{})), "whole float4s per thread");
  if (pc.count == 1) return true;
  auto at = [&](int piece, int j, int i) {   // slot (tile, piece, tensor j): float4 i of each thread, threads fastest
    return reinterpret_cast<float4*>(a.split_partial) +
           ((size_t(pc.slot * pc.count + piece) * 2 + j) * kVec + i) * kThreads + ct;
  };
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    Frag& f = j == 0 ? dk : dv;
#pragma unroll
    for (int i = 0; i < kVec; ++i) *at(pc.index, j, i) = make_float4(f(4 * i), f(4 * i + 1), f(4 * i + 2), f(4 * i + 3));
  }
  __threadfence();     // this thread's partial is visible device-wide ...
  named_sync(1, kThreads);   // ... and so is every thread's before the count says so
  bool last = false;
  if (ct == 0) last = atomicAdd(a.split_count + pc.slot, 1) == pc.count - 1;
  if (!any_sync(1, kThreads, last)) return false;
  __threadfence();
  if (ct == 0) a.split_count[pc.slot] = 0;   // zero again for the next call
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    Frag& f = j == 0 ? dk : dv;
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
      for (int piece = 0; piece < pc.count; ++piece) {
        float4 x = piece == pc.index ? make_float4(f(4 * i), f(4 * i + 1), f(4 * i + 2), f(4 * i + 3))
                                     : __ldcg(at(piece, j, i));   // L2: other SMs wrote it
        s.x += x.x, s.y += x.y, s.z += x.z, s.w += x.w;
      }
      f(4 * i) = s.x, f(4 * i + 1) = s.y, f(4 * i + 2) = s.z, f(4 * i + 3) = s.w;
    }
  }
  return true;
}

}  // namespace ringfa3
