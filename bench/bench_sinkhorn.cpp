// Sinkhorn and SinKD benchmarks (Google Benchmark).
//
//   sinkhorn/losskit   losskit::sinkhorn, n = m = 1000 (double), points uniform in [0, 1)^2 from
//                      splitmix64 (seed 2024: x, 2025: y), squared euclidean cost, uniform weights,
//                      epsilon = 0.05 * median(C), tol 1e-9 on ||P^T 1 - b||_2 checked every 10
//                      iterations (POT's rule, so both stop at the same iteration), 1 thread unless
//                      the `threads` argument says otherwise; kernel_cache 0 is the plain
//                      log-domain LSE for every iteration. bench/bench_pot.py times POT's
//                      ot.sinkhorn(method='sinkhorn_log') on the same inputs with the same rule.
//   sinkhorn/losskit_float   the same problem in float (tol 1e-6)
//   sinkd/losskit      losskit::sinkd_loss with gradient, 64 x 32000 float logits, T = 2
//   sinkd/softmax_plus_cost  the yardstick of the issue: the softmax of both inputs plus the B x B
//                      L1 cost matrix (losskit's own vectorised kernels, one pass each)
//
//   build/release/bench/bench_sinkhorn --benchmark_counters_tabular=true
//   python3 bench/bench_pot.py            # POT side (OMP/MKL/OPENBLAS threads forced to 1)

#include "bench_support.hpp"

#include <losskit/transport/sinkd.hpp>
#include <losskit/transport/sinkhorn.hpp>

#include "../tests/reference_vectors.hpp"

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

namespace {

using losskit_test::uniform01;  // the splitmix64 uniform shared with the tests and bench_pot.py

struct Problem {
  losskit::RowMatrixXd C;
  Eigen::VectorXd a, b;
  double eps = 0;
};

const Problem& problem() {
  static const Problem p = [] {
    const int n = 1000;
    losskit::RowMatrixXd x(n, 2), y(n, 2);
    for (int i = 0; i < n; ++i)
      for (int k = 0; k < 2; ++k) {
        x(i, k) = uniform01(2024, std::uint64_t(2 * i + k));
        y(i, k) = uniform01(2025, std::uint64_t(2 * i + k));
      }
    Problem q;
    q.C = losskit::pairwise_cost(x, y);
    q.a = Eigen::VectorXd::Constant(n, 1.0 / n);
    q.b = q.a;
    std::vector<double> v(q.C.data(), q.C.data() + q.C.size());
    std::nth_element(v.begin(), v.begin() + std::ptrdiff_t(v.size() / 2), v.end());
    double med = v[v.size() / 2];
    std::nth_element(v.begin(), v.begin() + std::ptrdiff_t(v.size() / 2 - 1), v.end());
    med = 0.5 * (med + v[v.size() / 2 - 1]);  // numpy's median of an even count
    q.eps = 0.05 * med;
    return q;
  }();
  return p;
}

void BM_sinkhorn(benchmark::State& st) {
  const Problem& p = problem();
  losskit::SinkhornOptions o;
  o.epsilon = p.eps;
  o.tol = 1e-9;
  o.check_every = int(st.range(1));
  o.threads = int(st.range(0));
  o.kernel_cache = st.range(2) != 0;
  int iters = 0;
  double err = 0;
  for (auto _ : st) {
    auto r = losskit::sinkhorn(p.a, p.b, p.C, o);
    iters = r.iterations;
    err = r.marginal_error;
    benchmark::DoNotOptimize(r.cost);
  }
  st.counters["solver_iters"] = iters;
  st.counters["marginal_error"] = err;
}
BENCHMARK(BM_sinkhorn)->Name("sinkhorn/losskit")->ArgNames({"threads", "check_every", "kernel_cache"})
    ->Args({1, 10, 1})->Args({1, 1, 1})->Args({2, 10, 1})->Args({1, 10, 0})->Args({2, 10, 0})
    ->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_sinkhorn_float(benchmark::State& st) {
  const Problem& p = problem();
  const losskit::RowMatrixXf C = p.C.cast<float>();
  const Eigen::VectorXf a = p.a.cast<float>(), b = p.b.cast<float>();
  losskit::SinkhornOptions o;
  o.epsilon = p.eps;
  o.tol = 1e-6;
  o.threads = int(st.range(0));
  int iters = 0;
  for (auto _ : st) {
    auto r = losskit::sinkhorn(a, b, C, o);
    iters = r.iterations;
    benchmark::DoNotOptimize(r.cost);
  }
  st.counters["solver_iters"] = iters;
}
BENCHMARK(BM_sinkhorn_float)->Name("sinkhorn/losskit_float")->ArgNames({"threads"})->Arg(1)->Unit(benchmark::kMillisecond)
    ->UseRealTime();

struct Logits {
  losskit::RowMatrixXf s, t, g;
};
const Logits& logits() {
  static const Logits l = [] {
    Logits x{losskit::RowMatrixXf(64, 32000), losskit::RowMatrixXf(64, 32000), losskit::RowMatrixXf(64, 32000)};
    std::mt19937 rng(7);
    losskit_bench::fill_normal(rng, {&x.s, &x.t});  // as the other benchmarks' logits
    return x;
  }();
  return l;
}

void BM_sinkd(benchmark::State& st) {
  const Logits& l = logits();
  losskit::RowMatrixXf g(64, 32000);
  losskit::SinkdOptions o;
  o.threads = int(st.range(0));
  for (auto _ : st) {
    auto r = losskit::sinkd_loss(l.s, l.t, g, o);
    benchmark::DoNotOptimize(r.value);
    benchmark::ClobberMemory();
  }
}
BENCHMARK(BM_sinkd)->Name("sinkd/losskit")->ArgNames({"threads"})->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_softmax_plus_cost(benchmark::State& st) {
  const Logits& l = logits();
  const int threads = int(st.range(0));
  losskit::RowMatrixXf q(64, 32000), p(64, 32000);
  losskit::RowMatrixXd W;
  for (auto _ : st) {
    losskit::detail::softmax_rows<float>(losskit::rows_view(l.s), 2.0, q, threads);
    losskit::detail::softmax_rows<float>(losskit::rows_view(l.t), 2.0, p, threads);
    losskit::detail::l1_cost<float>(q, p, W, threads);
    benchmark::DoNotOptimize(W.data());
    benchmark::ClobberMemory();
  }
}
BENCHMARK(BM_softmax_plus_cost)->Name("sinkd/softmax_plus_cost")->ArgNames({"threads"})->Arg(1)->Arg(2)
    ->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
