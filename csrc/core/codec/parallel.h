// Work splitting for the codecs without depending on torch: the binding passes at::parallel_for.
#pragma once

#include <cstddef>
#include <functional>

namespace saddle::codec {

// Calls fn(begin, end) on disjoint non-empty ranges covering [0, count), possibly concurrently, and
// returns when all calls are done; `grain` is the smallest range worth a task (a hint, as in
// at::parallel_for). An exception thrown by fn is rethrown to the caller. Codecs split work on
// fixed boundaries, so their output never depends on how a Parallel groups the ranges or on the
// number of threads.
using Parallel =
    std::function<void(size_t count, size_t grain, const std::function<void(size_t, size_t)>& fn)>;

// Runs fn(0, count) on the calling thread (nothing when count == 0).
Parallel serial();

// A Parallel backed by a pool of `threads` persistent std::threads (the caller counts as one), for
// tests and benchmarks. The pool lives as long as the returned function (and its copies). Calls
// made from inside fn run serially on the calling thread. Raises std::invalid_argument unless
// threads >= 1.
Parallel thread_pool_parallel(int threads);

}  // namespace saddle::codec
