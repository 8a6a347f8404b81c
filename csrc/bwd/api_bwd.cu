// C entry point of the backward: validate what the kernels rely on, then dispatch on
// (dtype, head_dim). Never lets a bad argument reach a kernel.
#include <cuda_runtime.h>
#include "../abi_checks.h"
#include "bwd_args.h"
#include "bwd_instantiations.h"
#include "bwd_split.h"

using ringfa3::aligned16;
using ringfa3::strides8;

namespace {
thread_local char g_bwd_error[512] = "";
int fail(int code, const char* msg) { return ringfa3::record_error(g_bwd_error, code, msg); }
}  // namespace

extern "C" int ringfa3_sm90_bwd_abi_version(void) { return 10; }
extern "C" int ringfa3_sm90_bwd_block_m(void) { return ringfa3::kBwdBlockM; }
extern "C" int ringfa3_sm90_bwd_dense_ws_rows(int s_q, int head_dim, int window_left, int window_right) {
  int m = ringfa3::bwd_dense_block_m(head_dim, window_left, window_right, 0);
  return (s_q + m - 1) / m * m;
}
extern "C" int ringfa3_sm90_bwd_block_n(void) { return ringfa3::kBwdBlockN; }
extern "C" int ringfa3_sm90_bwd_split_sizes(const RingFa3BwdArgs* args, int64_t sizes[2]) {
  if (args == nullptr || sizes == nullptr) return fail(1, "args and sizes must be non-NULL");
  if (args->h <= 0 || args->h_kv <= 0 || args->b < 0 || args->s_q < 0 || args->s_k < 0)
    return fail(2, "bad shape: need b, s_q, s_k >= 0 and h, h_kv > 0");
  int dev = 0, sms = 0;
  cudaError_t err = ringfa3::current_device_sms(&dev, &sms);
  if (err != cudaSuccess) return fail(6, cudaGetErrorString(err));
  ringfa3::BwdSplitPlan plan = ringfa3::bwd_split_plan(*args, sms);
  bool split = plan.pieces > 1;
  sizes[0] = split ? plan.tiles : 0;
  sizes[1] = split ? int64_t(plan.tiles) * plan.pieces * 2 * ringfa3::bwd_block_n(args->d) * args->d : 0;
  return 0;
}
extern "C" const char* ringfa3_sm90_bwd_last_error(void) { return g_bwd_error; }

extern "C" int ringfa3_sm90_bwd(const RingFa3BwdArgs* args) {
  if (args == nullptr) return fail(1, "args is NULL");
  const RingFa3BwdArgs& a = *args;
  if (a.phases < 0 || a.phases > 7) return fail(2, "phases must be 0 (all) or a sum of 1, 2, 4");
  int phases = a.phases == 0 ? 7 : a.phases;
  bool pre = phases & 1, main_pass = phases & 2, convert = phases & 4;
  if (a.b < 0 || a.s_q < 0 || (main_pass && a.s_k <= 0) || a.h <= 0 || a.h_kv <= 0 || a.h % a.h_kv != 0)
    return fail(2, "bad shape: need b, s_q >= 0, s_k > 0 and h % h_kv == 0");
  // The tensors each pass reads or writes (the workspace always).
  const void* ptrs[] = {main_pass ? a.q : a.dq_accum, main_pass ? a.k : a.dq_accum, main_pass ? a.v : a.dq_accum,
                        pre ? a.out : a.dq_accum, pre || main_pass ? a.dout : a.dq_accum,
                        convert ? a.dq : a.dq_accum, main_pass ? a.dk : a.dq_accum, main_pass ? a.dv : a.dq_accum,
                        a.dq_accum};
  for (const void* ptr : ptrs)
    if (ptr == nullptr || !aligned16(ptr))
      return fail(3, "q, k, v, out, dout, dq, dk, dv (those of the passes run) and dq_accum must be non-NULL and 16-byte aligned");
  if ((pre && a.lse == nullptr) || a.lse_log2 == nullptr || a.delta == nullptr || !aligned16(a.lse_log2) || !aligned16(a.delta))
    return fail(3, "lse (for the preprocess), lse_log2 and delta are required (workspace 16-byte aligned)");
  if (a.deterministic && (pre || main_pass) && a.semaphore == nullptr) return fail(4, "deterministic mode needs the semaphore workspace");
  int64_t const* strides[] = {a.q_stride, a.k_stride, a.v_stride, a.o_stride, a.do_stride, a.dq_stride, a.dk_stride, a.dv_stride};
  for (int64_t const* s : strides)
    if (!strides8(s)) return fail(3, "tensor strides must be multiples of 8 elements (16-byte rows for TMA and vector loads)");
  if (a.window_left < -1 || a.window_right < -1) return fail(2, "window sides must be >= -1");
  if (a.split_partial != nullptr && !aligned16(a.split_partial)) return fail(3, "split_partial must be 16-byte aligned");
  if (a.dq_accumulate != 0 && (a.dq_accumulate != 1 || !a.grads_fp32))
    return fail(2, "dq_accumulate must be 0, or 1 with grads_fp32 (dq is float32 then)");
  bool varlen = a.cu_seqlens_q != nullptr;
  if (varlen != (a.cu_seqlens_k != nullptr)) return fail(4, "varlen needs both cu_seqlens_q and cu_seqlens_k");
  if (varlen && (a.varlen_tiles == nullptr || a.n_varlen_tiles <= 0))
    return fail(4, "varlen needs the tile list (varlen_tiles, n_varlen_tiles > 0)");
  constexpr int kM = ringfa3::kBwdBlockM;
  if (a.ws_rows != 0 && (varlen || a.ws_rows % kM != 0 || a.ws_rows < (a.s_q + kM - 1) / kM * kM))
    return fail(2, "ws_rows must be 0, or (dense calls) a multiple of ringfa3_sm90_bwd_block_m() of at least s_q padded to it");
  if (a.b == 0 || a.s_q == 0) return fail(2, "empty q: the caller handles it (zero dk, dv)");
  cudaError_t err = ringfa3::dispatch_bwd(a);
  if (err == cudaErrorNotSupported) return fail(5, "unsupported dtype / head_dim combination for the backward");
  if (err != cudaSuccess) return fail(6, cudaGetErrorString(err));
  return 0;
}
