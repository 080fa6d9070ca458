// Divergences, forward + gradient w.r.t. the student logits, float, in one binary:
//   floor   one streaming read of student and teacher and one write of the gradient
//   losskit the library
//   eigen   a straightforward Eigen implementation (softmax matrices, then the formulas)
//   torch   libtorch autograd: log_softmax + the divergence + backward (when built with torch)
// Shapes: 1024 x 32000 and 256 x 128256; threads 1 and 2 (torch::set_num_threads for torch).
// Plus 16 x 32000 for the floor and losskit on one thread: everything stays in cache, so its
// time per element (1e9 / items_per_second) is the kernel's compute cost without memory, the
// figure that explains the ratios to the memory floor (README "Performance").
// bench/report.py turns the JSON output into the ratio table of the README.
//
//   build/release/bench/bench_divergence_vs_torch --benchmark_format=json > out.json
//   python3 bench/report.py out.json

#include "bench_support.hpp"

#include <cmath>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace {

using losskit::RowMatrixXf;
constexpr double kTemperature = 2.0;
constexpr double kBeta = 0.5;
constexpr double kSkew = 0.1;

struct Inputs {
  RowMatrixXf s, t, g;
};

// One pair of inputs per shape, shared by every benchmark (built once).
Inputs& inputs(Eigen::Index rows, Eigen::Index cols) {
  return losskit_bench::per_shape<Inputs>(rows, cols, [](Eigen::Index r, Eigen::Index c) {
    Inputs in{RowMatrixXf(r, c), RowMatrixXf(r, c), RowMatrixXf::Zero(r, c)};
    std::mt19937 rng(7);
    losskit_bench::fill_normal(rng, {&in.s, &in.t});
    return in;
  });
}

void set_counters(benchmark::State& st, Eigen::Index rows, Eigen::Index cols) {
  losskit_bench::set_counters(st, rows, cols, 3);  // 2 reads + 1 write per element
}

// ---- the floor: one streaming read of both inputs, one write (bench_support.hpp) -------------
void BM_floor(benchmark::State& st) {
  auto& in = inputs(st.range(0), st.range(1));
  losskit_bench::time_floor(st, in.s, in.t, in.g);
}

// ---- losskit -------------------------------------------------------------------------------------
using LossFn = std::function<losskit::LossResult(const RowMatrixXf&, const RowMatrixXf&, RowMatrixXf&,
                                                 const losskit::DivergenceOptions&)>;
const std::map<std::string, LossFn>& losskit_fns() {
  static const std::map<std::string, LossFn> fns{
      {"kl_div", [](auto& s, auto& t, auto& g, auto& o) { return losskit::kl_div(s, t, g, o); }},
      {"reverse_kl_div", [](auto& s, auto& t, auto& g, auto& o) { return losskit::reverse_kl_div(s, t, g, o); }},
      {"jsd", [](auto& s, auto& t, auto& g, auto& o) { return losskit::jsd(s, t, g, o); }},
      {"skew_kl_div", [](auto& s, auto& t, auto& g, auto& o) { return losskit::skew_kl_div(s, t, g, o); }},
      {"skew_reverse_kl_div",
       [](auto& s, auto& t, auto& g, auto& o) { return losskit::skew_reverse_kl_div(s, t, g, o); }},
      {"tvd", [](auto& s, auto& t, auto& g, auto& o) { return losskit::tvd(s, t, g, o); }},
      {"cauchy_schwarz_div",
       [](auto& s, auto& t, auto& g, auto& o) { return losskit::cauchy_schwarz_div(s, t, g, o); }},
  };
  return fns;
}

void BM_losskit(benchmark::State& st, const std::string& name) {
  const auto rows = st.range(0), cols = st.range(1);
  auto& in = inputs(rows, cols);
  losskit::DivergenceOptions o;
  o.temperature = kTemperature;
  o.beta = kBeta;
  o.skew_alpha = kSkew;
  o.threads = int(st.range(2));
  const auto& fn = losskit_fns().at(name);
  double v = 0;
  for (auto _ : st) {
    v = fn(in.s, in.t, in.g, o).value;
    benchmark::DoNotOptimize(in.g.data());  // not the double: GCC 12 in C++20 mode garbles it
    benchmark::ClobberMemory();
  }
  st.counters["loss"] = v;
  set_counters(st, rows, cols);
}

// ---- naive Eigen ---------------------------------------------------------------------------------
// What one writes without a fused kernel: materialise log-softmax and softmax matrices, then
// evaluate the formula and its gradient with array expressions (Eigen's own threads are not
// used: this is the single-thread baseline).
using ArrayXXr = Eigen::Array<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
ArrayXXr log_softmax(const RowMatrixXf& v) {
  ArrayXXr a = v.array() / float(kTemperature);
  const Eigen::ArrayXf m = a.rowwise().maxCoeff();
  a.colwise() -= m;
  const Eigen::ArrayXf lse = a.exp().rowwise().sum().log();
  a.colwise() -= lse;
  return a;
}

void BM_eigen(benchmark::State& st, const std::string& name) {
  const auto rows = st.range(0), cols = st.range(1);
  auto& in = inputs(rows, cols);
  const float it = float(1.0 / kTemperature), n = float(rows);
  double v = 0;
  for (auto _ : st) {
    const ArrayXXr x = log_softmax(in.s), y = log_softmax(in.t), q = x.exp(), p = y.exp();
    ArrayXXr g;  // log-space gradient dL/dx, then the softmax chain rule
    if (name == "kl_div") {
      v = (p * (y - x)).sum() / n;
      g = -p;
    } else if (name == "reverse_kl_div") {
      v = (q * (x - y)).sum() / n;
      g = q * (x - y) + q;
    } else if (name == "jsd") {
      const float b = float(kBeta);
      const ArrayXXr lm = (b * p + (1 - b) * q).log();
      v = (b * p * (y - lm) + (1 - b) * q * (x - lm)).sum() / n;
      g = (1 - b) * q * (x - lm);
    } else if (name == "skew_kl_div") {
      const float a = float(kSkew);
      const ArrayXXr m = a * p + (1 - a) * q;
      v = (p * (y - m.log())).sum() / n;
      g = -(1 - a) * q * p / m;
    } else if (name == "skew_reverse_kl_div") {
      const float a = float(kSkew);
      const ArrayXXr m = (1 - a) * p + a * q;
      v = (q * (x - m.log())).sum() / n;
      g = q * (x - m.log() + 1 - a * q / m);
    } else if (name == "tvd") {
      v = 0.5 * (p - q).abs().sum() / n;
      g = q * (q > p).select(ArrayXXr::Constant(rows, cols, 0.5f), ArrayXXr::Constant(rows, cols, -0.5f));
    } else {  // cauchy_schwarz_div
      const Eigen::ArrayXf pq = (p * q).rowwise().sum(), qq = (q * q).rowwise().sum(), pp = (p * p).rowwise().sum();
      v = (pp.log() + qq.log() - 2 * pq.log()).sum() / n;
      g = ArrayXXr((q * q).colwise() / qq) * 2.f - ArrayXXr((q * p).colwise() / pq) * 2.f;
    }
    const Eigen::ArrayXf gs = g.rowwise().sum();
    in.g.array() = (g - ArrayXXr(q.colwise() * gs)) * (it / n);
    benchmark::DoNotOptimize(in.g.data());
    benchmark::ClobberMemory();
  }
  st.counters["loss"] = v;
  set_counters(st, rows, cols);
}

// ---- libtorch ------------------------------------------------------------------------------------
#if LOSSKIT_HAVE_TORCH
torch::Tensor torch_loss(const std::string& name, const torch::Tensor& s, const torch::Tensor& t) {
  namespace F = torch::nn::functional;
  const double n = double(s.size(0));
  const auto x = torch::log_softmax(s / kTemperature, 1), y = torch::log_softmax(t / kTemperature, 1);
  const auto batchmean = F::KLDivFuncOptions().reduction(torch::kBatchMean).log_target(true);
  if (name == "kl_div") return F::kl_div(x, y, batchmean);
  if (name == "reverse_kl_div") return F::kl_div(y, x, batchmean);
  if (name == "jsd") {  // as TRL's generalized_jsd_loss
    const auto lm = torch::logsumexp(torch::stack({x + std::log(1 - kBeta), y + std::log(kBeta)}), 0);
    return kBeta * F::kl_div(lm, y, batchmean) + (1 - kBeta) * F::kl_div(lm, x, batchmean);
  }
  const auto q = x.exp(), p = y.exp();
  if (name == "skew_kl_div") return (p * (y - (kSkew * p + (1 - kSkew) * q).log())).sum() / n;
  if (name == "skew_reverse_kl_div") return (q * (x - ((1 - kSkew) * p + kSkew * q).log())).sum() / n;
  if (name == "tvd") return 0.5 * (p - q).abs().sum() / n;
  return (torch::logsumexp(2 * x, 1) + torch::logsumexp(2 * y, 1) - 2 * torch::logsumexp(x + y, 1)).sum() / n;
}

void BM_torch(benchmark::State& st, const std::string& name) {
  const auto rows = st.range(0), cols = st.range(1);
  auto& in = inputs(rows, cols);
  const auto opts = torch::TensorOptions().dtype(torch::kFloat32);
  const auto s = torch::from_blob(in.s.data(), {rows, cols}, opts).clone().requires_grad_(true);
  const auto t = torch::from_blob(in.t.data(), {rows, cols}, opts).clone();
  st.counters["loss"] = losskit_bench::time_torch_backward(st, s, [&] { return torch_loss(name, s, t); });
  set_counters(st, rows, cols);
}
#endif

const std::vector<losskit_bench::Shape> kShapes{{1024, 32000}, {256, 128256}};
const std::vector<losskit_bench::Shape> kInCache{{16, 32000}};

const int registered = [] {
  using losskit_bench::register_grid;
  register_grid("floor", kShapes, {1, 2}, BM_floor);
  register_grid("floor", kInCache, {1}, BM_floor)->Unit(benchmark::kMicrosecond);
  for (const auto& [name, fn] : losskit_fns()) {
    (void)fn;
    register_grid(name + "/losskit", kShapes, {1, 2}, BM_losskit, name);
    register_grid(name + "/losskit", kInCache, {1}, BM_losskit, name)->Unit(benchmark::kMicrosecond);
    register_grid(name + "/eigen", kShapes, {1}, BM_eigen, name);
#if LOSSKIT_HAVE_TORCH
    register_grid(name + "/torch", kShapes, {1, 2}, BM_torch, name);
#endif
  }
  return 0;
}();

}  // namespace
