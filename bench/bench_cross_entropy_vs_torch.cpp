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

#include "bench_support.hpp"

#include <cstdint>
#include <random>
#include <vector>

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
  return losskit_bench::per_shape<Inputs>(rows, cols, [](Eigen::Index r, Eigen::Index c) {
    Inputs in{RowMatrixXf(r, c), RowMatrixXf::Zero(r, c), std::vector<std::int64_t>(std::size_t(r))};
    std::mt19937 rng(11);
    losskit_bench::fill_normal(rng, {&in.x});
    std::uniform_int_distribution<std::int64_t> label(0, c - 1);
    for (auto& v : in.y) v = label(rng);
    return in;
  });
}

void set_counters(benchmark::State& st, Eigen::Index rows, Eigen::Index cols) {
  losskit_bench::set_counters(st, rows, cols, 2);  // 1 read + 1 write per element
}

// ---- the floor: g = 2 x, one streaming pass (bench_support.hpp) ---------------------------------
void BM_floor(benchmark::State& st) {
  auto& in = inputs(st.range(0), st.range(1));
  losskit_bench::time_floor(st, in.x, in.g);
}

// ---- losskit -------------------------------------------------------------------------------------
void BM_losskit(benchmark::State& st, bool options) {
  auto& in = inputs(st.range(0), st.range(1));
  losskit::CrossEntropyOptions o;
  if (options) {
    o.label_smoothing = kSmoothing;
    o.z_loss = kZLoss;
  }
  o.threads = int(st.range(2));
  losskit_bench::time_loss(st, 2, [&] { return losskit::cross_entropy(in.x, in.y, in.g, o).value; });
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
  const auto x = torch::from_blob(in.x.data(), {rows, cols}, torch::TensorOptions().dtype(torch::kFloat32))
                     .clone()
                     .requires_grad_(true);
  const auto y = torch::from_blob(in.y.data(), {rows}, torch::TensorOptions().dtype(torch::kInt64)).clone();
  const auto opts = F::CrossEntropyFuncOptions().label_smoothing(kSmoothing);
  st.counters["loss"] = losskit_bench::time_torch_backward(st, x, [&] { return F::cross_entropy(x, y, opts); });
  set_counters(st, rows, cols);
}
#endif

const std::vector<losskit_bench::Shape> kShapes{{1024, 32000}, {4096, 128256}};

const int registered = [] {
  using losskit_bench::register_grid;
  register_grid("floor", kShapes, {1, 2}, BM_floor);
  register_grid("cross_entropy/losskit", kShapes, {1, 2}, BM_losskit, true);
  register_grid("cross_entropy_plain/losskit", kShapes, {1, 2}, BM_losskit, false);
  register_grid("cross_entropy/eigen", kShapes, {1}, BM_eigen);
#if LOSSKIT_HAVE_TORCH
  register_grid("cross_entropy/torch", kShapes, {1, 2}, BM_torch);
#endif
  return 0;
}();

}  // namespace
