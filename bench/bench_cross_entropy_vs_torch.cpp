// Cross entropy over hard labels, forward + gradient w.r.t. the logits, float, in one binary:
//   floor          one streaming read of the logits and one write of the gradient
//   losskit        losskit::cross_entropy, label_smoothing 0.1 and z_loss 1e-4
//   losskit plain  (kernel cross_entropy_plain) the same without smoothing and z-loss
//   eigen          a straightforward Eigen implementation (softmax matrix, then the formulas)
//   torch          libtorch F::cross_entropy(label_smoothing 0.1) + backward (when built with
//                  torch; torch has no z-loss, so its baseline does a little less work)
// Shapes: 1024 x 32000 and 4096 x 128256 (2.1 GB per float matrix); threads 1 and 2
// (torch::set_num_threads for torch). The eigen baseline is single-threaded.
//
//   build/release/bench/bench_cross_entropy_vs_torch --benchmark_format=json > out.json
//   python3 bench/report.py out.json

#include <losskit/losskit.hpp>

#include <benchmark/benchmark.h>

#include <cstdint>
#include <map>
#include <random>
#include <vector>

#if LOSSKIT_HAVE_TORCH
#include <torch/torch.h>
#endif

namespace {

using losskit::RowMatrixXf;
constexpr double kSmoothing = 0.1;
constexpr double kZLoss = 1e-4;

struct Inputs {
  RowMatrixXf x, g;
  std::vector<std::int64_t> y;
};

// One input per shape, shared by every benchmark (built once): logits ~ N(0, 3), uniform labels.
Inputs& inputs(Eigen::Index rows, Eigen::Index cols) {
  static std::map<std::pair<Eigen::Index, Eigen::Index>, Inputs> cache;
  auto it = cache.find({rows, cols});
  if (it == cache.end()) {
    Inputs in{RowMatrixXf(rows, cols), RowMatrixXf(rows, cols), std::vector<std::int64_t>(std::size_t(rows))};
    std::mt19937 rng(11);
    std::normal_distribution<float> n(0.f, 3.f);
    for (Eigen::Index i = 0; i < in.x.size(); ++i) in.x.data()[i] = n(rng);
    std::uniform_int_distribution<std::int64_t> label(0, cols - 1);
    for (auto& v : in.y) v = label(rng);
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

// ---- the floor: g = 2 x, vectorised, one pass, gradients stored as losskit stores them ------------
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
                                          const V v = losskit::simd::load<V>(x + i);
                                          return v + v;
                                        });
      losskit::simd::stream_fence();
    });
    benchmark::ClobberMemory();
  }
  set_counters(st, rows, cols);
}

// ---- losskit -------------------------------------------------------------------------------------
void BM_losskit(benchmark::State& st, bool options) {
  const auto rows = st.range(0), cols = st.range(1);
  auto& in = inputs(rows, cols);
  losskit::CrossEntropyOptions o;
  if (options) {
    o.label_smoothing = kSmoothing;
    o.z_loss = kZLoss;
  }
  o.threads = int(st.range(2));
  double v = 0;
  for (auto _ : st) {
    v = losskit::cross_entropy(in.x, in.y, in.g, o).value;
    benchmark::DoNotOptimize(v);
    benchmark::ClobberMemory();
  }
  st.counters["loss"] = v;
  set_counters(st, rows, cols);
}

// ---- naive Eigen ---------------------------------------------------------------------------------
// What one writes without a fused kernel: a softmax matrix, the loss from row reductions, the
// gradient as an array expression, the target entries fixed afterwards.
using ArrayXXr = Eigen::Array<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
void BM_eigen(benchmark::State& st) {
  const auto rows = st.range(0), cols = st.range(1);
  auto& in = inputs(rows, cols);
  const float eps = float(kSmoothing), zc = float(kZLoss), n = float(rows);
  double v = 0;
  for (auto _ : st) {
    const auto x = in.x.array();
    const Eigen::ArrayXf m = x.rowwise().maxCoeff();
    ArrayXXr p = (x.colwise() - m).exp();
    const Eigen::ArrayXf s = p.rowwise().sum();
    const Eigen::ArrayXf lse = m + s.log();
    const Eigen::ArrayXf mean_x = x.rowwise().mean();
    p.colwise() /= s;
    double loss = 0;
    for (Eigen::Index r = 0; r < rows; ++r) {
      const float xy = x(r, in.y[std::size_t(r)]);
      loss += (1 - eps) * (lse(r) - xy) + eps * (lse(r) - mean_x(r)) + zc * lse(r) * lse(r);
    }
    v = loss / n;
    const Eigen::ArrayXf scale = (1 + 2 * zc * lse) / n;
    in.g.array() = p.colwise() * scale - eps / float(cols) / n;
    for (Eigen::Index r = 0; r < rows; ++r) in.g(r, in.y[std::size_t(r)]) -= (1 - eps) / n;
    benchmark::DoNotOptimize(v);
    benchmark::ClobberMemory();
  }
  st.counters["loss"] = v;
  set_counters(st, rows, cols);
}

// ---- libtorch ------------------------------------------------------------------------------------
#if LOSSKIT_HAVE_TORCH
void BM_torch(benchmark::State& st) {
  namespace F = torch::nn::functional;
  const auto rows = st.range(0), cols = st.range(1);
  auto& in = inputs(rows, cols);
  torch::set_num_threads(int(st.range(2)));
  const auto x = torch::from_blob(in.x.data(), {rows, cols}, torch::TensorOptions().dtype(torch::kFloat32))
                     .clone()
                     .requires_grad_(true);
  const auto y = torch::from_blob(in.y.data(), {rows}, torch::TensorOptions().dtype(torch::kInt64)).clone();
  const auto opts = F::CrossEntropyFuncOptions().label_smoothing(kSmoothing);
  double v = 0;
  for (auto _ : st) {
    auto loss = F::cross_entropy(x, y, opts);
    loss.backward();
    v = loss.item<double>();
    benchmark::DoNotOptimize(x.grad().data_ptr());
    x.mutable_grad().reset();
  }
  st.counters["loss"] = v;
  set_counters(st, rows, cols);
}
#endif

void with_threads(benchmark::internal::Benchmark* b, std::initializer_list<int> threads) {
  b->ArgNames({"rows", "cols", "threads"});
  for (auto [r, c] : {std::pair<int, int>{1024, 32000}, {4096, 128256}})
    for (int th : threads) b->Args({r, c, th});
  b->Unit(benchmark::kMillisecond)->UseRealTime()->MinWarmUpTime(0.05);
}
void shapes(benchmark::internal::Benchmark* b) { with_threads(b, {1, 2}); }
void single_thread(benchmark::internal::Benchmark* b) { with_threads(b, {1}); }

const int registered = [] {
  benchmark::RegisterBenchmark("floor", BM_floor)->Apply(shapes);
  benchmark::RegisterBenchmark("cross_entropy/losskit", BM_losskit, true)->Apply(shapes);
  benchmark::RegisterBenchmark("cross_entropy_plain/losskit", BM_losskit, false)->Apply(shapes);
  benchmark::RegisterBenchmark("cross_entropy/eigen", BM_eigen)->Apply(single_thread);
#if LOSSKIT_HAVE_TORCH
  benchmark::RegisterBenchmark("cross_entropy/torch", BM_torch)->Apply(shapes);
#endif
  return 0;
}();

}  // namespace
