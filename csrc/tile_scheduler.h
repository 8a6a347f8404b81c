// Persistent tile scheduler. grid = min(tiles, SMs). Each CTA starts at tile blockIdx.x; the next
// tile comes from a global atomic counter (a CTA that drew short causal tiles simply draws more;
// run 3/4: +20% causal over a static blockIdx.x + k * grid order, full attention unchanged). The producer thread draws the ids and hands them
// to the consumer warpgroups through a 2-slot smem ring (tile_id + mbarriers), one tile ahead.
//
// Tile order is chosen for L2: query heads are taken in chunks small enough that one chunk's K/V
// stays in L2, and inside a chunk the query blocks run from the last one down, head fastest, so under
// a causal mask the longest tiles start first. The host picks heads_per_chunk (fwd_launch.h), a
// divisor of the (head, batch) pairs, so the chunks are equal. A CTA draws its next tile only when its
// current tile's loads are out (producer.h), so the longest tiles left are the ones started next.
// (Run 1's order, query block outermost across all heads, made every concurrent CTA stream a
// different head's K/V from HBM; run 2's static round-robin over the chunked order left causal
// CTAs badly unbalanced, since grid ~ query blocks per chunk.)
// Varlen: the query-block axis is the host's list of (segment, query block) tiles, taken from its
// last entry down (params.h, locate), so the host puts the longest last.
#pragma once
#include <cute/arch/cluster_sm90.hpp>
#include "pipeline.h"

namespace ringfa3 {

struct ScheduledTile { int m_block, head, batch; };

// A cluster's draws reach its second CTA through a 2-slot mailbox in that CTA's shared memory: the
// first CTA's producer thread stores the drawn pair by st.async, which completes the slot's full
// barrier there; the receiver frees the slot by a remote arrive on the sender's empty barrier.
struct PairMailbox {
  int* slot;         // [2]
  uint64_t* full;    // [2], count 1: the receiver's expect_tx, completed by the sender's store
  uint64_t* empty;   // [2], count 1: the receiver's remote arrive
  PipeState<2> st;

  __device__ void send(int u) {   // CTA 0 -> CTA 1
    EmptyBarrier::wait(&empty[st.index], st.phase ^ 1);
    asm volatile("{\n .reg .b32 d, b;\n mapa.shared::cluster.u32 d, %0, 1;\n mapa.shared::cluster.u32 b, %1, 1;\n"
                 " st.async.shared::cluster.mbarrier::complete_tx::bytes.u32 [d], %2, [b];\n}"
                 :: "r"(cute::cast_smem_ptr_to_uint(&slot[st.index])),
                    "r"(cute::cast_smem_ptr_to_uint(&full[st.index])), "r"(u) : "memory");
    st.advance();
  }
  // CTA 1. The last message (u >= n_units: nothing left) is not freed, so no arrive can reach a sender
  // that has moved on to its exit.
  __device__ int receive(int n_units) {
    FullBarrier::arrive_and_expect_tx(&full[st.index], sizeof(int));
    FullBarrier::wait(&full[st.index], st.phase);
    int u;
    asm volatile("ld.shared.b32 %0, [%1];" : "=r"(u) : "r"(cute::cast_smem_ptr_to_uint(&slot[st.index])) : "memory");
    EmptyBarrier::arrive(&empty[st.index], 0, u < n_units);   // after the load: the predicate reads u
    st.advance();
    return u;
  }
};

// kCluster 2 (kernel_traits.h kClusterM): the unit drawn is a query-block pair, in the order above; the
// cluster's two CTAs take its two blocks (tile t is block t % 2 of pair t / 2, CTA t % 2), so they
// share the (batch, head) and its K/V.
template <int kCluster = 1>
struct TileScheduler {
  int n_tiles, n_m_blocks, h, heads_per_chunk;
  int* counter;   // [0] units drawn beyond the first wave, [1] drawing CTAs finished
  PairMailbox mail = {};   // kCluster 2, producer thread
  using Tile = ScheduledTile;

  __device__ bool valid(int t) const { return t < n_tiles; }
  __device__ Tile decode(int t) const {
    int u = t / kCluster, n_m = n_m_blocks / kCluster;   // query-block pairs when kCluster is 2
    int n_hb = n_tiles / n_m_blocks;                  // (head, batch) pairs
    int chunk = u / (heads_per_chunk * n_m);
    int r = u - chunk * heads_per_chunk * n_m;
    // The host's heads_per_chunk divides n_hb, so this min never bites. It stays so that the decode, and
    // ptxas's schedule of the consumers' key loops around it, is the measured one (a changed decode
    // redrew hd64's loop, 4-5% slower: bench/NOTES.md run 184).
    int g = min(heads_per_chunk, n_hb - chunk * heads_per_chunk);
    int hb = chunk * heads_per_chunk + r % g;
    return Tile{kCluster * (n_m - 1 - r / g) + t % kCluster, hb % h, hb / h};
  }
  // Producer thread only: the tile after the current one (the first is blockIdx.x).
  __device__ int draw_next() {
    if constexpr (kCluster == 1) {
      return int(gridDim.x) + atomicAdd(counter, 1);
    } else {
      int rank = int(cute::block_rank_in_cluster()), u;
      if (rank == 0) {
        u = int(gridDim.x) / 2 + atomicAdd(counter, 1);
        mail.send(u);
      } else {
        u = mail.receive(n_tiles / 2);
      }
      return 2 * u + rank;
    }
  }
  // Producer thread, after drawing an invalid id: the last drawing CTA to get there resets the counter
  // for the next launch (every CTA has finished drawing by then).
  __device__ void finish() const {
    if (kCluster > 1 && cute::block_rank_in_cluster() != 0) return;   // the peer draws nothing
    if (atomicAdd(counter + 1, 1) == int(gridDim.x) / kCluster - 1) {
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
