// Host side of one backward instantiation: preprocess (delta, lse_log2, zeroed workspace), the main
// kernel (TMA descriptors, grid = key blocks x kv heads x batch entries, varlen: the tile list x kv
// heads), the dQ conversion. Included only by the generated csrc/generated/bwd_*.cu files.
#pragma once
#include <algorithm>
#include <cmath>
#include <cuda_runtime.h>
#include "bwd_kernel.h"
#include "bwd_split.h"
#include "preprocess.h"
#include "../smem_attr.h"

namespace ringfa3 {

// The main kernel: TMA descriptors, parameters, the launch.
template <class Tr>
cudaError_t launch_bwd_main(RingFa3BwdArgs const& a, int n_n, int ws_rows) {
  using namespace cute;
  using T = typename Tr::T;
  constexpr int kM = Tr::kBlockM, kN = Tr::kBlockN, kD = Tr::kHeadDim;
  constexpr bool kVarlen = Tr::kVarlen;

  // Varlen: the packed rows are one batch entry, whose (never stepped) batch stride is just past them.
  int n_b = kVarlen ? 1 : a.b;
  auto view = [&](const void* ptr, int s, int heads, int64_t const* st) {
    return make_tensor(make_gmem_ptr(static_cast<T const*>(ptr)), make_shape(s, a.d, heads, n_b),
                       make_stride(st[1], _1{}, st[2], kVarlen ? s * st[1] : st[0]));
  };
  using TileQ = Shape<Int<kM>, Int<kD>>;
  using TileK = Shape<Int<kN>, Int<kD>>;
  BwdParams<Tr> p{
      make_tma_copy(SM90_TMA_LOAD{}, view(a.q, a.s_q, a.h, a.q_stride), take<0, 2>(typename Tr::SmemLayoutQ{}), TileQ{}, _1{}),
      make_tma_copy(SM90_TMA_LOAD{}, view(a.dout, a.s_q, a.h, a.do_stride), take<0, 2>(typename Tr::SmemLayoutQ{}), TileQ{}, _1{}),
      make_tma_copy(SM90_TMA_LOAD{}, view(a.k, a.s_k, a.h_kv, a.k_stride), typename Tr::SmemLayoutK{}, TileK{}, _1{}),
      make_tma_copy(SM90_TMA_LOAD{}, view(a.v, a.s_k, a.h_kv, a.v_stride), typename Tr::SmemLayoutK{}, TileK{}, _1{}),
      a,
      /*n_n_blocks=*/n_n,
      /*ws_rows=*/ws_rows,
      /*group=*/a.h / a.h_kv,
      /*diag_offset=*/a.s_k - a.s_q,
      /*win_left=*/a.window_left < 0 ? kBwdUnbounded : a.window_left,
      /*win_right=*/a.window_right < 0 ? kBwdUnbounded : a.window_right,
      /*scale_log2=*/a.softmax_scale * float(M_LOG2E),
      // Highest first: short heads (run 28, causal: 1k 231 -> 274 TF/s, 4k 398 -> 416; 8k even) and
      // varlen documents. Lowest first above 64 key blocks (16k keys and up at hd128): the CTAs
      // launched last are then the shortest (16k causal: 508 against 472 highest first, whose last
      // wave is the longest CTAs).
      /*launch_heads=*/1,
      /*det_high_first=*/kVarlen || n_n <= 64,
      /*split_from=*/0,     // set below
      /*split_pieces=*/1,
      /*trace=*/cta_trace_buffer()};

  auto kernel = bwd_kernel<Tr>;
  int dev = 0, sms = 0;
  cudaError_t err = current_device_sms(&dev, &sms);
  if (err != cudaSuccess) return err;
  int hb = a.h_kv * a.b, n_m = (a.s_q + kM - 1) / kM;
  if (a.deterministic) {
    // A head's next key block is launched launch_heads CTAs later: about launch_heads / sms of a
    // CTA's query blocks behind the CTA whose dQ adds it follows, kBwdDetLag of them.
    p.launch_heads = std::max(1, std::min(hb, int(std::lround(kBwdDetLag * sms / n_m))));
  } else if (a.window_left >= 0 || a.window_right >= 0) {
    // CTAs of unequal length: longest first across the heads of an L2-sized run.
    double bytes = 8.0 * (a.h / a.h_kv) * n_m * kM * kD;
    p.launch_heads = std::max(1, std::min(hb, int(kBwdRunL2Bytes / bytes)));
  }
  err = set_max_dynamic_smem_once<bwd_kernel<Tr>>(dev, Tr::kSmemBytes);
  if (err != cudaSuccess) return err;
  long long n_ctas = (long long)(kVarlen ? a.n_varlen_tiles : n_n * a.b) * a.h_kv;   // 1-D, decoded in bwd_kernel.h
  static_assert(Tr::kBlockN == bwd_block_n(Tr::kHeadDim), "bwd_split_plan counts this kernel's key blocks");
  BwdSplitPlan plan{n_ctas};   // unsplit unless the caller gave the split's buffers
  if (!kVarlen && a.split_count != nullptr && a.split_partial != nullptr) plan = bwd_split_plan(a, sms);
  n_ctas = plan.whole + (long long)plan.tiles * plan.pieces;
  if (n_ctas >= (1ll << 31)) return cudaErrorInvalidConfiguration;
  p.split_from = int(plan.whole);
  p.split_pieces = plan.pieces;
  kernel<<<dim3(unsigned(n_ctas)), Tr::kThreads, Tr::kSmemBytes, static_cast<cudaStream_t>(a.stream)>>>(p);
  return cudaGetLastError();
}

// The passes the call asks for (RingFa3BwdArgs::phases).
template <class Tr>
cudaError_t launch_bwd(RingFa3BwdArgs const& a) {
  using T = typename Tr::T;
  constexpr int kM = Tr::kBlockM, kN = Tr::kBlockN, kD = Tr::kHeadDim;
  constexpr bool kVarlen = Tr::kVarlen;
  cudaStream_t stream = static_cast<cudaStream_t>(a.stream);
  int n_m = (a.s_q + kM - 1) / kM, n_n = (a.s_k + kN - 1) / kN;   // a batch entry's blocks (dense)
  // Workspace rows per (batch entry, head): this call's padded rows, or the shared workspace's
  // (ABI 8); varlen per head, every segment from a kM-aligned row. The grids cover the call's rows.
  int ws_rows = kVarlen ? (a.s_q / kM + a.b) * kM : a.ws_rows != 0 ? a.ws_rows : n_m * kM;
  int call_rows = kVarlen ? ws_rows : n_m * kM;
  int phases = a.phases == 0 ? 7 : a.phases;

  if (phases & 1) {   // delta, lse_log2, zero dq_accum / semaphores
    constexpr int kRows = RowChunk<kD>::kRows;
    dim3 grid((call_rows + kRows - 1) / kRows, a.h, kVarlen ? 1 : a.b);
    if (a.out_fp32) bwd_preprocess_kernel<T, float, kD, kM, kVarlen><<<grid, 256, 0, stream>>>(a, ws_rows, call_rows);
    else bwd_preprocess_kernel<T, T, kD, kM, kVarlen><<<grid, 256, 0, stream>>>(a, ws_rows, call_rows);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  if (phases & 2) {
    cudaError_t err = launch_bwd_main<Tr>(a, n_n, ws_rows);
    if (err != cudaSuccess) return err;
  }
  if (!(phases & 4)) return cudaSuccess;
  dim3 grid(((kVarlen ? ws_rows : a.s_q) + kM - 1) / kM, a.h, kVarlen ? 1 : a.b);   // one CTA per tile
  if (a.grads_fp32) bwd_convert_dq_kernel<float, kD, kM, kVarlen><<<grid, 256, 0, stream>>>(a, ws_rows);
  else bwd_convert_dq_kernel<T, kD, kM, kVarlen><<<grid, 256, 0, stream>>>(a, ws_rows);
  return cudaGetLastError();
}

}  // namespace ringfa3
