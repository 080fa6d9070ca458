// Robust classification losses, forward + gradient w.r.t. the logits, float, in one binary:
//   floor             one streaming read of the logits and one write of the gradient
//   spherical_z_loss  spherical Z-loss (a = 1, b = 0)
//   ldr_kl            LDR-KL with the reference's softplus / mean normalisation (margin 2, lambda 1)
//   ldr_kl_raw        LDR-KL on raw logits
//   aldr_kl           AdaptiveLDR (ALDR-KL, L1 normalisation, one lambda step per row), N = rows
//   elr               ELR (beta 0.7, lambda 3), N = rows: it also reads and writes one target-table
//                     row per logits row, so its own floor is twice the one here
// Shapes: 1024 x 32000 and 256 x 128256; threads 1 and 2. The ratios come from one run:
//
//   build/release/bench/bench_classification --benchmark_format=json > out.json
//   python3 bench/report.py out.json

#include <losskit/losskit.hpp>

#include <benchmark/benchmark.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace {

using losskit::RowMatrixXf;

struct Inputs {
  RowMatrixXf x, g;
  std::vector<std::int64_t> labels, ids;
};

// One input per shape, shared by every benchmark (built once).
Inputs& inputs(Eigen::Index rows, Eigen::Index cols) {
  static std::map<std::pair<Eigen::Index, Eigen::Index>, Inputs> cache;
  auto it = cache.find({rows, cols});
  if (it == cache.end()) {
    Inputs in{RowMatrixXf(rows, cols), RowMatrixXf(rows, cols), {}, {}};
    std::mt19937 rng(7);
    std::normal_distribution<float> n(0.f, 3.f);
    std::uniform_int_distribution<std::int64_t> label(0, cols - 1);
    for (Eigen::Index i = 0; i < in.x.size(); ++i) in.x.data()[i] = n(rng);
    for (Eigen::Index r = 0; r < rows; ++r) {
      in.labels.push_back(label(rng));
      in.ids.push_back(r);
    }
    in.g.setZero();
    it = cache.emplace(std::make_pair(rows, cols), std::move(in)).first;
  }
  return it->second;
}

void set_counters(benchmark::State& st, Eigen::Index rows, Eigen::Index cols) {
  const auto elems = int64_t(rows) * int64_t(cols);
  st.SetItemsProcessed(int64_t(st.iterations()) * elems);
  st.SetBytesProcessed(int64_t(st.iterations()) * elems * int64_t(2 * sizeof(float)));  // 1 read + 1 write
}

// ---- the floor: g = x / 2, vectorised, one pass, written as losskit writes large gradients --------
void BM_floor(benchmark::State& st) {
  const auto rows = st.range(0), cols = st.range(1);
  const int threads = int(st.range(2));
  auto& in = inputs(rows, cols);
  const bool stream = losskit::detail::streaming_output<float>(rows, cols);
  for (auto _ : st) {
    losskit::detail::parallel_ranges(rows, threads, [&](int, std::ptrdiff_t b, std::ptrdiff_t e) {
      const float* x = in.x.row(b).data();
      losskit::detail::store_row<float>(in.g.row(b).data(), 0, std::size_t((e - b) * cols), stream,
                                        [&](auto tag, std::size_t i) {
                                          using V = typename decltype(tag)::type;
                                          return losskit::simd::load<V>(x + i) * V(0.5f);
                                        });
      losskit::simd::stream_fence();
    });
    benchmark::ClobberMemory();
  }
  set_counters(st, rows, cols);
}

// ---- losskit -------------------------------------------------------------------------------------
// Stateful losses keep one object per shape across iterations (each iteration is one more visit).
using Kernel = std::function<double(Inputs&, int threads)>;

const std::map<std::string, Kernel>& kernels() {
  static const std::map<std::string, Kernel> k{
      {"spherical_z_loss",
       [](Inputs& in, int threads) {
         losskit::SphericalZLossOptions o;
         o.threads = threads;
         return losskit::spherical_z_loss(in.x, in.labels, in.g, o).value;
       }},
      {"ldr_kl",
       [](Inputs& in, int threads) {
         losskit::LdrKlOptions o;
         o.threads = threads;
         return losskit::ldr_kl(in.x, in.labels, in.g, o).value;
       }},
      {"ldr_kl_raw",
       [](Inputs& in, int threads) {
         losskit::LdrKlOptions o;
         o.normalize = false;
         o.threads = threads;
         return losskit::ldr_kl(in.x, in.labels, in.g, o).value;
       }},
      {"aldr_kl",
       [](Inputs& in, int threads) {
         static std::map<Eigen::Index, std::unique_ptr<losskit::AdaptiveLDR>> state;
         auto& a = state[in.x.cols()];
         if (!a) a = std::make_unique<losskit::AdaptiveLDR>(std::size_t(in.x.rows()), 1.0);
         losskit::AdaptiveLdrOptions o;
         o.threads = threads;
         return a->loss(in.x, in.labels, in.ids, in.g, o).value;
       }},
      {"elr",
       [](Inputs& in, int threads) {
         static std::map<Eigen::Index, std::unique_ptr<losskit::ELR<float>>> state;
         auto& e = state[in.x.cols()];
         if (!e) e = std::make_unique<losskit::ELR<float>>(std::size_t(in.x.rows()), std::size_t(in.x.cols()));
         losskit::ElrOptions o;
         o.threads = threads;
         return e->loss(in.x, in.labels, in.ids, in.g, o).value;
       }},
  };
  return k;
}

void BM_losskit(benchmark::State& st, const std::string& name) {
  const auto rows = st.range(0), cols = st.range(1);
  auto& in = inputs(rows, cols);
  const auto& fn = kernels().at(name);
  const int threads = int(st.range(2));
  double v = 0;
  for (auto _ : st) {
    v = fn(in, threads);
    benchmark::DoNotOptimize(v);
    benchmark::ClobberMemory();
  }
  st.counters["loss"] = v;
  set_counters(st, rows, cols);
}

void shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "cols", "threads"});
  for (auto [r, c] : {std::pair<int, int>{1024, 32000}, {256, 128256}})
    for (int th : {1, 2}) b->Args({r, c, th});
  b->Unit(benchmark::kMillisecond)->UseRealTime()->MinWarmUpTime(0.05);
}

const int registered = [] {
  benchmark::RegisterBenchmark("floor", BM_floor)->Apply(shapes);
  for (const auto& [name, fn] : kernels()) {
    (void)fn;
    benchmark::RegisterBenchmark((name + "/losskit").c_str(), BM_losskit, name)->Apply(shapes);
  }
  return 0;
}();

}  // namespace
