// Where each accumulator register of a 64xN WGMMA lives in the tile (PTX ISA "wgmma D fragment"):
// value i of a thread holds row  warp*16 + lane/4 + 8*((i/2)%2)  and column  (i/4)*8 + (lane%4)*2 + i%2.
// Each thread therefore owns two rows; the four lanes of a quad share them.
#pragma once

namespace ringfa3 {

struct AccCoord {
  int row0;   // this thread's first row inside the 64-row warpgroup slice (second is row0 + 8)
  int col0;   // column of value 0 inside each 8-column chunk
  __device__ explicit AccCoord(int thread_in_wg) {
    int warp = thread_in_wg / 32, lane = thread_in_wg % 32;
    row0 = warp * 16 + lane / 4;
    col0 = (lane % 4) * 2;
  }
  __device__ static constexpr int row_half(int i) { return (i >> 1) & 1; }   // 0 -> row0, 1 -> row0+8
  __device__ static constexpr int col_offset(int i) { return (i >> 2) * 8 + (i & 1); }   // col(i) - col0
  __device__ int col(int i) const { return col0 + col_offset(i); }
};

// Max / sum over the four lanes of a quad (they hold the same two rows).
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffff, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffff, x, 1);
  return x + __shfl_xor_sync(0xffffffff, x, 2);
}

}  // namespace ringfa3
