#include "test_support.hpp"

using lktest::RowMatrix;

TEMPLATE_TEST_CASE("kl_div: value, gradient, invariances", "[kl_div]", float, double) {
  losskit::DivergenceOptions o;
  lktest::divergence_common<TestType>(LKTEST_DIV(kl_div, TestType), LKTEST_DIV(kl_div, double),
                                      LKTEST_DIV(kl_div, float), lktest::ref_kl, o);
}

TEMPLATE_TEST_CASE("kl_div: non-negative, and T^2 scaling is opt-in", "[kl_div]", float, double) {
  const auto s = lktest::random_logits<TestType>(8, 257, 1), t = lktest::random_logits<TestType>(8, 257, 2);
  losskit::DivergenceOptions o;
  o.reduction = losskit::Reduction::none;
  const auto r = losskit::kl_div(s, t, o);
  CHECK(r.per_row.minCoeff() >= 0.0);
  o.reduction = losskit::Reduction::mean;
  o.temperature = 2.0;
  RowMatrix<TestType> g1(8, 257), g2(8, 257);
  const double v1 = losskit::kl_div(s, t, g1, o).value;
  o.scale_by_t_squared = true;
  const double v2 = losskit::kl_div(s, t, g2, o).value;
  CHECK_THAT(v2, Catch::Matchers::WithinRel(4.0 * v1, 1e-6));
  CHECK(((g2 - TestType(4) * g1).cwiseAbs().maxCoeff()) <= TestType(1e-7));
}

TEMPLATE_TEST_CASE("kl_div: -inf logits", "[kl_div][inf]", float, double) {
  const TestType ninf = -std::numeric_limits<TestType>::infinity();
  auto s = lktest::random_logits<TestType>(3, 40, 3), t = lktest::random_logits<TestType>(3, 40, 4);
  SECTION("masked in both inputs: finite, equal to the divergence over the rest") {
    for (int c : {0, 7, 16, 17, 39}) s(1, c) = t(1, c) = ninf;
    s(2, 5) = t(2, 5) = ninf;
    RowMatrix<TestType> g(3, 40);
    const auto r = losskit::kl_div(s, t, g, {});
    CHECK(std::isfinite(r.value));
    CHECK(g.allFinite());
    CHECK(g(1, 7) == TestType(0));
    lktest::check_value<TestType>(LKTEST_DIV(kl_div, TestType), s, t, {}, lktest::ref_kl);
    lktest::check_gradient_fd(LKTEST_DIV(kl_div, double), s.template cast<double>(), t.template cast<double>(), {});
  }
  SECTION("masked in the teacher only: finite; student mass there is pushed down") {
    t(0, 3) = ninf;
    RowMatrix<TestType> g(3, 40);
    const auto r = losskit::kl_div(s, t, g, {});
    CHECK(std::isfinite(r.value));
    CHECK(g(0, 3) > TestType(0));
  }
  SECTION("masked in the student only where the teacher has mass: +inf") {
    s(0, 3) = ninf;
    CHECK(std::isinf(losskit::kl_div(s, t, {}).value));
  }
  SECTION("NaN propagates to the loss") {
    s(1, 2) = std::numeric_limits<TestType>::quiet_NaN();
    CHECK(std::isnan(losskit::kl_div(s, t, {}).value));
  }
}

TEMPLATE_TEST_CASE("kl_div: log-probability inputs (torch.nn.functional.kl_div semantics)", "[kl_div]", float, double) {
  const auto s = lktest::random_logits<TestType>(4, 33, 8), t = lktest::random_logits<TestType>(4, 33, 9);
  RowMatrix<TestType> ls(4, 33), lt(4, 33);
  for (Eigen::Index r = 0; r < 4; ++r) {
    const auto x = lktest::log_softmax(s.row(r), 1), y = lktest::log_softmax(t.row(r), 1);
    for (Eigen::Index c = 0; c < 33; ++c) {
      ls(r, c) = TestType(x[std::size_t(c)]);
      lt(r, c) = TestType(y[std::size_t(c)]);
    }
  }
  losskit::DivergenceOptions o;
  o.student_input = o.teacher_input = losskit::Input::log_probs;
  RowMatrix<TestType> g(4, 33);
  const double v = losskit::kl_div(ls, lt, g, o).value;
  CHECK_THAT(v, Catch::Matchers::WithinRel(losskit::kl_div(s, t, {}).value, 1e-5));
  // d/d(log q) = -p / rows
  const RowMatrix<TestType> want = -lt.array().exp() / TestType(4);
  CHECK((g - want).cwiseAbs().maxCoeff() <= TestType(1e-6));
  if constexpr (std::is_same_v<TestType, double>) lktest::check_gradient_fd(LKTEST_DIV(kl_div, double), ls, lt, o);
}
