#include <losskit/losskit.hpp>

#include <cstdint>
#include <vector>

#include "preference_test_support.hpp"

using preftest::VectorXd;

TEST_CASE("preference_common: Values views every storage type", "[preference]") {
  const std::vector<float> f{1.5f, 2.0f};
  const std::vector<double> d{3.25, -1.0};
  const std::vector<std::int32_t> i32{7, 0};
  const std::vector<std::int64_t> i64{9, 4};
  const Eigen::VectorXi ei = Eigen::VectorXi::LinSpaced(3, 1, 3);
  const Eigen::RowVectorXd er = Eigen::RowVectorXd::Constant(2, 0.5);
  losskit::Values vf = f, vd = d, v32 = i32, v64 = i64, vei = ei, ver = er, empty;
  CHECK(vf[0] == 1.5);
  CHECK(vd[0] == 3.25);
  CHECK(v32[0] == 7.0);
  CHECK(v64[1] == 4.0);
  CHECK(vei.size() == 3);
  CHECK(vei[2] == 3.0);
  CHECK(ver[1] == 0.5);
  CHECK(empty.empty());
}

TEST_CASE("preference_common: vector conversion accepts rows, columns, float, half and expressions", "[preference]") {
  Eigen::Matrix<Eigen::half, Eigen::Dynamic, 1> h(2);
  h << Eigen::half(0.5f), Eigen::half(-2.0f);
  const VectorXd a = losskit::detail::to_vector("f", "x", h);
  CHECK(a[0] == 0.5);
  CHECK(a[1] == -2.0);
  const Eigen::RowVector3f r(1, 2, 3);
  CHECK(losskit::detail::to_vector("f", "x", r)[2] == 3.0);
  CHECK(losskit::detail::to_vector("f", "x", 2.0 * VectorXd::Ones(4)).sum() == 8.0);
  preftest::check_throws([] { losskit::detail::to_vector("f", "x", Eigen::MatrixXd::Zero(2, 3)); },
                         {"losskit::f: 'x' must be a vector, got shape 2x3"});
}

TEST_CASE("preference_common: reductions divide by pairs, 1, or the normalizer; grad_scale scales", "[preference]") {
  // Through kto (per-example losses), with a fixed z0.
  VectorXd pc(3), pr(1);
  pc << -1, -2, -3;
  pr << -4;
  const VectorXd rc = VectorXd::Constant(3, -2.0), rr = VectorXd::Constant(1, -2.0);
  losskit::KtoOptions o;
  o.z0 = 0.0;
  const auto mean = losskit::kto(pc, pr, rc, rr, o);
  CHECK(mean.denominator == 4.0);
  CHECK(mean.count == 4);
  CHECK(mean.per_row.size() == 4);
  o.reduction = losskit::Reduction::sum;
  o.grad_scale = 3.0;
  const auto sum = losskit::kto(pc, pr, rc, rr, o);
  CHECK_THAT(sum.value, Catch::Matchers::WithinRel(4 * mean.value, 1e-15));
  CHECK((sum.d_policy_chosen - 12 * mean.d_policy_chosen).cwiseAbs().maxCoeff() <= 1e-16);
  o.normalizer = 8.0;
  const auto norm = losskit::kto(pc, pr, rc, rr, o);
  CHECK(norm.denominator == 8.0);
  CHECK_THAT(norm.value, Catch::Matchers::WithinRel(mean.value / 2, 1e-15));
  CHECK((norm.d_policy_rejected - 1.5 * mean.d_policy_rejected).cwiseAbs().maxCoeff() <= 1e-16);
  o.grad_scale = std::nan("");
  preftest::check_throws([&] { losskit::kto(pc, pr, rc, rr, o); }, {"'grad_scale' must be finite"});
}
