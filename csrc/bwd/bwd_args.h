// Plain-C argument block of the backward pass (preprocess + main kernel + dQ conversion). Mirrored by
// ctypes in ringfa3/ops/sm90.py in the same field order; the workspace tensors are allocated by the
// caller (torch's allocator) and described here too, so the library itself never allocates.
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct RingFa3BwdArgs {
  const void* q;        // (b, s_q, h, d)     bf16 or fp16, d contiguous
  const void* k;        // (b, s_k, h_kv, d)
  const void* v;        // (b, s_k, h_kv, d)
  const void* out;      // (b, s_q, h, d)     input dtype, or fp32 when out_fp32 (a merged ring output)
  const void* dout;     // (b, s_q, h, d)     input dtype
  const float* lse;     // (b, h, s_q)        natural log, as the forward wrote it (-inf: row sees no key)
  void* dq;             // (b, s_q, h, d)     input dtype, or fp32 when grads_fp32 (dq_accumulate: += )
  void* dk;             // (b, s_k, h_kv, d)  likewise
  void* dv;             // (b, s_k, h_kv, d)  likewise
  // Workspace, contiguous, s_pad = ringfa3_sm90_bwd_dense_ws_rows (s_q rounded up to the call's query
  // block, ABI 9), or ws_rows (ABI 8, below); varlen: one batch entry of (s_q / block_m + b) * block_m
  // rows (block_m = ringfa3_sm90_bwd_block_m):
  float* dq_accum;      // (b, h, s_pad, d)   fp32, zeroed by the preprocess kernel
  float* lse_log2;      // (b, h, s_pad)      lse * log2(e); +inf for dead and padding rows
  float* delta;         // (b, h, s_pad)      rowsum(dout * out)
  int* semaphore;       // (b, h, s_pad / block_m, 2) deterministic mode only (else may be NULL); zeroed
                        // by the preprocess, or by the caller for a call without it
  int64_t q_stride[3];  // element strides of (batch, seq, head); the head-dim stride must be 1
  int64_t k_stride[3];
  int64_t v_stride[3];
  int64_t o_stride[3];
  int64_t do_stride[3];
  int64_t dq_stride[3];
  int64_t dk_stride[3];
  int64_t dv_stride[3];
  int64_t lse_stride[2];   // (batch, head); the seq stride must be 1
  int32_t b, s_q, s_k, h, h_kv, d;
  int32_t dtype;           // 0 = bf16, 1 = fp16
  int32_t window_left;     // -1 = unbounded; causal is window_right = 0 (bottom-right aligned)
  int32_t window_right;
  int32_t out_fp32;        // `out` is fp32
  int32_t grads_fp32;      // write dq, dk, dv as fp32
  int32_t deterministic;   // dQ partial sums added in a fixed order (BwdMask::rank_in)
  int32_t dq_accumulate;   // ABI 5 (the int was reserved before): 1 adds the gradient into dq instead
                           // of writing it; grads_fp32 only (a ring's running float32 dQ)
  float softmax_scale;
  void* stream;            // cudaStream_t
  // Varlen (ABI 2): b packed segments. Segment i is rows [cu_seqlens_q[i], cu_seqlens_q[i + 1]) of
  // q, out, dout, dq (and lse, then (h, s_q)) and rows [cu_seqlens_k[i], cu_seqlens_k[i + 1]) of k, v,
  // dk, dv, its mask aligned bottom-right within it; s_q and s_k are the packed totals, the batch
  // strides are not used, and the workspace holds (s_q / block_m + b) * block_m rows per head.
  const int32_t* cu_seqlens_q;   // (b + 1,) on the device, or NULL: dense
  const int32_t* cu_seqlens_k;
  // Varlen (ABI 4; ABI 2-3 also took the longest segment's lengths, which nothing sizes by since the
  // grids run over the tile list and the packed workspace): the CTAs to run, in launch order, as
  // (segment, key block) pairs of ringfa3_sm90_bwd_block_n keys; each of the kv heads runs every
  // pair. In deterministic mode a segment's key blocks must come highest first (ABI 6; ascending
  // before): the dQ order takes them so and waits only on CTAs launched earlier. Key blocks left out
  // are not written. Like cu_seqlens, the list lives on the device and is not checked here:
  // ringfa3/ops/sm90.py (varlen_bwd_tiles) builds it.
  const int32_t* varlen_tiles;   // (n_varlen_tiles, 2) on the device
  int32_t n_varlen_tiles;
  // ABI 8: one dense workspace shared by several calls over row ranges of the same queries (a ring's
  // steps: K/V change, Q, dO, O, lse do not), so the preprocess and the dQ conversion run once each
  // instead of once per call. ws_rows: rows per (batch entry, head) of the workspace (a multiple of
  // block_m, at least s_q padded to it; 0: s_q padded to block_m); the workspace pointers are then
  // those of the call's first query row, itself a multiple of block_m from the workspace's start.
  // phases: the passes to run, a sum of 1 (preprocess: delta, lse_log2, zeroed dQ sums and
  // semaphores), 2 (main kernel: adds dQ into the workspace, writes dk / dv) and 4 (dQ conversion);
  // 0 runs all three. A pass that does not run may leave the tensors only it reads NULL: the
  // preprocess reads out, dout, lse; the main kernel q, k, v, dout, dk, dv; the conversion dq.
  int32_t ws_rows;
  int32_t phases;
  // ABI 10: the tail split of an unmasked dense call with its own workspace (bwd_split.h): when the
  // last wave of key-block CTAs would leave SMs idle, its tiles run as pieces over query-row ranges,
  // merged by the last piece to finish. ringfa3_sm90_bwd_split_sizes gives both buffers' sizes for
  // these arguments (zero: no split); NULL pointers turn the split off.
  int* split_count;       // (split tiles,) int32, zero on entry; the kernel leaves it zero
  float* split_partial;   // (split floats,) fp32, 16-byte aligned; no initial value
} RingFa3BwdArgs;

// 0 on success, else a nonzero code; the message of the last failure on this thread is
// ringfa3_sm90_bwd_last_error().
int ringfa3_sm90_bwd(const RingFa3BwdArgs* args);
const char* ringfa3_sm90_bwd_last_error(void);
// Query rows per block of the varlen and shared-workspace (ws_rows) calls: their padding unit.
int ringfa3_sm90_bwd_block_m(void);
// Workspace rows per (batch entry, head) of a dense call with its own workspace (ws_rows 0): s_q
// padded to that call's query block, which depends on the head dim and the mask (ABI 9).
int ringfa3_sm90_bwd_dense_ws_rows(int s_q, int head_dim, int window_left, int window_right);
// The tail split's buffers for these arguments on the current device (ABI 10): sizes[0] counters
// (int32) and sizes[1] floats, both 0 when the call runs unsplit. 0 on success.
int ringfa3_sm90_bwd_split_sizes(const RingFa3BwdArgs* args, int64_t sizes[2]);
// Keys per CTA of the main kernel: the key block of varlen_tiles.
int ringfa3_sm90_bwd_block_n(void);
// Bumped when RingFa3BwdArgs changes; Python refuses a library whose version differs.
int ringfa3_sm90_bwd_abi_version(void);

#ifdef __cplusplus
}
#endif
