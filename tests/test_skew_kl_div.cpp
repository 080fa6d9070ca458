#include "test_support.hpp"

TEMPLATE_TEST_CASE("skew_kl_div: value, gradient, invariances", "[skew_kl_div]", float, double) {
  const double alpha = GENERATE(0.1, 0.5, 0.9);
  CAPTURE(alpha);
  losskit::DivergenceOptions o;
  o.skew_alpha = alpha;
  lktest::divergence_common<TestType>(LKTEST_DIV(skew_kl_div, TestType), LKTEST_DIV(skew_kl_div, double),
                                      LKTEST_DIV(skew_kl_div, float), lktest::ref_skew_kl(alpha), o);
}

TEMPLATE_TEST_CASE("skew_kl_div: finite where plain KL is infinite, bounded by -log alpha", "[skew_kl_div]", float, double) {
  auto s = lktest::random_logits<TestType>(2, 50, 7);
  const auto t = lktest::random_logits<TestType>(2, 50, 8);
  s(0, 3) = -std::numeric_limits<TestType>::infinity();
  losskit::DivergenceOptions o;
  o.skew_alpha = 0.1;
  o.reduction = losskit::Reduction::none;
  lktest::RowMatrix<TestType> g(2, 50);
  const auto r = losskit::skew_kl_div(s, t, g, o);
  CHECK(std::isfinite(r.value));
  CHECK(g.allFinite());
  CHECK(r.per_row.maxCoeff() <= -std::log(0.1) + 1e-6);
  CHECK(std::isinf(losskit::kl_div(s, t).value));
}
