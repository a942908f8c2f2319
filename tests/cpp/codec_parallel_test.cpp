// The torch-free Parallel helpers used by codecs, tests and benchmarks.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <stdexcept>

#include "core/codec/parallel.h"

namespace saddle::codec {
namespace {

// Runs `par` and checks every index is covered exactly once, by few enough non-empty ranges.
void check_cover(const Parallel& par, size_t count, size_t grain) {
  std::vector<std::atomic<int>> seen(count);
  std::atomic<size_t> calls{0};
  std::mutex mu;
  std::vector<std::pair<size_t, size_t>> ranges;
  par(count, grain, [&](size_t b, size_t e) {
    ++calls;
    {
      std::lock_guard<std::mutex> lock(mu);
      ranges.emplace_back(b, e);
    }
    for (size_t i = b; i < e; ++i) ++seen[i];
  });
  for (size_t i = 0; i < count; ++i) ASSERT_EQ(seen[i].load(), 1) << i;
  if (count == 0) {
    EXPECT_EQ(calls.load(), 0u);
  }
  for (const auto& [b, e] : ranges) ASSERT_LT(b, e);
  // No more tasks than the grain allows.
  ASSERT_LE(ranges.size(), std::max<size_t>(1, (count + grain - 1) / grain));
}

TEST(CodecParallel, SerialAndPoolCoverEveryIndexOnce) {
  const Parallel pool = thread_pool_parallel(4);
  for (size_t count : {0, 1, 5, 100, 1000, 12345})
    for (size_t grain : {1, 7, 100, 5000}) {
      check_cover(serial(), count, grain);
      check_cover(pool, count, grain);
    }
}

TEST(CodecParallel, ExceptionsReachTheCaller) {
  const Parallel pool = thread_pool_parallel(3);
  EXPECT_THROW(pool(100, 1,
                    [](size_t b, size_t) {
                      if (b > 0) throw std::runtime_error("boom");
                    }),
               std::runtime_error);
  check_cover(pool, 1000, 1);  // still usable
}

TEST(CodecParallel, NestedCallsRunInline) {
  const Parallel pool = thread_pool_parallel(2);
  std::atomic<size_t> total{0};
  pool(4, 1, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) pool(10, 1, [&](size_t b2, size_t e2) { total += e2 - b2; });
  });
  EXPECT_EQ(total.load(), 40u);
  EXPECT_THROW(thread_pool_parallel(0), std::invalid_argument);
}

}  // namespace
}  // namespace saddle::codec
