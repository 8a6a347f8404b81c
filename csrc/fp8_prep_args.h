// Plain-C argument blocks of the FP8 input preparation (fp8_prep.cu): the rotation and block
// quantization of Q and K, and V's quantized transpose, as ringfa3/ops/fp8.py specifies them.
// Mirrored by ctypes in ringfa3/ops/sm90.py (same field order). Separate entry points of the sm90
// library; RingFa3FwdArgs and its ABI version are untouched.
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct RingFa3Fp8RowsArgs {
  const void* x;         // (b, s, h, d) bf16 or fp16, d contiguous
  const float* signs;    // (d,) +-1: rotate by diag(signs) H / sqrt(d) first; NULL = no rotation
  void* codes;           // (b, s, h, d) e4m3, contiguous
  float* scale;          // (b, ceil(s / rows), h) float32, contiguous: one per `rows` rows of a head
  int64_t x_stride[3];   // element strides of (batch, seq, head); the head-dim stride must be 1
  int32_t b, s, h, d;
  int32_t dtype;         // 0 = bf16, 1 = fp16
  int32_t rows;          // rows per scale: 128, or 224 at d 128 (Q: 128; K: ringfa3_sm90_fp8_key_rows)
  void* stream;          // cudaStream_t
} RingFa3Fp8RowsArgs;

typedef struct RingFa3Fp8VArgs {
  const void* v;         // (b, s, h, d) bf16 or fp16, d contiguous
  const float* scale;    // (b, h) float32, contiguous: the per-head scale, computed by the caller
  void* vt;              // (b, h, d, s_v) e4m3, contiguous, s_v = s rounded up to 16: keys contiguous,
                         // permuted within each 16 (fp8_key_order), zero past s
  int64_t v_stride[3];   // element strides of (batch, seq, head); the head-dim stride must be 1
  int32_t b, s, h, d;
  int32_t dtype;         // 0 = bf16, 1 = fp16
  void* stream;          // cudaStream_t
} RingFa3Fp8VArgs;

// 0 on success, else a nonzero code; the message of the last failure on this thread is
// ringfa3_sm90_fp8_prep_last_error(). Both only enqueue work on the stream.
int ringfa3_sm90_fp8_quantize_rows(const RingFa3Fp8RowsArgs* args);
int ringfa3_sm90_fp8_key_rows(int d, int s_k, int window_left, int window_right);   // api.cu
int ringfa3_sm90_fp8_v_transpose(const RingFa3Fp8VArgs* args);
const char* ringfa3_sm90_fp8_prep_last_error(void);

#ifdef __cplusplus
}
#endif
