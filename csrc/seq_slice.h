// The rows of one batch entry in a global TMA view, dense or packed (varlen), for both kernels.
#pragma once
#include <cute/tensor.hpp>

namespace ringfa3 {

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
