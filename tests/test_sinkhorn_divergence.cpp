// losskit::sinkhorn_divergence (point clouds) and sinkhorn_divergence_costs: zero for identical
// inputs, non-negative otherwise, the debiasing formula against three sinkhorn calls, gradients
// w.r.t. points, weights and cost matrices against central differences, errors.
#include <losskit/transport/sinkhorn_divergence.hpp>

#include <cmath>
#include <string>

#include "reference_vectors.hpp"
#include "test_support.hpp"

using losskit::GroundCost;
using losskit::RowMatrix;
using losskit::RowMatrixXd;
using losskit::SinkhornOptions;
using Eigen::VectorXd;

namespace {

RowMatrixXd points(int n, int d, std::uint64_t seed, double shift = 0.0) {
  RowMatrixXd x(n, d);
  for (int i = 0; i < n; ++i)
    for (int k = 0; k < d; ++k) x(i, k) = shift + losskit_test::uniform01(seed, std::uint64_t(i * d + k));
  return x;
}
VectorXd weights(int n, std::uint64_t seed) {
  VectorXd w(n);
  for (int i = 0; i < n; ++i) w[i] = 0.2 + losskit_test::uniform01(seed, std::uint64_t(i));
  return w / w.sum();
}
SinkhornOptions tight(double eps, GroundCost kind) {
  SinkhornOptions o;
  o.epsilon = eps;
  o.tol = 1e-14;
  o.check_every = 1;
  o.max_iter = 100000;
  o.ground_cost = kind;
  return o;
}

}  // namespace

TEMPLATE_TEST_CASE("sinkhorn_divergence: zero for identical inputs, >= 0 otherwise", "[sinkhorn_divergence]", float,
                   double) {
  using T = TestType;
  const auto kind = GENERATE(GroundCost::sqeuclidean, GroundCost::euclidean, GroundCost::l1);
  const double eps = GENERATE(1.0, 0.1, 0.03);
  CAPTURE(int(kind), eps);
  // (the alternating iteration needs 1e4+ iterations for overlapping clouds at eps 0.03 with the
  // euclidean and l1 costs: keep the test short)
  if (kind != GroundCost::sqeuclidean && eps < 0.1) return;
  SinkhornOptions o;
  o.epsilon = eps;
  o.ground_cost = kind;
  // float potentials carry ~1e-7 relative error, so the marginal error has a floor near 1e-6
  o.tol = std::is_same_v<T, float> ? 1e-4 : 1e-10;
  o.max_iter = 50000;
  const RowMatrix<T> x = points(40, 3, 1).cast<T>();
  const Eigen::Matrix<T, -1, 1> a = weights(40, 2).cast<T>();
  const auto same = losskit::sinkhorn_divergence(a, x, a, x, o);
  CHECK(same.value == 0.0);
  // (f~ - g~) / 2 of one problem: zero at the fixed point, O(tol) after a finite run
  if (std::is_same_v<T, double>) CHECK(same.grad_a.cwiseAbs().maxCoeff() <= 1e-7 * eps);
  for (std::uint64_t seed = 3; seed < 9; ++seed) {
    const int m = 17 + int(seed);
    const RowMatrix<T> y = points(m, 3, seed, 0.1 * double(seed - 3)).cast<T>();
    const Eigen::Matrix<T, -1, 1> b = weights(m, seed + 100).cast<T>();
    const auto r = losskit::sinkhorn_divergence(a, x, b, y, o);
    CAPTURE(seed, r.value, r.ot_ab, r.ot_aa, r.ot_bb);
    CHECK(r.converged);
    CHECK(r.value >= 0.0);
    CHECK(r.value == r.ot_ab - 0.5 * (r.ot_aa + r.ot_bb));
  }
}

TEST_CASE("sinkhorn_divergence: the three problems are sinkhorn with the KL regularizer", "[sinkhorn_divergence]") {
  const RowMatrixXd x = points(12, 2, 11), y = points(9, 2, 12, 0.3);
  const VectorXd a = weights(12, 13), b = weights(9, 14);
  SinkhornOptions o = tight(0.05, GroundCost::sqeuclidean);
  o.regularizer = losskit::EntropicRegularizer::entropy;  // ignored: the divergence uses KL
  const auto r = losskit::sinkhorn_divergence(a, x, b, y, o);
  SinkhornOptions ok = o;
  ok.regularizer = losskit::EntropicRegularizer::kl;
  const double ab = losskit::sinkhorn_points(a, x, b, y, ok).objective;
  const double aa = losskit::sinkhorn_points(a, x, a, x, ok).objective;
  const double bb = losskit::sinkhorn_points(b, y, b, y, ok).objective;
  CHECK(r.ot_ab == ab);
  // the debiasing problems use the averaged symmetric update: same fixed point
  CHECK_THAT(r.ot_aa, Catch::Matchers::WithinRel(aa, 1e-10));
  CHECK_THAT(r.ot_bb, Catch::Matchers::WithinRel(bb, 1e-10));
  // The same from the cost matrices.
  const auto rc = losskit::sinkhorn_divergence_costs(a, b, losskit::pairwise_cost(x, y), losskit::pairwise_cost(x, x),
                                                     losskit::pairwise_cost(y, y), o);
  CHECK(rc.value == r.value);
  CHECK(rc.grad_a == r.grad_a);
}

TEST_CASE("sinkhorn_divergence: gradients against central differences", "[sinkhorn_divergence][gradient]") {
  const auto kind = GENERATE(GroundCost::sqeuclidean, GroundCost::euclidean, GroundCost::l1);
  CAPTURE(int(kind));
  RowMatrixXd x = points(6, 2, 21), y = points(5, 2, 22, 0.2);
  VectorXd a = weights(6, 23), b = weights(5, 24);
  const SinkhornOptions o = tight(0.2, kind);
  RowMatrixXd gx(6, 2), gy(5, 2);
  const auto r = losskit::sinkhorn_divergence(a, x, b, y, gx, gy, o);
  REQUIRE(r.converged);
  auto close = [](double ana, double num) { return std::fabs(ana - num) <= 1e-6 * std::max(1e-2, std::fabs(num)); };
  auto fx = [&](const RowMatrixXd& p) { return losskit::sinkhorn_divergence(a, p, b, y, o).value; };
  auto fy = [&](const RowMatrixXd& p) { return losskit::sinkhorn_divergence(a, x, b, p, o).value; };
  for (Eigen::Index k = 0; k < x.size(); ++k) {
    const double num = lktest::central_difference(fx, x, k, 1e-6);
    CAPTURE(k, num, gx.data()[k]);
    CHECK(close(gx.data()[k], num));
  }
  for (Eigen::Index k = 0; k < y.size(); ++k) {
    const double num = lktest::central_difference(fy, y, k, 1e-6);
    CAPTURE(k, num, gy.data()[k]);
    CHECK(close(gy.data()[k], num));
  }
  // Weights: zero-sum directions e_i - e_{i+1} (a and b stay on the simplex).
  for (int side = 0; side < 2; ++side) {
    VectorXd& w = side == 0 ? a : b;
    const VectorXd& g = side == 0 ? r.grad_a : r.grad_b;
    for (Eigen::Index i = 0; i < w.size(); ++i) {
      const Eigen::Index k = (i + 1) % w.size();
      auto f = [&](double t) {
        VectorXd v = w;
        v[i] += t;
        v[k] -= t;
        return side == 0 ? losskit::sinkhorn_divergence(v, x, b, y, o).value
                         : losskit::sinkhorn_divergence(a, x, v, y, o).value;
      };
      const double num = (f(1e-6) - f(-1e-6)) / 2e-6;
      CAPTURE(side, i, num, g[i] - g[k]);
      CHECK(close(g[i] - g[k], num));
    }
  }
  // Cost matrices.
  RowMatrixXd Cab = losskit::pairwise_cost(x, y, kind), Caa = losskit::pairwise_cost(x, x, kind),
              Cbb = losskit::pairwise_cost(y, y, kind);
  RowMatrixXd gab(6, 5), gaa(6, 6), gbb(5, 5);
  losskit::sinkhorn_divergence_costs(a, b, Cab, Caa, Cbb, gab, gaa, gbb, o);
  auto fab = [&](const RowMatrixXd& c) { return losskit::sinkhorn_divergence_costs(a, b, c, Caa, Cbb, o).value; };
  auto faa = [&](const RowMatrixXd& c) { return losskit::sinkhorn_divergence_costs(a, b, Cab, c, Cbb, o).value; };
  for (Eigen::Index k = 0; k < Cab.size(); ++k) CHECK(close(gab.data()[k], lktest::central_difference(fab, Cab, k, 1e-6)));
  for (Eigen::Index k = 0; k < Caa.size(); ++k) CHECK(close(gaa.data()[k], lktest::central_difference(faa, Caa, k, 1e-6)));
  CHECK(gbb.maxCoeff() <= 0.0);
}

TEST_CASE("sinkhorn_divergence: errors", "[sinkhorn_divergence][errors]") {
  const RowMatrixXd x = points(4, 2, 31), y = points(3, 2, 32);
  const VectorXd a = weights(4, 33), b = weights(3, 34);
  auto has = [](const std::string& e, const char* part) { return e.find(part) != std::string::npos; };
  SinkhornOptions o;
  o.reg_m_a = 1.0;
  CHECK(has(lktest::invalid_argument_of([&] { losskit::sinkhorn_divergence(a, x, b, y, o); }), "balanced only"));
  CHECK(has(lktest::invalid_argument_of([&] { losskit::sinkhorn_divergence(VectorXd(2 * a), x, b, y); }),
            "same total mass"));
  CHECK(has(lktest::invalid_argument_of([&] { losskit::sinkhorn_divergence(b, x, b, y); }), "'a' has 3 entries, expected 4"));
  const RowMatrixXd C = losskit::pairwise_cost(x, y);
  CHECK(has(lktest::invalid_argument_of([&] {
              losskit::sinkhorn_divergence_costs(a, b, C, losskit::pairwise_cost(y, y), losskit::pairwise_cost(y, y));
            }),
            "'C_aa' has shape 3x3, expected 4x4"));
  SinkhornOptions oe;
  oe.epsilon = 0;
  CHECK(has(lktest::invalid_argument_of([&] { losskit::sinkhorn_divergence(a, x, b, y, oe); }), "'epsilon'"));
}
