#pragma once
// Shared pieces of the benchmarks (a header, so bench/CMakeLists.txt does not build it):
//   - inputs: one set per shape, built once (per_shape), logits ~ N(0, 3) (fill_normal);
//   - the memory floor of a kernel that reads one or two [rows, cols] float matrices and writes
//     one gradient: one streaming pass, the output written as losskit writes large gradients
//     (non-temporal stores above core/rows.hpp's threshold);
//   - throughput counters;
//   - registration over a grid of shapes x thread counts, with the argument names rows / cols /
//     threads that bench/report.py parses (names stay `<kernel>/<impl>`);
//   - the libtorch forward + backward timing loop (only when LOSSKIT_HAVE_TORCH is 1).

#include <losskit/losskit.hpp>

#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#if defined(LOSSKIT_HAVE_TORCH) && LOSSKIT_HAVE_TORCH
#include <torch/torch.h>
#endif

namespace losskit_bench {

// ---- inputs ---------------------------------------------------------------------------------------

// The value for this shape, made by make(rows, cols) on first use and kept for every later
// benchmark of the binary. One cache per (T, Make): call it from one place per input type.
template <class T, class Make>
T& per_shape(Eigen::Index rows, Eigen::Index cols, Make&& make) {
  static std::map<std::pair<Eigen::Index, Eigen::Index>, T> cache;
  auto it = cache.find({rows, cols});
  if (it == cache.end()) it = cache.emplace(std::make_pair(rows, cols), make(rows, cols)).first;
  return it->second;
}

// Fills the matrices (all of the same size) with N(0, 3) draws from rng, interleaved element by
// element: m0[0], m1[0], ..., m0[1], m1[1], ...
inline void fill_normal(std::mt19937& rng, std::initializer_list<losskit::RowMatrixXf*> ms) {
  std::normal_distribution<float> n(0.f, 3.f);
  const Eigen::Index size = (*ms.begin())->size();
  for (Eigen::Index i = 0; i < size; ++i)
    for (losskit::RowMatrixXf* m : ms) m->data()[i] = n(rng);
}

// ---- counters -------------------------------------------------------------------------------------

// items = elements per iteration; bytes = `streams` float streams (reads + writes) per element.
inline void set_counters(benchmark::State& st, Eigen::Index rows, Eigen::Index cols, int streams) {
  const auto elems = std::int64_t(rows) * std::int64_t(cols);
  st.SetItemsProcessed(std::int64_t(st.iterations()) * elems);
  st.SetBytesProcessed(std::int64_t(st.iterations()) * elems * std::int64_t(streams * sizeof(float)));
}

// A losskit benchmark's loop: v = call() every iteration (the call writes its gradient), then the
// counters: "loss" (the last v) and those of `streams` float streams per element of the
// st.range(0) x st.range(1) input.
template <class Call>
void time_loss(benchmark::State& st, int streams, Call&& call) {
  double v = 0;
  for (auto _ : st) {
    v = call();
    benchmark::DoNotOptimize(v);
    benchmark::ClobberMemory();
  }
  st.counters["loss"] = v;
  set_counters(st, st.range(0), st.range(1), streams);
}

// ---- floors ---------------------------------------------------------------------------------------

// One streaming pass that writes every element of `out` on `threads` row ranges: row_value(b) gives
// the element function (tag, i) -> value of the rows from b on (i counts floats from row b).
template <class RowValue>
void floor_pass(losskit::RowMatrixXf& out, int threads, RowValue&& row_value) {
  const auto rows = out.rows(), cols = out.cols();
  const bool stream = losskit::detail::streaming_output<float>(rows, cols);
  losskit::detail::parallel_ranges(rows, threads, [&](int, std::ptrdiff_t b, std::ptrdiff_t e) {
    losskit::detail::store_row<float>(out.row(b).data(), 0, std::size_t((e - b) * cols), stream, row_value(b));
    losskit::simd::stream_fence();
  });
}

// g = x + x: one read and one write per element.
inline void floor_one_input(const losskit::RowMatrixXf& x, losskit::RowMatrixXf& g, int threads) {
  floor_pass(g, threads, [&](std::ptrdiff_t b) {
    return [xp = x.row(b).data()](auto tag, std::size_t i) {
      using V = typename decltype(tag)::type;
      const V v = losskit::simd::load<V>(xp + i);
      return v + v;
    };
  });
}

// g = s + t: two reads and one write per element.
inline void floor_two_inputs(const losskit::RowMatrixXf& s, const losskit::RowMatrixXf& t, losskit::RowMatrixXf& g,
                             int threads) {
  floor_pass(g, threads, [&](std::ptrdiff_t b) {
    return [sp = s.row(b).data(), tp = t.row(b).data()](auto tag, std::size_t i) {
      using V = typename decltype(tag)::type;
      return losskit::simd::load<V>(sp + i) + losskit::simd::load<V>(tp + i);
    };
  });
}

// g = x + table, table = x - table: two reads and two writes per element, the traffic of a
// kernel that also reads and rewrites a row of per-sample state (ELR's targets, PS-KD's
// predictions).
inline void floor_with_state(const losskit::RowMatrixXf& x, losskit::RowMatrixXf& table, losskit::RowMatrixXf& g,
                             int threads) {
  namespace simd = losskit::simd;
  const std::size_t cols = std::size_t(x.cols());
  losskit::detail::parallel_ranges(x.rows(), threads, [&](int, std::ptrdiff_t b, std::ptrdiff_t e) {
    const float* xp = x.row(b).data();
    float* gp = g.row(b).data();
    float* tab = table.row(b).data();
    const bool ng = losskit::detail::streamable(gp, true), nt = losskit::detail::streamable(tab, true);
    simd::for_lanes<float>(0, std::size_t(e - b) * cols, [&](auto tag, std::size_t i) {
      using V = typename decltype(tag)::type;
      const V xv = simd::load<V>(xp + i), tv = simd::load<V>(tab + i);
      losskit::detail::put_lanes(gp, i, xv + tv, ng);
      losskit::detail::put_lanes(tab, i, xv - tv, nt);
    });
    simd::stream_fence();
  });
}

// A floor benchmark's loop: floor_one_input(x, g) (two float streams per element) or
// floor_two_inputs(s, t, g) (three) on st.range(2) threads, then the counters of that traffic.
inline void time_floor(benchmark::State& st, const losskit::RowMatrixXf& x, losskit::RowMatrixXf& g) {
  for (auto _ : st) {
    floor_one_input(x, g, int(st.range(2)));
    benchmark::ClobberMemory();
  }
  set_counters(st, g.rows(), g.cols(), 2);
}
inline void time_floor(benchmark::State& st, const losskit::RowMatrixXf& s, const losskit::RowMatrixXf& t,
                       losskit::RowMatrixXf& g) {
  for (auto _ : st) {
    floor_two_inputs(s, t, g, int(st.range(2)));
    benchmark::ClobberMemory();
  }
  set_counters(st, g.rows(), g.cols(), 3);
}

// ---- registration ---------------------------------------------------------------------------------

using Shape = std::pair<std::int64_t, std::int64_t>;  // rows, cols

// RegisterBenchmark(name, fn, extra...) with one run per shape and thread count (shape-major), as
// the args rows / cols / threads (st.range(0..2)), in milliseconds of real time after a 50 ms
// warm-up.
template <class Fn, class... Extra>
benchmark::internal::Benchmark* register_grid(const std::string& name, const std::vector<Shape>& shapes,
                                              const std::vector<int>& threads, Fn&& fn, Extra&&... extra) {
  auto* b = benchmark::RegisterBenchmark(name.c_str(), std::forward<Fn>(fn), std::forward<Extra>(extra)...);
  b->ArgNames({"rows", "cols", "threads"});
  for (const auto& [rows, cols] : shapes)
    for (int th : threads) b->Args({rows, cols, th});
  b->Unit(benchmark::kMillisecond)->UseRealTime()->MinWarmUpTime(0.05);
  return b;
}

// ---- libtorch -------------------------------------------------------------------------------------

#if defined(LOSSKIT_HAVE_TORCH) && LOSSKIT_HAVE_TORCH
// The timing loop of a libtorch baseline on st.range(2) torch threads: loss = loss_fn() (a scalar
// tensor computed from the leaf `x`, which requires grad), loss.backward(), the gradient of x
// released before the next iteration. Returns the last loss.
template <class LossFn>
double time_torch_backward(benchmark::State& st, const torch::Tensor& x, LossFn&& loss_fn) {
  torch::set_num_threads(int(st.range(2)));
  double v = 0;
  for (auto _ : st) {
    auto loss = loss_fn();
    loss.backward();
    v = loss.template item<double>();
    benchmark::DoNotOptimize(x.grad().data_ptr());
    x.mutable_grad().reset();
  }
  return v;
}
#endif

}  // namespace losskit_bench
