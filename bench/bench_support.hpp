#pragma once
// Shared pieces of the benchmarks (a header, so bench/CMakeLists.txt does not build it):
// throughput counters, and the memory floor of a kernel that reads two [rows, cols] float
// matrices and writes one gradient -- one streaming pass, the output written as losskit writes
// large gradients (non-temporal stores above core/rows.hpp's threshold).

#include <losskit/losskit.hpp>

#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdint>

namespace losskit_bench {

// items = elements per iteration; bytes = `streams` float streams (reads + writes) per element.
inline void set_counters(benchmark::State& st, Eigen::Index rows, Eigen::Index cols, int streams) {
  const auto elems = std::int64_t(rows) * std::int64_t(cols);
  st.SetItemsProcessed(std::int64_t(st.iterations()) * elems);
  st.SetBytesProcessed(std::int64_t(st.iterations()) * elems * std::int64_t(streams * sizeof(float)));
}

// g = s + t over whole rows, vectorised, on `threads` row ranges.
inline void floor_two_inputs(const losskit::RowMatrixXf& s, const losskit::RowMatrixXf& t, losskit::RowMatrixXf& g,
                             int threads) {
  const auto rows = s.rows(), cols = s.cols();
  const bool stream = losskit::detail::streaming_output<float>(rows, cols);
  losskit::detail::parallel_ranges(rows, threads, [&](int, std::ptrdiff_t b, std::ptrdiff_t e) {
    const float* sp = s.row(b).data();
    const float* tp = t.row(b).data();
    losskit::detail::store_row<float>(g.row(b).data(), 0, std::size_t((e - b) * cols), stream, [&](auto tag, std::size_t i) {
      using V = typename decltype(tag)::type;
      return losskit::simd::load<V>(sp + i) + losskit::simd::load<V>(tp + i);
    });
    losskit::simd::stream_fence();
  });
}

}  // namespace losskit_bench
