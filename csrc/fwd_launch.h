// Host side of one instantiation: build the TMA descriptors from pointers/strides, resolve the
// mask bounds, size the persistent grid, launch. Included only by the generated .cu files.
#pragma once
#include <algorithm>
#include <atomic>
#include <cmath>
#include <mutex>
#include <type_traits>
#include <cuda_runtime.h>
#include "fwd_kernel.h"
#include "instantiations.h"
#include "smem_attr.h"

namespace ringfa3 {
// Internal linkage for everything below, as in smem_attr.h: the function-local statics (tile
// counters) would otherwise be GNU "unique" symbols merged across two builds of this library loaded
// in one process (A/B timing).
namespace {

// Scheduling chunks (tile_scheduler.h): query heads (with batch entries) are taken in chunks whose K/V
// take at most an L2 budget together, a part of H100's 50 MB L2 that leaves room for Q/O traffic, and
// divide the (head, batch) pairs into equal chunks (a short last chunk ran alone at the end). Full
// attention: 16 MB (RINGFA3_L2_BUDGET_MB); its concurrent tiles walk the keys in step, so a chunk's K/V
// is read from HBM about once. Under a causal or right window mask tiles of different lengths run side by
// side at different keys and the whole chunk's K/V is live: 32 MB (RINGFA3_CAUSAL_L2_BUDGET_MB, FA3's
// figure). At hd256 16k causal, 4 heads (64 MB) made every key block 7-9% slower than in full attention,
// 2 heads 2% (bench/NOTES.md runs 179-186).
inline int heads_per_chunk(RingFa3FwdArgs const& a, int s_k, int n_hb, size_t elem) {
  double budget = (a.window_right >= 0 ? RINGFA3_CAUSAL_L2_BUDGET_MB : RINGFA3_L2_BUDGET_MB) * 1024.0 * 1024;
  double kv_bytes_per_q_head = 2.0 * s_k * a.d * elem / (a.h / a.h_kv);
  int fit = std::max(1, int(std::min<double>(budget / kv_bytes_per_q_head, n_hb)));   // s_k 0: all
  while (n_hb % fit != 0) --fit;
  return fit;
}

constexpr int kMaxDevices = 64;   // per-device host caches; a launch on a higher ordinal fails cleanly

// Counter pairs for the dynamic tile scheduler, per device. The kernel leaves its pair at zero when
// it exits, so launches need no memset; a ring of pairs (not one) lets launches on different
// streams run at the same time (up to kSlots in flight). Allocated on the first call, which
// therefore must not be inside CUDA-graph capture.
inline int* tile_counter_slot() {
  constexpr int kSlots = 64;
  static int* base[kMaxDevices] = {};
  static std::mutex mu;
  static std::atomic<unsigned> next{0};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev >= kMaxDevices) return nullptr;
  {
    std::lock_guard<std::mutex> lock(mu);
    if (base[dev] == nullptr) {
      int* p = nullptr;
      if (cudaMalloc(&p, kSlots * 2 * sizeof(int)) != cudaSuccess) return nullptr;
      if (cudaMemset(p, 0, kSlots * 2 * sizeof(int)) != cudaSuccess) return nullptr;
      base[dev] = p;
    }
  }
  return base[dev] + 2 * (next.fetch_add(1) % kSlots);
}

template <class Tr>
cudaError_t launch_fwd(RingFa3FwdArgs const& a) {
  using namespace cute;
  using T = typename Tr::T;
  // Varlen: the packed rows are one batch entry (its batch stride, never stepped, just past the rows).
  int n_b = Tr::kVarlen ? 1 : a.b;
  int64_t q_bs = Tr::kVarlen ? a.s_q * a.q_stride[1] : a.q_stride[0];
  int64_t k_bs = Tr::kVarlen ? a.s_k * a.k_stride[1] : a.k_stride[0];
  int64_t v_bs = Tr::kVarlen ? a.s_k * a.v_stride[1] : a.v_stride[0];
  auto gQ = make_tensor(make_gmem_ptr(static_cast<T const*>(a.q)), make_shape(a.s_q, a.d, a.h, n_b),
                        make_stride(a.q_stride[1], _1{}, a.q_stride[2], q_bs));
  auto gK = make_tensor(make_gmem_ptr(static_cast<T const*>(a.k)), make_shape(a.s_k, a.d, a.h_kv, n_b),
                        make_stride(a.k_stride[1], _1{}, a.k_stride[2], k_bs));
  auto gV = [&] {   // (d, keys, h_kv, b): d contiguous, or for e4m3 V^T keys contiguous
    auto shape = make_shape(a.d, v_keys<Tr>(a), a.h_kv, n_b);
    if constexpr (Tr::kFp8)
      return make_tensor(make_gmem_ptr(static_cast<T const*>(a.v)), shape,
                         make_stride(a.v_stride[1], _1{}, a.v_stride[2], v_bs));
    else
      return make_tensor(make_gmem_ptr(static_cast<T const*>(a.v)), shape,
                         make_stride(_1{}, a.v_stride[1], a.v_stride[2], v_bs));
  }();
  int keys = Tr::kVarlen ? a.max_seqlen_k : a.s_k;   // of the longest batch entry
  FwdParams<Tr> p{
      make_tma_copy(SM90_TMA_LOAD{}, gQ, typename Tr::SmemLayoutQ{},
                    Shape<Int<Tr::kBlockM>, Int<Tr::kHeadDim>>{}, _1{}),
      make_tma_copy(typename Tr::TmaLoadKV{}, gK, take<0, 2>(typename Tr::SmemLayoutK{}),
                    Shape<Int<Tr::kBlockN>, Int<Tr::kHeadDim>>{}, Int<Tr::kClusterM>{}),
      make_tma_copy(typename Tr::TmaLoadKV{}, gV, take<0, 2>(typename Tr::SmemLayoutV{}),
                    Shape<Int<Tr::kHeadDim>, Int<Tr::kBlockN>>{}, Int<Tr::kClusterM>{}),
      a,
      /*n_m_blocks=*/Tr::kVarlen ? a.n_varlen_tiles : (a.s_q + Tr::kBlockM - 1) / Tr::kBlockM,
      /*n_tiles=*/0,
      /*group=*/a.h / a.h_kv,
      /*heads_per_chunk=*/heads_per_chunk(a, keys, a.h * n_b, sizeof(T)),
      /*diag_offset=*/a.s_k - a.s_q,
      /*win_left=*/a.window_left < 0 ? kUnbounded : a.window_left,
      /*win_right=*/a.window_right < 0 ? kUnbounded : a.window_right,
      /*scale_log2=*/a.softmax_scale * float(M_LOG2E),
      /*tile_counter=*/nullptr,
      /*tma_o=*/{},
      /*o_tma=*/0,
      /*trace=*/cta_trace_buffer()};
  // Out by TMA store (epilogue_tma.h) where the tile has the buffer and TMA can address out: 16-bit
  // out, 16-byte aligned base and positive strides; else straight from the registers (epilogue.h).
  if constexpr (Tr::kSmemO || Tr::kOverV) {
    using TOut = typename Tr::TOut;
    auto aligned = [](int64_t stride) { return stride > 0 && stride * int64_t(sizeof(TOut)) % 16 == 0; };
    p.o_tma = !a.out_fp32 && a.out != nullptr && reinterpret_cast<uintptr_t>(a.out) % 16 == 0 &&
              aligned(a.o_stride[0]) && aligned(a.o_stride[1]) && aligned(a.o_stride[2]);
    if (p.o_tma) {
      auto gO = make_tensor(make_gmem_ptr(static_cast<TOut*>(a.out)), make_shape(a.s_q, a.d, a.h, a.b),
                            make_stride(a.o_stride[1], _1{}, a.o_stride[2], a.o_stride[0]));
      p.tma_o = make_tma_copy(SM90_TMA_STORE{}, gO, take<0, 2>(typename Tr::SmemLayoutO{}),
                              Shape<_64, Int<Tr::kHeadDim>>{}, _1{});
    }
  }
  p.n_tiles = p.n_m_blocks * a.h * n_b;
  if (p.n_tiles == 0) return cudaSuccess;
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  int sms = a.num_sms;
  if (sms <= 0) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  p.tile_counter = tile_counter_slot();
  if (p.tile_counter == nullptr) return cudaErrorMemoryAllocation;

  auto kernel = fwd_kernel<Tr>;
  err = set_max_dynamic_smem_once<fwd_kernel<Tr>>(dev, Tr::kSmemBytes);
  if (err != cudaSuccess) return err;
  cudaLaunchConfig_t cfg = {};
  cudaLaunchAttribute attr[2];
  cfg.attrs = attr;
  cfg.blockDim = dim3(Tr::kThreads);
  cfg.dynamicSmemBytes = Tr::kSmemBytes;
  cfg.stream = static_cast<cudaStream_t>(a.stream);
  int grid = std::min(p.n_tiles, sms);
  if constexpr (Tr::kMerge) {   // a ring step may start under the previous step's tail (fwd_kernel.h)
    cudaLaunchAttribute& pdl = attr[cfg.numAttrs++];
    pdl.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    pdl.val.programmaticStreamSerializationAllowed = 1;
  }
  if constexpr (Tr::kClusterM > 1) {   // as many clusters as can be resident at once
    cudaLaunchAttribute& cluster = attr[cfg.numAttrs++];
    cluster.id = cudaLaunchAttributeClusterDimension;
    cluster.val.clusterDim.x = Tr::kClusterM;
    cluster.val.clusterDim.y = cluster.val.clusterDim.z = 1;
    static int resident[kMaxDevices] = {};   // clusters resident at once, per device (asked once)
    if (resident[dev] == 0) {
      cfg.gridDim = dim3(Tr::kClusterM * sms);
      err = cudaOccupancyMaxActiveClusters(&resident[dev], kernel, &cfg);
      if (err != cudaSuccess) return err;
      if (resident[dev] == 0) return cudaErrorLaunchOutOfResources;
    }
    grid = std::min(p.n_tiles, Tr::kClusterM * resident[dev]);   // n_tiles is a multiple of the cluster
  }
  cfg.gridDim = dim3(grid);
  return cudaLaunchKernelEx(&cfg, kernel, p);
}

// A dense launch: the tile shape from TileConfig, the longer key block when no window applies (full or
// causal) and the keys are many (176-key blocks: 10-17% slower at 1k, no faster at 4k, run 6; causal
// from 8k keys: +2.3-3.9% at 16k at base clock, runs 56-57).
template <class T, int kHeadDim, bool kMerge, int kClusterM>
cudaError_t launch_dense(RingFa3FwdArgs const& a) {
  using Cfg = std::conditional_t<sizeof(T) == 1, Fp8TileConfig<kHeadDim>, TileConfig<kHeadDim>>;
  if constexpr (Cfg::kNFull != Cfg::kN) {
    if (takes_full_block<Cfg>(a.s_k, a.window_left, a.window_right))
      return launch_fwd<FwdTraits<T, kHeadDim, Cfg::kM, Cfg::kNFull, Cfg::kStages, false, kMerge, kClusterM>>(a);
  }
  return launch_fwd<FwdTraits<T, kHeadDim, Cfg::kM, Cfg::kN, Cfg::kStages, false, kMerge, kClusterM>>(a);
}

// One (dtype, head_dim) entry. Varlen (16 bit) and merging have instantiations of their own, so the
// plain dense kernels carry none of their per-tile segment lookups or the merge's read-modify-write.
// RINGFA3_CLUSTER (default 1): hd128 16-bit without a left window, with an even number of query blocks,
// runs in clusters of two CTAs sharing K/V loads by multicast (kernel_traits.h kClusterM; FA3's
// cluster). At the power cap the halved L2 traffic buys clock: full attention +4-5% at 4k-16k, +5-6%
// at 1k-2k (bench/NOTES.md runs 82, 93; below 1k keys unmeasured), so from 1k keys. Under a causal
// mask (or any right window) the pair's lower tile also walks its peer's extra block, fully masked:
// +3% at 8k, +5% at 16k, but -2% at 4k, whose 128-key blocks make that block a larger share (run
// 115), so from 8k keys.
#ifndef RINGFA3_CLUSTER
#define RINGFA3_CLUSTER 1
#endif
#ifndef RINGFA3_CLUSTER_MIN_KEYS
#define RINGFA3_CLUSTER_MIN_KEYS 1024
#endif
#ifndef RINGFA3_CLUSTER_MASKED_MIN_KEYS
#define RINGFA3_CLUSTER_MASKED_MIN_KEYS 8192
#endif
template <class T, int kHeadDim, bool kMerge>
cudaError_t run_fwd_as(RingFa3FwdArgs const& a) {
  using Cfg = std::conditional_t<sizeof(T) == 1, Fp8TileConfig<kHeadDim>, TileConfig<kHeadDim>>;
  if (a.cu_seqlens_q != nullptr) {
    if constexpr (sizeof(T) == 2)
      return launch_fwd<FwdTraits<T, kHeadDim, Cfg::kM, Cfg::kN, Cfg::kStages, true, kMerge>>(a);
    return cudaErrorNotSupported;
  }
  if constexpr (RINGFA3_CLUSTER && sizeof(T) == 2 && kHeadDim == 128) {
    int min_keys = a.window_right < 0 ? RINGFA3_CLUSTER_MIN_KEYS : RINGFA3_CLUSTER_MASKED_MIN_KEYS;
    if (a.window_left < 0 && a.s_k >= min_keys &&
        (a.s_q + Cfg::kM - 1) / Cfg::kM % 2 == 0)
      return launch_dense<T, kHeadDim, kMerge, 2>(a);
  }
  return launch_dense<T, kHeadDim, kMerge, 1>(a);
}

template <class T, int kHeadDim>
cudaError_t run_fwd(RingFa3FwdArgs const& a) {
  return a.merge ? run_fwd_as<T, kHeadDim, true>(a) : run_fwd_as<T, kHeadDim, false>(a);
}

}  // namespace
}  // namespace ringfa3
