// The rows of one batch entry, dense or packed (varlen), for both kernels: where a segment lies in
// the packed tensors, and its slice of a global TMA view.
#pragma once
#include <cstdint>
#include <cute/tensor.hpp>

namespace ringfa3 {

// What one batch entry covers: the whole entry (dense), or one packed segment (varlen): its first
// query and key row in the packed tensors, its lengths, and its causal diagonal offset.
struct Extent { int q0, s_q, k0, s_k, off; };

// Segment `seg` of a varlen call (cu_seqlens_q / cu_seqlens_k, (segments + 1,) each).
__device__ __forceinline__ Extent segment_extent(const int32_t* cu_q, const int32_t* cu_k, int seg) {
  int q0 = cu_q[seg], k0 = cu_k[seg];
  int s_q = cu_q[seg + 1] - q0, s_k = cu_k[seg + 1] - k0;
  return Extent{q0, s_q, k0, s_k, s_k - s_q};
}

// A tile's (forward) or CTA's (backward) slice of a global TMA view whose mode kSeq runs over rows:
// its batch entry (dense), or the packed rows from its segment's first one on (varlen; rows past the
// segment are masked keys, or query rows that are not stored or weigh nothing).
template <class Tr, int kSeq, class View>
__device__ __forceinline__ auto seq_slice(View const& m, int head, int batch, int first_row) {
  using namespace cute;
  if constexpr (!Tr::kVarlen) {
    return m(_, _, head, batch);
  } else if constexpr (kSeq == 0) {
    return domain_offset(make_coord(first_row, _0{}), m(_, _, head, 0));
  } else {
    return domain_offset(make_coord(_0{}, first_row), m(_, _, head, 0));
  }
}

}  // namespace ringfa3
