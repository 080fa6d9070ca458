#include "test_support.hpp"

TEMPLATE_TEST_CASE("jsd: value, gradient, invariances", "[jsd]", float, double) {
  const double beta = GENERATE(0.0, 0.1, 0.5, 0.9, 1.0);
  CAPTURE(beta);
  losskit::DivergenceOptions o;
  o.beta = beta;
  lktest::divergence_common<TestType>(LKTEST_DIV(jsd, TestType), LKTEST_DIV(jsd, double), LKTEST_DIV(jsd, float),
                                      lktest::ref_jsd(beta), o);
}

TEMPLATE_TEST_CASE("jsd: beta = 0 and 1 are forward and reverse KL (Liger, TRL)", "[jsd]", float, double) {
  const auto s = lktest::random_logits<TestType>(4, 100, 1), t = lktest::random_logits<TestType>(4, 100, 2);
  losskit::DivergenceOptions o;
  o.beta = 0.0;
  CHECK(losskit::jsd(s, t, o).value == losskit::kl_div(s, t).value);
  o.beta = 1.0;
  CHECK(losskit::jsd(s, t, o).value == losskit::reverse_kl_div(s, t).value);
}

TEMPLATE_TEST_CASE("jsd: symmetric at beta = 0.5 and bounded by log 2", "[jsd]", float, double) {
  const auto s = lktest::random_logits<TestType>(6, 301, 3, 8.0), t = lktest::random_logits<TestType>(6, 301, 4, 8.0);
  losskit::DivergenceOptions o;
  o.reduction = losskit::Reduction::none;
  const auto a = losskit::jsd(s, t, o), b = losskit::jsd(t, s, o);
  CHECK((a.per_row - b.per_row).cwiseAbs().maxCoeff() <= 1e-6);
  CHECK(a.per_row.minCoeff() >= 0.0);
  CHECK(a.per_row.maxCoeff() <= std::log(2.0) + 1e-6);
  // disjoint supports reach log 2
  const TestType ninf = -std::numeric_limits<TestType>::infinity();
  lktest::RowMatrix<TestType> u = lktest::RowMatrix<TestType>::Constant(1, 4, ninf), v = u;
  u(0, 0) = u(0, 1) = 0;
  v(0, 2) = v(0, 3) = 0;
  lktest::RowMatrix<TestType> g(1, 4);
  o.reduction = losskit::Reduction::mean;
  CHECK_THAT(losskit::jsd(u, v, g, o).value, Catch::Matchers::WithinRel(std::log(2.0), 1e-6));
  CHECK(g.allFinite());
}
