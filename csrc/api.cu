// C entry points: validate what the kernel relies on, then dispatch on (dtype, head_dim) to the
// generated instantiations. Never lets a bad argument reach a kernel.
#include <cuda_runtime.h>
#include "abi_checks.h"
#include "fwd_args.h"
#include "instantiations.h"

using ringfa3::aligned16;
using ringfa3::strides8;

namespace {
thread_local char g_error[512] = "";
int fail(int code, const char* msg) { return ringfa3::record_error(g_error, code, msg); }
}  // namespace

extern "C" int ringfa3_sm90_abi_version(void) { return 3; }
extern "C" const char* ringfa3_sm90_last_error(void) { return g_error; }
extern "C" int ringfa3_sm90_fwd_block_m(int d) {
  return d == 64 ? ringfa3::TileConfig<64>::kM : d == 128 ? ringfa3::TileConfig<128>::kM
       : d == 256 ? ringfa3::TileConfig<256>::kM : 0;
}

// The key block of the e4m3 launch for these arguments (window as in RingFa3FwdArgs): K is quantized
// with one scale per block of this many keys. 0 for a head dim without an e4m3 kernel.
extern "C" int ringfa3_sm90_fp8_key_rows(int d, int s_k, int window_left, int window_right) {
  auto rows = [&](auto cfg) {
    using Cfg = decltype(cfg);
    return ringfa3::takes_full_block<Cfg>(s_k, window_left, window_right) ? Cfg::kNFull : Cfg::kN;
  };
  return d == 128 ? rows(ringfa3::Fp8TileConfig<128>{}) : d == 256 ? rows(ringfa3::Fp8TileConfig<256>{}) : 0;
}

// Query rows per Q scale of the e4m3 kernel: its query tile.
extern "C" int ringfa3_sm90_fp8_query_rows(int d) {
  return d == 128 ? ringfa3::Fp8TileConfig<128>::kM : d == 256 ? ringfa3::Fp8TileConfig<256>::kM : 0;
}

extern "C" int ringfa3_sm90_fwd(const RingFa3FwdArgs* args) {
  if (args == nullptr) return fail(1, "args is NULL");
  const RingFa3FwdArgs& a = *args;
  if (a.b < 0 || a.s_q < 0 || a.s_k < 0 || a.h <= 0 || a.h_kv <= 0 || a.h % a.h_kv != 0)
    return fail(2, "bad shape: need b, s_q, s_k >= 0 and h % h_kv == 0");
  if (!aligned16(a.q) || !aligned16(a.k) || !aligned16(a.v))
    return fail(3, "q, k, v must be 16-byte aligned (TMA)");
  if (!strides8(a.q_stride) || !strides8(a.k_stride) || !strides8(a.v_stride))
    return fail(3, "q, k, v strides must be multiples of 8 elements (TMA needs 16-byte strides)");
  if (a.dtype == 2) {   // e4m3: 1-byte elements, so 16-byte strides are multiples of 16 elements
    int64_t const* ss[3] = {a.q_stride, a.k_stride, a.v_stride};
    for (auto st : ss)
      if (st[0] % 16 || st[1] % 16 || st[2] % 16) return fail(3, "e4m3 q, k, v strides must be multiples of 16");
    if (a.q_scale == nullptr || a.k_scale == nullptr || a.v_scale == nullptr)
      return fail(4, "e4m3 needs q_scale, k_scale and v_scale");
  }
  if (a.merge ? (a.out_acc == nullptr || a.lse_acc == nullptr) : (a.out == nullptr))
    return fail(4, "merge needs out_acc and lse_acc; otherwise out is required");
  if (a.s_k <= 0) return fail(2, "s_k must be > 0 (TMA descriptors need non-empty extents)");
  if (a.reserved != 0) return fail(2, "reserved must be 0");
  bool varlen = a.cu_seqlens_q != nullptr;
  if (varlen != (a.cu_seqlens_k != nullptr) || (varlen && a.n_varlen_tiles > 0 && a.varlen_tiles == nullptr))
    return fail(4, "varlen needs cu_seqlens_q, cu_seqlens_k and varlen_tiles (or none of them)");
  if (varlen) {
    if (a.dtype == 2) return fail(5, "varlen is bf16 / fp16 only");
    if (a.n_varlen_tiles < 0 || a.max_seqlen_k < 0 || a.max_seqlen_k > a.s_k)
      return fail(2, "varlen needs n_varlen_tiles >= 0 and 0 <= max_seqlen_k <= s_k (the packed total)");
    if (a.n_varlen_tiles == 0) return 0;
  }
  if (a.b == 0 || a.s_q == 0) return 0;
  cudaError_t err = ringfa3::dispatch_fwd(a);
  if (err == cudaErrorNotSupported) return fail(5, "unsupported dtype / head_dim combination");
  if (err != cudaSuccess) return fail(6, cudaGetErrorString(err));
  return 0;
}
