// The dynamic shared-memory limit of a kernel is a per-device function attribute: set it once per
// device and kernel, not at every launch.
#pragma once
#include <atomic>
#include <stdint.h>
#include <cuda_runtime.h>

namespace ringfa3 {
// Internal linkage: the flag below would otherwise be a GNU "unique" symbol that the dynamic loader
// merges across two builds of the library loaded in one process (A/B timing), and one build would
// skip setting its own kernel's attribute (bench/NOTES.md run 4b: "invalid argument").
namespace {

template <auto kKernel>
cudaError_t set_max_dynamic_smem_once(int dev, int bytes) {
  static std::atomic<uint64_t> set_on_device{0};
  uint64_t bit = dev < 64 ? (uint64_t(1) << dev) : 0;
  if (bit != 0 && (set_on_device.load() & bit)) return cudaSuccess;
  cudaError_t err = cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err == cudaSuccess) set_on_device.fetch_or(bit);
  return err;
}

}  // namespace
}  // namespace ringfa3
