// Tasks spread over the thread pool with per-slot scratch allocated up front, on
// the calling thread: a parallel_for body then never allocates (a bad_alloc on a
// worker thread would terminate the process). Slot s runs tasks s, s + S, s + 2S, ...
// (cyclic: triangular or ragged task sizes balance across threads).
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

#include "quantform/engine.h"
#include "quantform/threadpool.h"

namespace qf {

class TaskSlots {
 public:
  explicit TaskSlots(int64_t scratch_floats)
      : per_(scratch_floats), count_(std::max(1, num_threads())), scratch_((size_t)(per_ * count_)) {}

  // fn(task, scratch) for every task in [0, n); scratch: scratch_floats of the running slot.
  // The engine's parallel_slots hands out the S slots (one item each), so the pool is
  // split in one place.
  void run(int64_t n, const std::function<void(int64_t task, float* scratch)>& fn) {
    const int64_t S = std::min<int64_t>(count_, n);
    if (S <= 0) return;
    parallel_slots(S, 1, S, [&](int64_t slot, int64_t s0, int64_t s1) {
      for (int64_t s = s0; s < s1; s++)
        for (int64_t t = s; t < n; t += S) fn(t, scratch_.data() + slot * per_);
    });
  }

 private:
  int64_t per_, count_;
  std::vector<float> scratch_;  // (count, per)
};

}  // namespace qf
