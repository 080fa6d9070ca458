#include <losskit/losskit.hpp>
#include <losskit/core/scalar_math.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "catch_compat.hpp"

namespace {
using ld = long double;
const double inf = std::numeric_limits<double>::infinity();
const double qnan = std::numeric_limits<double>::quiet_NaN();

// long-double references
ld ref_softplus(ld x) { return x > 0 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x)); }
ld ref_sigmoid(ld x) { return 1.0L / (1.0L + std::exp(-x)); }

// log(1 - e^x) in long double, by the stable branch for each side of -ln 2 (a naive long-double
// log(-expm1(x)) loses all digits for x << 0, where 1 - e^x rounds).
ld ref_log1mexp(ld x) { return x < -0.693147180559945309417L ? std::log1p(-std::exp(x)) : std::log(-std::expm1(x)); }

// Relative to the double-rounded reference; results below 1e-300 (subnormal range) are only
// required to be that small.
void check_rel(double got, ld want, double tol) {
  const double w = double(want);
  CAPTURE(got, w);
  CHECK(std::fabs(got - w) <= tol * std::fabs(w) + 1e-300);
}
}  // namespace

TEST_CASE("scalar_math: log_sigmoid, sigmoid_grad, log1mexp, logaddexp against long double", "[scalar_math]") {
  using namespace losskit::detail;
  const std::vector<double> xs{-1e4, -745.0, -700.0, -40.0, -20.0, -1.0, -0.6931471805599453, -0.5, -1e-3,
                               -1e-12, -1e-300, 0.0, 1e-300, 1e-12, 0.3, 1.0, 20.0, 40.0, 700.0, 1e4};
  for (double x : xs) {
    CAPTURE(x);
    check_rel(log_sigmoid(x), -ref_softplus(-ld(x)), 4e-16);
    const ld s = ref_sigmoid(x);
    check_rel(sigmoid_grad(x), s * ref_sigmoid(-ld(x)), 4e-15);
    CHECK(std::isfinite(log_sigmoid(x)));
    CHECK(sigmoid_grad(x) >= 0.0);
    if (x < 0) check_rel(log1mexp(x), ref_log1mexp(x), 4e-16);
  }
  // log1mexp over (-4, 0): each branch keeps full relative accuracy on its side of -ln 2
  for (int k = 1; k < 400; ++k) {
    const double x = -4.0 * std::pow(double(k) / 400.0, 2.0);
    CAPTURE(x);
    check_rel(log1mexp(x), ref_log1mexp(x), 4e-16);
  }
  // log1mexp near the branch point and at 0 / above
  check_rel(log1mexp(-0.6931471805599453), ref_log1mexp(-0.6931471805599453L), 4e-16);
  check_rel(log1mexp(-0.6931471805599454), ref_log1mexp(-0.6931471805599454L), 4e-16);
  CHECK(log1mexp(0.0) == -inf);
  CHECK(std::isnan(log1mexp(0.5)));
  CHECK(std::isnan(log1mexp(qnan)));
  CHECK(log1mexp(-inf) == 0.0);
  // naive log1p(-exp(x)) at x = -1e-12 keeps only ~4 digits; log1mexp keeps all
  check_rel(log1mexp(-1e-12), ref_log1mexp(-1e-12L), 4e-16);
  // logaddexp
  check_rel(logaddexp(1000.0, 1000.0), 1000.0L + std::log(2.0L), 4e-16);
  check_rel(logaddexp(-1000.0, 3.0), 3.0L + std::log1p(std::exp(-1003.0L)), 4e-16);
  check_rel(logaddexp(2.0, 5.0), std::log(std::exp(2.0L) + std::exp(5.0L)), 4e-16);
  CHECK(logaddexp(-inf, -inf) == -inf);
  CHECK(logaddexp(-inf, 2.0) == 2.0);
  CHECK(logaddexp(inf, 2.0) == inf);
  CHECK(logaddexp(inf, inf) == inf);
  CHECK(std::isnan(logaddexp(qnan, 1.0)));
  CHECK(std::isnan(logaddexp(1.0, qnan)));
  // NaN propagates through all of them
  CHECK(std::isnan(log_sigmoid(qnan)));
  CHECK(std::isnan(sigmoid_grad(qnan)));
  // extremes: no overflow, exact limits
  CHECK(log_sigmoid(1e4) == 0.0);
  CHECK(log_sigmoid(-1e4) == -1e4);
  CHECK(sigmoid_grad(1e4) == 0.0);
  CHECK(log_sigmoid(-inf) == -inf);
}
