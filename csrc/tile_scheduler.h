// Persistent tile scheduler. grid = min(tiles, SMs). Each CTA starts at tile blockIdx.x; the next
// tile comes from a global atomic counter (a CTA that drew short causal tiles simply draws more;
// run 3/4: +20% causal over a static blockIdx.x + k * grid order, full attention unchanged). The producer thread draws the ids and hands them
// to the consumer warpgroups through a 2-slot smem ring (tile_id + mbarriers), one tile ahead.
//
// Tile order is chosen for L2: query heads are taken in chunks small enough that one chunk's K/V
// stays in L2, and inside a chunk the query blocks run from the last one down, head fastest, so under
// a causal mask the longest tiles start first. The host picks heads_per_chunk (fwd_launch.h,
// balanced_chunk): equal chunks, and under a causal mask several waves of tiles each, so the last
// chunk's longest tiles do not run on alone after the rest.
// (Run 1's order, query block outermost across all heads, made every concurrent CTA stream a
// different head's K/V from HBM; run 2's static round-robin over the chunked order left causal
// CTAs badly unbalanced, since grid ~ query blocks per chunk.)
// Varlen: the query-block axis is the host's list of (segment, query block) tiles, taken from its
// last entry down (params.h, locate), so the host puts the longest last.
#pragma once
#include "pipeline.h"

namespace ringfa3 {

struct ScheduledTile { int m_block, head, batch; };

// kCluster 2 (full attention, kernel_traits.h kClusterM): tile t is CTA t % 2 of query-block pair t / 2,
// the pairs in the order above; a cluster's two CTAs take the two blocks of one pair, so they share
// the (batch, head) and its K/V. The order is static there (t + grid): both CTAs must walk the same
// pairs, and full-attention tiles are all equally long.
template <int kCluster = 1>
struct TileScheduler {
  int n_tiles, n_m_blocks, h, heads_per_chunk;
  int* counter;   // [0] tiles drawn beyond the first wave, [1] CTAs finished drawing
  using Tile = ScheduledTile;

  __device__ bool valid(int t) const { return t < n_tiles; }
  __device__ Tile decode(int t) const {
    int u = t / kCluster, n_m = n_m_blocks / kCluster;   // query-block pairs when kCluster is 2
    int n_hb = n_tiles / n_m_blocks;                  // (head, batch) pairs
    int chunk = u / (heads_per_chunk * n_m);
    int r = u - chunk * heads_per_chunk * n_m;
    int g = min(heads_per_chunk, n_hb - chunk * heads_per_chunk);   // last chunk may be short
    int hb = chunk * heads_per_chunk + r % g;
    return Tile{kCluster * (n_m - 1 - r / g) + t % kCluster, hb % h, hb / h};
  }
  // Producer thread only: the tile after t.
  __device__ int draw_next(int t) const {
    if constexpr (kCluster > 1) return t + int(gridDim.x);
    else return int(gridDim.x) + atomicAdd(counter, 1);
  }
  // Producer thread, after drawing an invalid id: the last CTA to get there resets the counter
  // for the next launch (every CTA has finished drawing by then).
  __device__ void finish() const {
    if constexpr (kCluster > 1) return;   // no counter drawn
    if (atomicAdd(counter + 1, 1) == int(gridDim.x) - 1) {
      atomicExch(counter, 0);
      atomicExch(counter + 1, 0);
    }
  }
};

// Smem hand-off of tile ids from the producer thread to the consumer warps.
struct TileRing {
  int* ids;            // [2]
  uint64_t* full;      // [2], count 1 (producer)
  uint64_t* empty;     // [2], count = consumer warps
  PipeState<2> st;

  __device__ void publish(int t) {   // producer
    EmptyBarrier::wait(&empty[st.index], st.phase ^ 1);
    ids[st.index] = t;
    EmptyBarrier::arrive(&full[st.index]);   // release: orders the id store before the arrive
    st.advance();
  }
  __device__ int receive() {         // every consumer thread
    FullBarrier::wait(&full[st.index], st.phase);
    // Broadcast from lane 0: the compiler then knows the tile (and the loop bounds and pipeline
    // stages derived from it) is warp-uniform and keeps them in uniform registers.
    int t = __shfl_sync(0xffffffff, ids[st.index], 0);
    warp_release(&empty[st.index]);
    st.advance();
    return t;
  }
};

}  // namespace ringfa3
