#include <losskit/losskit.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "preference_test_support.hpp"

using losskit::OrpoOptions;
using preftest::VectorXd;

TEST_CASE("orpo: PyTorch float64 reference (TRL odds_ratio_loss with log1mexp)", "[orpo][reference]") {
  const auto recs = preftest::records_of("orpo");
  REQUIRE(recs.size() >= 3);
  for (const auto& r : recs) {
    INFO(r.describe());
    const auto x = preftest::inputs_of(r);
    OrpoOptions o;
    o.beta = r.opt_num("beta", 0.1);
    o.compute_nll_loss = r.opt_num("compute_nll_loss", 1) != 0;
    const auto res = losskit::orpo(x.pc, x.pr, x.lc, x.lr, o);
    preftest::check_paired_outputs(res, r, 1e-12, 1e-11);
    preftest::check_close(res.log_odds_ratio, r.scalar("log_odds_ratio"), 1e-12, "log_odds_ratio");
    preftest::check_close(res.log_odds_chosen, r.scalar("log_odds_chosen"), 1e-12, "log_odds_chosen");
  }
}

TEST_CASE("orpo: hand-checked value", "[orpo]") {
  VectorXd pc(1), pr(1);
  pc << -2.0 * std::log(2.0);  // average log(1/2) over 2 tokens: odds 1
  pr << -3.0 * std::log(4.0);  // average log(1/4): odds 1/3
  std::vector<int> lc{2}, lr{3};
  OrpoOptions o;
  o.beta = 0.2;
  const auto r = losskit::orpo(pc, pr, lc, lr, o);
  const double lo = std::log(3.0);
  const double nll = std::log(2.0);
  CHECK_THAT(r.value, Catch::Matchers::WithinRel(nll + 0.2 * std::log1p(std::exp(-lo)), 1e-14));
  CHECK_THAT(r.log_odds_chosen, Catch::Matchers::WithinRel(lo, 1e-14));
  // dL/dpi_w = (-0.2 s(-lo) / (1 - 1/2)) / 2 - 1 / 2
  const double s = 1.0 / (1.0 + std::exp(lo));
  CHECK_THAT(r.d_policy_chosen[0], Catch::Matchers::WithinRel(-0.2 * s / 0.5 / 2 - 0.5, 1e-14));
  CHECK_THAT(r.d_policy_rejected[0], Catch::Matchers::WithinRel(0.2 * s / 0.75 / 3, 1e-14));
}

TEST_CASE("orpo: central finite differences on both sides of -ln 2", "[orpo][fd]") {
  const VectorXd lc = preftest::lengths(8, 6, 20), lr = preftest::lengths(9, 6, 20);
  for (auto range : {std::pair<double, double>{-3.0, -0.8}, {-0.6, -1e-3}, {-1.5, -1e-4}}) {
    const VectorXd pc = preftest::seq(10, lc, range.first, range.second);
    const VectorXd pr = preftest::seq(11, lr, range.first, range.second);
    for (bool nll : {true, false}) {
      OrpoOptions o;
      o.compute_nll_loss = nll;
      o.beta = 0.5;
      const auto r = losskit::orpo(pc, pr, lc, lr, o);
      CAPTURE(range.first, range.second, nll);
      preftest::check_fd([&](const std::vector<VectorXd>& x) { return losskit::orpo(x[0], x[1], lc, lr, o).value; },
                         {pc, pr}, {r.d_policy_chosen, r.d_policy_rejected}, 1e-6, 1e-8);
    }
  }
}

TEST_CASE("orpo: log-probs at and near 0", "[orpo][extreme]") {
  std::vector<int> one{1};
  VectorXd pw(1), pl(1);
  pl << -1.0;
  SECTION("chosen probability 1: the odds term vanishes, the gradient stays finite") {
    pw << 0.0;
    OrpoOptions o;
    o.compute_nll_loss = false;
    const auto r = losskit::orpo(pw, pl, one, one, o);
    CHECK(r.value == 0.0);
    CHECK(std::isfinite(r.d_policy_chosen[0]));
    // limit: -lambda odds(y_l) = -0.1 e^-1 / (1 - e^-1)
    CHECK_THAT(r.d_policy_chosen[0], Catch::Matchers::WithinRel(-0.1 * std::exp(-1.0) / -std::expm1(-1.0), 1e-14));
    CHECK(r.d_policy_rejected[0] == 0.0);
  }
  SECTION("tiny negative averages keep full precision (log1mexp)") {
    pw << -1e-12;
    OrpoOptions o;
    o.compute_nll_loss = false;
    const auto r = losskit::orpo(pw, pl, one, one, o);
    // log odds(y_w) = -1e-12 - log(1 - e^-1e-12) ~ -log(1e-12) = 27.63; precise to the last digits
    const double lo = (-1e-12 - std::log(-std::expm1(-1e-12))) - (-1.0 - std::log1p(-std::exp(-1.0)));
    CHECK_THAT(r.log_odds_chosen, Catch::Matchers::WithinRel(lo, 1e-15));
    CHECK(std::isfinite(r.d_policy_chosen[0]));
  }
  SECTION("rejected probability 1: +inf") {
    pw << -1.0;
    pl << 0.0;
    const auto r = losskit::orpo(pw, pl, one, one);
    CHECK(std::isinf(r.value));
  }
  SECTION("very negative averages") {
    pw << -700.0;
    pl << -1e4;
    const auto r = losskit::orpo(pw, pl, one, one);
    CHECK(std::isfinite(r.value));
    CHECK(r.d_policy_chosen.allFinite());
    CHECK(r.d_policy_rejected.allFinite());
  }
}

TEST_CASE("orpo: errors", "[orpo][errors]") {
  VectorXd pw(2), pl(2);
  pw << -1, 0.5;
  pl << -1, -2;
  std::vector<int> one{1, 1};
  using preftest::check_throws;
  check_throws([&] { losskit::orpo(pw, pl, one, one); }, {"losskit::orpo", "'policy_chosen' / 'chosen_lengths' is 0.5 > 0 at index 1"});
  pw[1] = -1;
  check_throws([&] { losskit::orpo(pw, pl, one, losskit::Values{}); }, {"'rejected_lengths' must be given"});
  std::vector<int> bad{1, 0};
  check_throws([&] { losskit::orpo(pw, pl, bad, one); }, {"'chosen_lengths' is 0 at index 1"});
  check_throws([&] { losskit::orpo(pw, pl.head(1), one, one); }, {"'policy_rejected' has 1 entries, expected 2"});
  OrpoOptions o;
  o.beta = -0.1;
  check_throws([&] { losskit::orpo(pw, pl, one, one, o); }, {"'beta' must be positive"});
}
