#include "test_support.hpp"

TEMPLATE_TEST_CASE("cauchy_schwarz_div: value, gradient, invariances", "[cauchy_schwarz_div]", float, double) {
  lktest::divergence_common<TestType>(LKTEST_DIV(cauchy_schwarz_div, TestType), LKTEST_DIV(cauchy_schwarz_div, double),
                                      LKTEST_DIV(cauchy_schwarz_div, float), lktest::ref_cs, {});
}

TEMPLATE_TEST_CASE("cauchy_schwarz_div: symmetric, gradient sums to zero, no underflow", "[cauchy_schwarz_div]", float,
                   double) {
  const auto s = lktest::random_logits<TestType>(4, 211, 1), t = lktest::random_logits<TestType>(4, 211, 2);
  lktest::RowMatrix<TestType> g(4, 211);
  const double v = losskit::cauchy_schwarz_div(s, t, g).value;
  CHECK_THAT(v, Catch::Matchers::WithinRel(losskit::cauchy_schwarz_div(t, s).value, 1e-5));
  CHECK(std::fabs(double(g.sum())) <= 1e-6);
  // Nearly disjoint, very peaked rows: <p, q> ~ 2 e^-300 underflows a naive product, not the
  // LSE form: D = 600 - 2 log 2.
  lktest::RowMatrix<TestType> u = lktest::RowMatrix<TestType>::Zero(1, 2), w = u;
  u(0, 0) = 300;
  w(0, 1) = 300;
  const double d = losskit::cauchy_schwarz_div(u, w).value;
  CHECK(std::isfinite(d));
  CHECK_THAT(d, Catch::Matchers::WithinRel(600.0 - 2.0 * std::log(2.0), 1e-5));
}
