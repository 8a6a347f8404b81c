// Transposing stmatrix stores of a 16-bit register tile into a swizzled shared-memory tile, from one
// row address per thread computed once. Through the swizzled tensor, cute recomputes every store's
// address from the generic 64-bit pointer at each block (about 25 integer instructions in the
// backward's loop, bench/NOTES-bwd.md run 134), though it depends only on the thread and the tile.
#pragma once
#include <type_traits>
#include <cute/tensor.hpp>

namespace ringfa3 {

// A thread's partition (registers or smem) as (8 values of a store, stores): the atom's values come
// first in the partition's index order, e.g. ((8, 4), 1, 1) for four stores.
template <class Part>
CUTE_HOST_DEVICE auto by_store(Part&& t) {
  constexpr int n = int(cute::size(typename std::decay_t<Part>::layout_type{}));
  static_assert(n % 8 == 0, "stores of 8 16-bit values");
  return t.compose(cute::make_layout(cute::make_shape(cute::_8{}, cute::Int<n / 8>{})));
}

// Layout: a thread's partition of the tile, (values of a store, stores), in elements before the
// swizzle. The swizzle XORs address bits 4-6 with bits 7-9 (128-byte swizzle, 1024-byte period), so
// stores whole periods apart keep the first store's swizzled address plus a constant.
template <class T, class Layout>
struct StsmRows {
  static constexpr int kStores = int(cute::size<1>(Layout{}));
  uint32_t first;   // shared-memory byte address of this thread's row in the first store

  template <int i>
  static constexpr uint32_t distance() {
    constexpr int bytes = (int(Layout{}(0, i)) - int(Layout{}(0, 0))) * int(sizeof(T));
    static_assert(bytes >= 0 && bytes % 1024 == 0, "stores whole swizzle periods apart");
    return uint32_t(bytes);
  }

  // src: the thread's retile_S of the registers (8 16-bit values per store). offset: bytes added to
  // every address, for a tile a whole number of swizzle periods further on (0 for the first tile).
  template <class Src>
  __device__ void store(Src const& src, uint32_t offset) const {
    auto s = by_store(src);
    cute::for_each(cute::make_int_sequence<kStores>{}, [&](auto i) {
      auto r = cute::recast<uint32_t>(s(cute::_, int(i)));
      asm volatile("stmatrix.sync.aligned.x4.trans.m8n8.shared.b16 [%0], {%1, %2, %3, %4};\n"
                   :: "r"(first + offset + distance<decltype(i)::value>()), "r"(r(0)), "r"(r(1)), "r"(r(2)), "r"(r(3)));
    });
  }
};

// The stores of one tiled stmatrix copy over a thread's partition of `tile`. An element's reference
// carries the swizzle; a store's 16-byte row starts at its first element.
template <class ThrCopy, class Tile>
__device__ auto stsm_rows(ThrCopy const& thr, Tile const& tile) {
  auto dst = by_store(thr.partition_D(tile));
  using T = typename decltype(dst)::value_type;
  return StsmRows<T, decltype(dst.layout())>{cute::cast_smem_ptr_to_uint(&dst(0, 0))};
}

}  // namespace ringfa3
