// Encode + decode throughput of the codecs against memcpy, on one large buffer.
//   codec_bench [n=25000000] [reps=5] [threads=1]
// Throughput is fp32 input bytes (4n) per second; "vs memcpy" divides by memcpy's rate on 4n bytes.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "core/codec/codec.h"
#include "core/codec/simd.h"

using namespace saddle::codec;

namespace {

template <typename Fn>
double best_seconds(int reps, Fn&& fn) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    const auto t1 = std::chrono::steady_clock::now();
    best = std::min(best, std::chrono::duration<double>(t1 - t0).count());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const size_t n = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 25000000;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 5;
  const int threads = argc > 3 ? std::atoi(argv[3]) : 1;
  const Parallel par = threads > 1 ? thread_pool_parallel(threads) : serial();

  std::vector<float> x(n), y(n, 0.0f), copy(n, 0.0f);
  std::mt19937_64 rng(1);
  std::normal_distribution<float> normal;
  for (auto& v : x) v = normal(rng);

  const double t_memcpy = best_seconds(reps, [&] { std::memcpy(copy.data(), x.data(), 4 * n); });
  const double gbs = 4.0 * n / 1e9;
  std::printf("n=%zu threads=%d simd=%s  memcpy: %.2f ms, %.2f GB/s\n", n, threads,
              simd::avx2() ? "avx2+f16c" : "portable", t_memcpy * 1e3, gbs / t_memcpy);
  std::printf("%-26s %9s %9s %9s %11s %8s\n", "codec", "enc ms", "dec ms", "add ms", "enc+dec GB/s",
              "vs memcpy");

  const CodecSpec specs[] = {CodecSpec::none(), CodecSpec::fp16(),     CodecSpec::bf16(),
                             CodecSpec::int8(), CodecSpec::qsgd(4),    CodecSpec::qsgd(2),
                             CodecSpec::sign(), CodecSpec::topk(0.01), CodecSpec::randk(0.01)};
  for (const auto& spec : specs) {
    const auto codec = make_codec(spec);
    std::vector<uint8_t> msg(codec->encoded_bytes(n));
    const double te = best_seconds(reps, [&] { codec->encode(x.data(), n, 7, msg.data(), msg.size(), par); });
    const double td = best_seconds(reps, [&] { codec->decode(msg.data(), msg.size(), n, 7, y.data(), par); });
    const double ta =
        best_seconds(reps, [&] { codec->decode_add(msg.data(), msg.size(), n, 7, 0.5f, y.data(), par); });
    std::printf("%-26s %9.2f %9.2f %9.2f %11.2f %8.2fx\n", to_string(codec->spec()).c_str(), te * 1e3,
                td * 1e3, ta * 1e3, gbs / (te + td), t_memcpy / (te + td));
  }

  // Reference points for topk: a full sort and nth_element of |x|.
  std::vector<float> a(n);
  const double t_sort = best_seconds(1, [&] {
    for (size_t i = 0; i < n; ++i) a[i] = std::fabs(x[i]);
    std::sort(a.begin(), a.end());
  });
  const double t_nth = best_seconds(std::min(reps, 2), [&] {
    for (size_t i = 0; i < n; ++i) a[i] = std::fabs(x[i]);
    std::nth_element(a.begin(), a.begin() + n / 100, a.end(), std::greater<float>());
  });
  std::printf("reference: std::sort(|x|) %.1f ms, std::nth_element(|x|, 1%%) %.1f ms\n", t_sort * 1e3,
              t_nth * 1e3);
  return 0;
}
