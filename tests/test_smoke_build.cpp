// Placeholder (build verification only; to be deleted).
#include <losskit/losskit.hpp>

#include "catch_compat.hpp"

TEMPLATE_TEST_CASE("smoke: kl_div on random 3x17", "[smoke]", float, double) {
  using M = Eigen::Matrix<TestType, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  M s = M::Random(3, 17), t = M::Random(3, 17), g(3, 17);
  auto r = losskit::kl_div(s, t, g);
  CHECK(r.value >= 0.0);
}
