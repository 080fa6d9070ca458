#include <losskit/losskit.hpp>

#include <cmath>
#include <vector>

#include "preference_test_support.hpp"

using losskit::SimpoOptions;
using preftest::VectorXd;

TEST_CASE("simpo: PyTorch float64 reference (Liger / TRL formulas)", "[simpo][reference]") {
  const auto recs = preftest::records_of("simpo");
  REQUIRE(recs.size() >= 3);
  for (const auto& r : recs) {
    INFO(r.describe());
    const auto x = preftest::inputs_of(r);
    SimpoOptions o;
    o.beta = r.opt_num("beta", 0.1);
    o.gamma = r.opt_num("gamma", 0.5);
    o.label_smoothing = r.opt_num("label_smoothing", 0.0);
    o.cpo_alpha = r.opt_num("cpo_alpha", 1.0);
    const auto res = losskit::simpo(x.pc, x.pr, x.lc, x.lr, o);
    preftest::check_paired_outputs(res, r, 1e-12, 1e-12);
  }
}

TEST_CASE("simpo: hand-checked value and gradient; equals cpo(simpo)", "[simpo]") {
  VectorXd pc(1), pr(1);
  pc << -4.0;   // average -1 over 4 tokens
  pr << -15.0;  // average -3 over 5 tokens
  std::vector<int> lc{4}, lr{5};
  SimpoOptions o;
  o.cpo_alpha = 0.0;  // the paper's SimPO
  const auto r = losskit::simpo(pc, pr, lc, lr, o);
  const double u = 0.1 * (-1.0 - -3.0) - 0.5;  // -0.3
  CHECK_THAT(r.value, Catch::Matchers::WithinRel(std::log1p(std::exp(-u)), 1e-14));
  const double dz = -0.1 / (1 + std::exp(u));
  CHECK_THAT(r.d_policy_chosen[0], Catch::Matchers::WithinRel(dz / 4, 1e-14));
  CHECK_THAT(r.d_policy_rejected[0], Catch::Matchers::WithinRel(-dz / 5, 1e-14));
  CHECK_THAT(r.chosen_rewards[0], Catch::Matchers::WithinRel(-0.1, 1e-15));
  CHECK(r.accuracy == 1.0);
  // Defaults keep the NLL term (Liger alpha = 1, TRL cpo_alpha = 1): + 4 / 4.
  const auto d = losskit::simpo(pc, pr, lc, lr);
  CHECK_THAT(d.value, Catch::Matchers::WithinRel(std::log1p(std::exp(-u)) + 1.0, 1e-14));
  losskit::CpoOptions c;
  c.loss_type = losskit::CpoLoss::simpo;
  const auto via_cpo = losskit::cpo(pc, pr, lc, lr, c);
  CHECK(via_cpo.value == d.value);
  CHECK(via_cpo.d_policy_chosen == d.d_policy_chosen);
}

TEST_CASE("simpo: central finite differences", "[simpo][fd]") {
  const VectorXd lc = preftest::lengths(3, 7, 30), lr = preftest::lengths(4, 7, 30);
  const VectorXd pc = preftest::seq(5, lc, -3, -0.1), pr = preftest::seq(6, lr, -3, -0.1);
  for (double ls : {0.0, 0.25}) {
    for (double alpha : {0.0, 1.0}) {
      SimpoOptions o;
      o.label_smoothing = ls;
      o.cpo_alpha = alpha;
      o.beta = 2.5;
      o.gamma = 1.2;
      const auto r = losskit::simpo(pc, pr, lc, lr, o);
      preftest::check_fd(
          [&](const std::vector<VectorXd>& x) { return losskit::simpo(x[0], x[1], lc, lr, o).value; }, {pc, pr},
          {r.d_policy_chosen, r.d_policy_rejected});
    }
  }
}

TEST_CASE("simpo: extreme margins and errors", "[simpo][errors]") {
  VectorXd pc(2), pr(2);
  pc << -1e-6, -5e5;
  pr << -5e5, -1e-6;
  std::vector<int> one{1, 1};
  SimpoOptions o;
  o.beta = 1.0;
  o.label_smoothing = 0.3;
  const auto r = losskit::simpo(pc, pr, one, one, o);
  CHECK(std::isfinite(r.value));
  CHECK(r.d_policy_chosen.allFinite());
  using preftest::check_throws;
  check_throws([&] { losskit::simpo(pc, pr, losskit::Values{}, one); }, {"losskit::simpo", "'chosen_lengths' must be given"});
  std::vector<int> zero{1, 0};
  check_throws([&] { losskit::simpo(pc, pr, zero, one); }, {"'chosen_lengths' is 0 at index 1", "divides by the completion length"});
  o.gamma = std::nan("");
  check_throws([&] { losskit::simpo(pc, pr, one, one, o); }, {"'gamma' must be finite"});
}
