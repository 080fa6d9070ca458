#include "test_support.hpp"

TEMPLATE_TEST_CASE("tvd: value, gradient, invariances", "[tvd]", float, double) {
  lktest::divergence_common<TestType>(LKTEST_DIV(tvd, TestType), LKTEST_DIV(tvd, double), LKTEST_DIV(tvd, float),
                                      lktest::ref_tvd, {});
}

TEMPLATE_TEST_CASE("tvd: in [0, 1], 1 for disjoint supports, symmetric", "[tvd]", float, double) {
  const auto s = lktest::random_logits<TestType>(6, 77, 1, 10.0), t = lktest::random_logits<TestType>(6, 77, 2, 10.0);
  losskit::DivergenceOptions o;
  o.reduction = losskit::Reduction::none;
  const auto a = losskit::tvd(s, t, o), b = losskit::tvd(t, s, o);
  CHECK(a.per_row.minCoeff() >= 0.0);
  CHECK(a.per_row.maxCoeff() <= 1.0);
  CHECK((a.per_row - b.per_row).cwiseAbs().maxCoeff() <= 1e-6);
  const TestType ninf = -std::numeric_limits<TestType>::infinity();
  lktest::RowMatrix<TestType> u = lktest::RowMatrix<TestType>::Constant(1, 3, ninf), v = u;
  u(0, 0) = 0;
  v(0, 2) = 0;
  CHECK_THAT(losskit::tvd(u, v).value, Catch::Matchers::WithinAbs(1.0, 1e-7));
}
