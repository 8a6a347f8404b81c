// setmaxnreg only moves registers within the pool a CTA launched with: its threads times the
// per-thread count, which for a kernel of one CTA per SM is at most 65536 / threads rounded down to
// 8. Consumers whose alloc asks for more than the producer gave back spin in setmaxnreg forever (a
// 32-register producer beside two 240-register consumers hung the backward: 512 > 3 x 168).
#pragma once

namespace ringfa3 {

constexpr bool reg_split_fits(int producer_regs, int consumer_regs, int consumer_wgs) {
  int threads = 128 * (consumer_wgs + 1);
  return producer_regs + consumer_wgs * consumer_regs <= (consumer_wgs + 1) * (65536 / threads / 8 * 8);
}

}  // namespace ringfa3
