// Plain-C argument block of the forward kernel. It is the whole ABI between Python (ctypes mirror in
// ringfa3/ops/sm90.py, same field order) and the library: pointers, shapes, element strides, stream.
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct RingFa3FwdArgs {
  const void* q;        // (b, s_q, h, d)    bf16, fp16 or e4m3, d contiguous
  const void* k;        // (b, s_k, h_kv, d)
  const void* v;        // (b, s_k, h_kv, d); e4m3: V^T (b, h_kv, d, s_v) with s_v = s_k rounded up to 16,
                        // keys contiguous, permuted within each 16 (fp8_key_order) and zero past s_k
  void* out;            // (b, s_q, h, d)    input dtype, or fp32 when out_fp32; may be NULL when merge
  float* lse;           // (b, h, s_q)       natural-log softmax denominator; may be NULL when merge
  float* out_acc;       // merge only: running fp32 output (b, s_q, h, d), updated in place
  float* lse_acc;       // merge only: running fp32 lse (b, h, s_q), updated in place
  int64_t q_stride[3];  // element strides of (batch, seq, head); the head-dim stride must be 1
  int64_t k_stride[3];
  int64_t v_stride[3];   // e4m3: strides of (batch, d, head) of V^T, the key stride is 1
  int64_t o_stride[3];
  int64_t oacc_stride[3];
  int64_t lse_stride[2];   // (batch, head); the seq stride must be 1
  int64_t lacc_stride[2];
  int32_t b, s_q, s_k, h, h_kv, d;
  int32_t dtype;           // 0 = bf16, 1 = fp16, 2 = e4m3 (out in bf16 or fp32)
  int32_t window_left;     // -1 = unbounded; causal is window_right = 0 (bottom-right aligned)
  int32_t window_right;
  int32_t out_fp32;        // write out as fp32
  int32_t merge;           // merge into (out_acc, lse_acc) instead of writing out/lse
  int32_t num_sms;         // 0 = ask the device (persistent grid size)
  int32_t reserved;        // must be 0 (was an A/B variant selector until run 4)
  float softmax_scale;
  const float* q_scale;    // e4m3 only: (b, ceil(s_q / 128), h) contiguous, dequantization scales
  const float* k_scale;    // e4m3 only: (b, ceil(s_k / 128), h_kv) contiguous
  const float* v_scale;    // e4m3 only: (b, h_kv) contiguous
  // Packed variable length, 16-bit dtypes (all NULL = dense). Segment i of the b segments is query
  // rows [cu_seqlens_q[i], cu_seqlens_q[i+1]) against key rows [cu_seqlens_k[i], cu_seqlens_k[i+1]),
  // the window aligned bottom-right in each. q, out, out_acc are then (s_q, h, d) and k, v (s_k, h_kv, d)
  // with s_q, s_k the packed totals; lse and lse_acc are (h, s_q); every batch stride is ignored.
  // The tiles to compute, for every head, are listed: (segment, query block of
  // ringfa3_sm90_fwd_block_m(d) rows) pairs, run from the last entry down (put the longest last);
  // rows of no listed tile are not written (in merge mode tiles that see no key can be left out).
  const int32_t* cu_seqlens_q;   // (b + 1,) int32, from 0 up to s_q, non-decreasing
  const int32_t* cu_seqlens_k;   // (b + 1,) int32, from 0 up to s_k, non-decreasing
  const int32_t* varlen_tiles;   // (n_varlen_tiles, 2) int32
  int32_t n_varlen_tiles;
  int32_t max_seqlen_k;          // the longest segment's keys (sizes the L2 tiling of heads)
  void* stream;            // cudaStream_t
} RingFa3FwdArgs;

// 0 on success, else a nonzero code; the message of the last failure on this thread is
// ringfa3_sm90_last_error().
int ringfa3_sm90_fwd(const RingFa3FwdArgs* args);
const char* ringfa3_sm90_last_error(void);
// Query rows per tile of the 16-bit forward at head dim d (the unit of varlen_tiles); 0 if unsupported.
int ringfa3_sm90_fwd_block_m(int d);
// Bumped when RingFa3FwdArgs changes; Python refuses a library whose version differs.
int ringfa3_sm90_abi_version(void);

#ifdef __cplusplus
}
#endif
