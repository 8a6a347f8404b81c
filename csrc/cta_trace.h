// Debug builds only (`--define RINGFA3_TRACE=1`, read by scripts/cta_timeline.py): per unit of work (a
// CTA of the backward's main kernel; a tile of the persistent forward), its SM and clock64 at four
// points, to split its time into prologue (until its first operands have landed), key loop and
// epilogue, and to see the gaps between units on one SM and the SMs' tail. The default build compiles
// none of it.
#pragma once
#include <cstddef>
#include <cstdlib>

#ifndef RINGFA3_TRACE
#define RINGFA3_TRACE 0
#endif

namespace ringfa3 {

enum CtaTraceField { kTraceSm, kTraceStart, kTraceKv, kTraceLoopEnd, kTraceEnd, kTraceGlobalStart, kTraceGlobalEnd,
                     kTraceFields };

// Row `unit` of trace (kTraceFields 64-bit values) gets clock64 in `field`, and at the start and the end
// also %globaltimer (ns, one clock for all SMs: the units' places in the whole kernel). The first
// consumer thread records, so every point is on the consumers' path.
__device__ __forceinline__ void cta_trace(unsigned long long* trace, int unit, CtaTraceField field) {
#if RINGFA3_TRACE
  if (trace == nullptr || threadIdx.x != 128) return;
  unsigned long long* row = trace + size_t(unit) * kTraceFields;
  if (field == kTraceStart) {
    unsigned sm;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    row[kTraceSm] = sm;
  }
  row[field] = clock64();
  if (field == kTraceStart || field == kTraceEnd) {
    unsigned long long ns;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(ns));
    row[field == kTraceStart ? kTraceGlobalStart : kTraceGlobalEnd] = ns;
  }
#else
  (void)trace;
  (void)unit;
  (void)field;
#endif
}

// Host: the trace buffer of the next launch, a device address in decimal in RINGFA3_TRACE_PTR (set by
// scripts/cta_timeline.py around the one call it traces); NULL in the default build.
inline unsigned long long* cta_trace_buffer() {
  char const* ptr = RINGFA3_TRACE ? std::getenv("RINGFA3_TRACE_PTR") : nullptr;
  return ptr ? reinterpret_cast<unsigned long long*>(std::strtoull(ptr, nullptr, 10)) : nullptr;
}

}  // namespace ringfa3
