#include "test_support.hpp"

TEMPLATE_TEST_CASE("reverse_kl_div: value, gradient, invariances", "[reverse_kl_div]", float, double) {
  lktest::divergence_common<TestType>(LKTEST_DIV(reverse_kl_div, TestType), LKTEST_DIV(reverse_kl_div, double),
                                      LKTEST_DIV(reverse_kl_div, float), lktest::ref_rkl, {});
}

TEMPLATE_TEST_CASE("reverse_kl_div: is kl_div with the roles swapped", "[reverse_kl_div]", float, double) {
  const auto s = lktest::random_logits<TestType>(5, 129, 21), t = lktest::random_logits<TestType>(5, 129, 22);
  CHECK_THAT(losskit::reverse_kl_div(s, t).value, Catch::Matchers::WithinRel(losskit::kl_div(t, s).value, 1e-5));
}

TEMPLATE_TEST_CASE("reverse_kl_div: -inf logits", "[reverse_kl_div][inf]", float, double) {
  const TestType ninf = -std::numeric_limits<TestType>::infinity();
  auto s = lktest::random_logits<TestType>(3, 40, 3), t = lktest::random_logits<TestType>(3, 40, 4);
  for (int c : {0, 17, 39}) s(1, c) = t(1, c) = ninf;
  s(2, 9) = ninf;  // student masked where the teacher is not: fine for the reverse direction
  lktest::RowMatrix<TestType> g(3, 40);
  const auto r = losskit::reverse_kl_div(s, t, g, {});
  CHECK(std::isfinite(r.value));
  CHECK(g.allFinite());
  lktest::check_value<TestType>(LKTEST_DIV(reverse_kl_div, TestType), s, t, {}, lktest::ref_rkl);
  t(0, 4) = ninf;  // teacher masked where the student has mass: +inf
  CHECK(std::isinf(losskit::reverse_kl_div(s, t).value));
}

TEMPLATE_TEST_CASE("reverse_kl_div: log-probability student", "[reverse_kl_div]", double) {
  auto s = lktest::random_logits<TestType>(3, 25, 5);
  const auto t = lktest::random_logits<TestType>(3, 25, 6);
  for (Eigen::Index r = 0; r < 3; ++r) {
    const auto x = lktest::log_softmax(s.row(r), 1);
    for (Eigen::Index c = 0; c < 25; ++c) s(r, c) = TestType(x[std::size_t(c)]);
  }
  losskit::DivergenceOptions o;
  o.student_input = losskit::Input::log_probs;
  lktest::check_value<TestType>(LKTEST_DIV(reverse_kl_div, TestType), s, t, o, lktest::ref_rkl);
  lktest::check_gradient_fd(LKTEST_DIV(reverse_kl_div, double), s, t, o);
}
