#include "test_support.hpp"

TEMPLATE_TEST_CASE("skew_reverse_kl_div: value, gradient, invariances", "[skew_reverse_kl_div]", float, double) {
  const double alpha = GENERATE(0.1, 0.5, 0.9);
  CAPTURE(alpha);
  losskit::DivergenceOptions o;
  o.skew_alpha = alpha;
  lktest::divergence_common<TestType>(LKTEST_DIV(skew_reverse_kl_div, TestType),
                                      LKTEST_DIV(skew_reverse_kl_div, double), LKTEST_DIV(skew_reverse_kl_div, float),
                                      lktest::ref_skew_rkl(alpha), o);
}

TEMPLATE_TEST_CASE("skew_reverse_kl_div: finite where reverse KL is infinite", "[skew_reverse_kl_div]", float, double) {
  const auto s = lktest::random_logits<TestType>(2, 50, 7);
  auto t = lktest::random_logits<TestType>(2, 50, 8);
  t(1, 9) = -std::numeric_limits<TestType>::infinity();
  lktest::RowMatrix<TestType> g(2, 50);
  CHECK(std::isfinite(losskit::skew_reverse_kl_div(s, t, g).value));
  CHECK(g.allFinite());
  CHECK(std::isinf(losskit::reverse_kl_div(s, t).value));
}
