// FP8 input preparation: ringfa3/ops/fp8.py's torch spec in one pass over each tensor.
// - rows (Q, K): sign flip, Walsh-Hadamard, * d^-0.5 (fp8.rotate), then one scale per `rows` rows of
//   a head (128 for Q; K's key block) and e4m3 codes (fp8.quantize);
// - V: e4m3 codes of v / scale laid out as the forward kernel's V^T (fp8.v_transposed).
// Each float operation is the one torch's CUDA kernels do, in the same order and rounding, so the
// outputs are bitwise those of the spec run on the GPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <type_traits>
#include "abi_checks.h"
#include "fp8_prep_args.h"
#include "instantiations.h"

namespace ringfa3 {
namespace {

constexpr int kRowsPerWarp = 8;                      // a block of R rows takes R / 8 warps, one row at a time
constexpr int kVKeys = 64;                           // keys per V tile: four 16-key groups
constexpr int kVThreads = 256;

__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }

// The N elements of T packed in raw (one 8- or 16-byte vector) as floats.
template <typename T, int N, typename Vec>
__device__ __forceinline__ void unpack_f32(Vec raw, float (&x)[N]) {   // by value: one vector load
  static_assert(N * sizeof(T) == sizeof(Vec), "one vector");
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < N; ++i) x[i] = to_f32(e[i]);
}

// torch runs `amax / 448.0` on the GPU as amax * float(1 / 448.0) (a CPU-scalar divisor becomes a
// reciprocal multiply): so does this; its `x / scale` (tensor divisor) is a true division, as below.
__device__ __forceinline__ float scale_of(float amax) {
  return amax > 0.f ? __fmul_rn(amax, 1.f / 448.f) : 1.f;
}

// e4m3 codes of x[i] / scale, four to a word (byte i % 4 = element i): round to nearest even and
// saturate to +-448, as torch's float -> float8_e4m3fn.
template <int N>
__device__ __forceinline__ void codes_of(const float (&x)[N], float scale, uint32_t (&w)[N / 4]) {
#pragma unroll
  for (int i = 0; i < N / 4; ++i) {
    uint32_t lo = __nv_cvt_float2_to_fp8x2(make_float2(__fdiv_rn(x[4 * i], scale), __fdiv_rn(x[4 * i + 1], scale)),
                                           __NV_SATFINITE, __NV_E4M3);
    uint32_t hi = __nv_cvt_float2_to_fp8x2(make_float2(__fdiv_rn(x[4 * i + 2], scale), __fdiv_rn(x[4 * i + 3], scale)),
                                           __NV_SATFINITE, __NV_E4M3);
    w[i] = lo | hi << 16;
  }
}

// fp8.rotate of one row held by a warp, the lane owning elements [E lane, E lane + E): sign flip, the
// butterflies (a, b) -> (a + b, a - b) of width 1, 2, ..., D/2 in fp8.hadamard's order, then * float(D^-0.5).
template <int D>
__device__ __forceinline__ void rotate_row(float (&v)[D / 32], const float (&sign)[D / 32], int lane) {
  constexpr int E = D / 32;
  constexpr float kNorm = D == 128 ? 0x1.6a09e6p-4f : 0x1p-4f;   // torch's float of the Python D ** -0.5
  static_assert(D == 128 || D == 256, "head dim");
#pragma unroll
  for (int j = 0; j < E; ++j) v[j] = __fmul_rn(v[j], sign[j]);
#pragma unroll
  for (int w = 1; w < E; w *= 2)        // both ends in this lane
#pragma unroll
    for (int j = 0; j < E; ++j)
      if (!(j & w)) {
        float a = v[j], b = v[j + w];
        v[j] = __fadd_rn(a, b);
        v[j + w] = __fsub_rn(a, b);
      }
#pragma unroll
  for (int m = 1; m < 32; m *= 2) {     // width m E: the other end is the same slot of lane ^ m
    const bool upper = lane & m;
#pragma unroll
    for (int j = 0; j < E; ++j) {
      float o = __shfl_xor_sync(0xffffffffu, v[j], m);
      v[j] = upper ? __fsub_rn(o, v[j]) : __fadd_rn(v[j], o);
    }
  }
#pragma unroll
  for (int j = 0; j < E; ++j) v[j] = __fmul_rn(v[j], kNorm);
}

// One CTA per (kScaleRows-row block, head, batch): the block's rows rotated and held in registers (warp
// w of W = kScaleRows / 8 holds rows w, w + W, ...), their |x| max, then the scale and the codes. Rows
// past s: not touched.
template <typename T, int D, int kScaleRows>
__global__ void __launch_bounds__(kScaleRows / kRowsPerWarp * 32) fp8_rows_kernel(RingFa3Fp8RowsArgs a) {
  constexpr int kRowWarps = kScaleRows / kRowsPerWarp;
  constexpr int E = D / 32;
  using In = std::conditional_t<E == 8, uint4, uint2>;       // a lane's E inputs: one load
  using Out = std::conditional_t<E == 8, uint2, uint32_t>;   // its E codes: one store
  __shared__ float warp_amax[kRowWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int blk = blockIdx.x, head = blockIdx.y, batch = blockIdx.z;
  const T* x = static_cast<const T*>(a.x) + batch * a.x_stride[0] + head * a.x_stride[2] + lane * E;
  float v[kRowsPerWarp][E];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int row = blk * kScaleRows + warp + kRowWarps * i;
    if (row < a.s) {
      unpack_f32<T>(*reinterpret_cast<const In*>(x + row * a.x_stride[1]), v[i]);
    } else {
#pragma unroll
      for (int j = 0; j < E; ++j) v[i][j] = 0.f;
    }
  }
  if (a.signs != nullptr) {
    float sign[E];
#pragma unroll
    for (int j = 0; j < E; ++j) sign[j] = a.signs[lane * E + j];
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) rotate_row<D>(v[i], sign, lane);
  }
  float amax = 0.f;
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i)
#pragma unroll
    for (int j = 0; j < E; ++j) amax = fmaxf(amax, fabsf(v[i][j]));
#pragma unroll
  for (int m = 16; m > 0; m /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, m));
  if (lane == 0) warp_amax[warp] = amax;
  __syncthreads();
#pragma unroll
  for (int w = 0; w < kRowWarps; ++w) amax = fmaxf(amax, warp_amax[w]);
  const float scale = scale_of(amax);
  if (threadIdx.x == 0) a.scale[(int64_t(batch) * gridDim.x + blk) * a.h + head] = scale;

  uint8_t* out = static_cast<uint8_t*>(a.codes) + (int64_t(batch) * a.s * a.h + head) * D + lane * E;
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int row = blk * kScaleRows + warp + kRowWarps * i;
    if (row < a.s) {
      uint32_t w[E / 4];
      codes_of(v[i], scale, w);
      *reinterpret_cast<Out*>(out + int64_t(row) * a.h * D) = *reinterpret_cast<const Out*>(w);
    }
  }
}

// One CTA per (64 keys, head, batch). Keys are read as rows (coalesced along d) into a [key][d]
// tile of codes, zero past s; each thread then writes 32 positions (two 16-key groups in
// fp8_key_order, 32 bytes) of one d row of V^T. Consecutive threads take consecutive d, so the
// tile's column reads hit distinct banks.
template <typename T, int D>
__global__ void __launch_bounds__(kVThreads) fp8_v_kernel(RingFa3Fp8VArgs a) {
  constexpr int kVec = 16 / sizeof(T);                 // elements per 16-byte load
  constexpr int kLoads = kVKeys * D / kVec / kVThreads;
  constexpr int kStores = 2 * D / kVThreads;           // (d, 32-position half) pairs per thread
  __shared__ alignas(16) uint8_t tile[kVKeys][D];      // codes, [key][d]
  const int key0 = blockIdx.x * kVKeys, head = blockIdx.y, batch = blockIdx.z;
  const float scale = a.scale[int64_t(batch) * a.h + head];
  const T* v = static_cast<const T*>(a.v) + batch * a.v_stride[0] + head * a.v_stride[2];
  uint4 raw[kLoads];                                   // all loads in flight before any use
#pragma unroll
  for (int it = 0; it < kLoads; ++it) {
    const int i = threadIdx.x + it * kVThreads;
    const int key = i / (D / kVec), c = i % (D / kVec) * kVec;
    raw[it] = key0 + key < a.s ? *reinterpret_cast<const uint4*>(v + (key0 + key) * a.v_stride[1] + c)
                               : make_uint4(0, 0, 0, 0);   // +0: code 0 past s
  }
#pragma unroll
  for (int it = 0; it < kLoads; ++it) {
    const int i = threadIdx.x + it * kVThreads;
    const int key = i / (D / kVec), c = i % (D / kVec) * kVec;
    float x[kVec];
    uint32_t w[kVec / 4];
    unpack_f32<T>(raw[it], x);
    codes_of(x, scale, w);
    *reinterpret_cast<uint2*>(&tile[key][c]) = make_uint2(w[0], w[1]);
  }
  __syncthreads();
  const int s_v = (a.s + 15) / 16 * 16;
  uint8_t* vt = static_cast<uint8_t*>(a.vt) + (int64_t(batch) * a.h + head) * D * s_v;
#pragma unroll
  for (int it = 0; it < kStores; ++it) {
    const int i = threadIdx.x + it * kVThreads;
    const int d = i % D, half = i / D;
#pragma unroll
    for (int g = 0; g < 2; ++g) {
      const int k0 = 32 * half + 16 * g;             // the group's first key in the tile
      if (key0 + k0 >= s_v) break;
      uint32_t w[4];
#pragma unroll
      for (int t = 0; t < 4; ++t)                    // positions 4t..4t+3 hold keys 2t, 2t+1, 2t+8, 2t+9
        w[t] = uint32_t(tile[k0 + 2 * t][d]) | uint32_t(tile[k0 + 2 * t + 1][d]) << 8 |
               uint32_t(tile[k0 + 2 * t + 8][d]) << 16 | uint32_t(tile[k0 + 2 * t + 9][d]) << 24;
      *reinterpret_cast<uint4*>(vt + int64_t(d) * s_v + key0 + k0) = make_uint4(w[0], w[1], w[2], w[3]);
    }
  }
}

// f(T{}, integral_constant<D>) for the (dtype, head dim) pair, both already checked.
template <class F>
cudaError_t dispatch(int dtype, int d, F&& f) {
  using D128 = std::integral_constant<int, 128>;
  using D256 = std::integral_constant<int, 256>;
  if (dtype == 0) return d == 128 ? f(__nv_bfloat16{}, D128{}) : f(__nv_bfloat16{}, D256{});
  return d == 128 ? f(__half{}, D128{}) : f(__half{}, D256{});
}

thread_local char g_error[512] = "";
int fail(int code, const char* msg) { return record_error(g_error, code, msg); }

// Both entry points, past their NULL check: the shared argument checks, then the kernel that `pick`
// names for the (dtype, head dim) pair over (ceil(s / rows), h, b) blocks of `threads`.
template <class Args, class Pick>
int launch_prep(Args const& a, const void* in, const int64_t* stride, const void* out, const float* scale,
                int rows, int threads, Pick pick) {
  if (a.b < 0 || a.s < 0 || a.h <= 0 || a.b > 65535 || a.h > 65535)
    return fail(2, "bad shape: need 0 <= b <= 65535, s >= 0 and 0 < h <= 65535");
  if (a.d != 128 && a.d != 256) return fail(5, "fp8 prep supports head_dim 128 or 256");
  if (a.dtype != 0 && a.dtype != 1) return fail(5, "fp8 prep supports dtype 0 (bf16) or 1 (fp16)");
  if (in == nullptr || out == nullptr) return fail(4, "input and output pointers are required");
  if (!aligned16(in) || !strides8(stride) || !aligned16(out))
    return fail(3, "input and output must be 16-byte aligned, input strides multiples of 8 elements");
  if (scale == nullptr || reinterpret_cast<uintptr_t>(scale) % 4 != 0)
    return fail(4, "scale must be a 4-byte aligned float pointer");
  if (a.b == 0 || a.s == 0) return 0;
  const dim3 grid((a.s + rows - 1) / rows, a.h, a.b);
  cudaError_t err = dispatch(a.dtype, a.d, [&](auto t, auto dim) {
    pick(t, dim)<<<grid, threads, 0, static_cast<cudaStream_t>(a.stream)>>>(a);
    return cudaGetLastError();
  });
  return err == cudaSuccess ? 0 : fail(6, cudaGetErrorString(err));
}

}  // namespace
}  // namespace ringfa3

using ringfa3::fail;

extern "C" const char* ringfa3_sm90_fp8_prep_last_error(void) { return ringfa3::g_error; }

extern "C" int ringfa3_sm90_fp8_quantize_rows(const RingFa3Fp8RowsArgs* args) {
  if (args == nullptr) return fail(1, "args is NULL");
  const RingFa3Fp8RowsArgs& a = *args;
  // The blocks the e4m3 kernel quantizes by (instantiations.h Fp8TileConfig): 128 rows, and at hd128 its
  // query tile and key blocks (up to 224 rows, 28 warps; at hd256 more than 16 warps of 8 rows would
  // not fit the registers).
  auto launch = [&](auto rows) {
    constexpr int kRows = decltype(rows)::value;
    return ringfa3::launch_prep(a, a.x, a.x_stride, a.codes, a.scale, kRows, kRows / ringfa3::kRowsPerWarp * 32,
        [](auto t, auto dim) {   // hd256 only ever gets 128 rows (below)
          constexpr int D = decltype(dim)::value;
          return ringfa3::fp8_rows_kernel<decltype(t), D, D == 128 ? kRows : 128>;
        });
  };
  using Cfg = ringfa3::Fp8TileConfig<128>;
  if (a.rows == 128) return launch(std::integral_constant<int, 128>{});
  if (a.d == 128 && a.rows == Cfg::kM) return launch(std::integral_constant<int, Cfg::kM>{});
  if (a.d == 128 && a.rows == Cfg::kN) return launch(std::integral_constant<int, Cfg::kN>{});
  if (a.d == 128 && a.rows == Cfg::kNFull) return launch(std::integral_constant<int, Cfg::kNFull>{});
  return fail(5, "rows (rows per scale) must be 128, or at head_dim 128 the e4m3 kernel's query tile or key block "
                 "(ringfa3_sm90_fp8_query_rows, ringfa3_sm90_fp8_key_rows)");
}

extern "C" int ringfa3_sm90_fp8_v_transpose(const RingFa3Fp8VArgs* args) {
  if (args == nullptr) return fail(1, "args is NULL");
  const RingFa3Fp8VArgs& a = *args;
  return ringfa3::launch_prep(a, a.v, a.v_stride, a.vt, a.scale, ringfa3::kVKeys, ringfa3::kVThreads,
                              [](auto t, auto dim) { return ringfa3::fp8_v_kernel<decltype(t), decltype(dim)::value>; });
}
