// Debug builds only (`--define RINGFA3_BWD_TRACE=1`, read by scripts/bwd_cta_timeline.py): per CTA of
// the backward's main kernel, its SM and clock64 at four points, to split a CTA's time into prologue
// (until K/V have landed), key loop and epilogue, and to see the gaps between CTAs on one SM. The
// default build compiles none of it.
#pragma once
#include <cstddef>

#ifndef RINGFA3_BWD_TRACE
#define RINGFA3_BWD_TRACE 0
#endif

namespace ringfa3 {

enum CtaTraceField { kTraceSm, kTraceStart, kTraceKv, kTraceLoopEnd, kTraceEnd, kTraceFields };

// Row blockIdx.x of trace (kTraceFields 64-bit values) gets clock64 in `field`; the first consumer
// thread records, so every point is on the consumers' path.
__device__ __forceinline__ void cta_trace(unsigned long long* trace, CtaTraceField field) {
#if RINGFA3_BWD_TRACE
  if (trace == nullptr || threadIdx.x != 128) return;
  unsigned long long* row = trace + size_t(blockIdx.x) * kTraceFields;
  if (field == kTraceStart) {
    unsigned sm;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    row[kTraceSm] = sm;
  }
  row[field] = clock64();
#else
  (void)trace;
  (void)field;
#endif
}

}  // namespace ringfa3
