// Host-side argument checks shared by the C entry points of the forward (api.cu) and the backward
// (bwd/api_bwd.cu). Each entry point keeps its own last-error text.
#pragma once
#include <cstdint>
#include <cstdio>

namespace ringfa3 {

// Records `msg` as the entry point's last error and returns `code`.
template <int N>
inline int record_error(char (&buf)[N], int code, const char* msg) {
  std::snprintf(buf, N, "%s", msg);
  return code;
}
inline bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }
// (batch, seq, head) element strides all multiples of 8 (16-byte rows for TMA and vector accesses).
inline bool strides8(int64_t const* s) { return s[0] % 8 == 0 && s[1] % 8 == 0 && s[2] % 8 == 0; }

}  // namespace ringfa3
