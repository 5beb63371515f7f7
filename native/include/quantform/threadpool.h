// A fixed pool of std::threads (no OpenMP: the addon must load anywhere). Kernels
// receive [begin, end) ranges; ISA-specific code never sees std::function.
#pragma once
#include <cstdint>
#include <functional>

namespace qf {

int num_threads();
// Resizes the pool; n <= 0 means one thread per hardware core.
void set_num_threads(int n);
// Splits [0, n) into at most num_threads() contiguous chunks of at least `grain`
// items and runs fn(begin, end) on each, the caller's thread included. Blocks
// until all chunks are done. Nested calls run serially on the calling thread.
// A body may throw (std::bad_alloc from scratch buffers): the first exception of a
// job stops chunks not yet started, and parallel_for rethrows it on the calling
// thread after the running chunks end. Nothing escapes a worker thread.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace qf
