#include <losskit/losskit.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "preference_test_support.hpp"

using losskit::CpoLoss;
using losskit::CpoOptions;
using preftest::VectorXd;

namespace {

CpoLoss cpo_loss_from(const std::string& s) {
  if (s == "sigmoid") return CpoLoss::sigmoid;
  if (s == "hinge") return CpoLoss::hinge;
  if (s == "ipo") return CpoLoss::ipo;
  if (s == "simpo") return CpoLoss::simpo;
  throw std::runtime_error("unknown cpo loss " + s);
}

CpoOptions options_of(const preftest::Record& r) {
  CpoOptions o;
  o.beta = r.opt_num("beta", 0.1);
  o.loss_type = cpo_loss_from(r.opt.count("loss_type") ? r.opt.at("loss_type") : "sigmoid");
  o.label_smoothing = r.opt_num("label_smoothing", 0.0);
  o.simpo_gamma = r.opt_num("simpo_gamma", 0.5);
  o.cpo_alpha = r.opt_num("cpo_alpha", 1.0);
  o.alpha = r.opt_num("alpha", 0.0);
  if (r.has("average_log_prob")) o.average_log_prob = r.opt_num("average_log_prob", 0) != 0;
  return o;
}

struct Batch {
  VectorXd pc, pr, lc, lr;
};
Batch batch(Eigen::Index n, std::uint64_t seed, double lo = -2.0, double hi = -0.05) {
  Batch b;
  b.lc = preftest::lengths(seed, n, 25);
  b.lr = preftest::lengths(seed + 1, n, 25);
  b.pc = preftest::seq(seed + 2, b.lc, lo, hi);
  b.pr = preftest::seq(seed + 3, b.lr, lo, hi);
  return b;
}

void fd_check(const Batch& b, const CpoOptions& o) {
  const auto res = losskit::cpo(b.pc, b.pr, b.lc, b.lr, o);
  preftest::check_fd([&](const std::vector<VectorXd>& x) { return losskit::cpo(x[0], x[1], b.lc, b.lr, o).value; },
                     {b.pc, b.pr}, {res.d_policy_chosen, res.d_policy_rejected});
}

}  // namespace

TEST_CASE("cpo: PyTorch float64 reference (TRL CPOTrainer formulas)", "[cpo][reference]") {
  const auto recs = preftest::records_of("cpo");
  REQUIRE(recs.size() >= 12);
  for (const auto& r : recs) {
    INFO(r.describe());
    const auto x = preftest::inputs_of(r);
    const auto res = losskit::cpo(x.pc, x.pr, x.lc, x.lr, options_of(r));
    preftest::check_paired_outputs(res, r, 1e-12, 1e-12);
  }
}

TEST_CASE("cpo: hand-checked values", "[cpo]") {
  VectorXd pc(2), pr(2);
  pc << -6.0, -10.0;
  pr << -9.0, -4.0;
  std::vector<int> lc{3, 5}, lr{3, 2};
  CpoOptions o;  // sigmoid on SUMMED log-probs, beta 0.1, cpo_alpha 1
  auto r = losskit::cpo(pc, pr, lc, lr, o);
  const double nll = 16.0 / 8.0;
  const double want = (std::log1p(std::exp(-0.3)) + std::log1p(std::exp(0.6))) / 2 + nll;
  CHECK_THAT(r.value, Catch::Matchers::WithinRel(want, 1e-14));
  CHECK_THAT(r.nll, Catch::Matchers::WithinRel(nll, 1e-15));
  CHECK_THAT(r.chosen_rewards[0], Catch::Matchers::WithinRel(-0.6, 1e-15));
  // d/dpi_w,0 = (-0.1 s(-0.3)) / 2 - 1 / 8
  CHECK_THAT(r.d_policy_chosen[0], Catch::Matchers::WithinRel(-0.1 / (1 + std::exp(0.3)) / 2 - 1.0 / 8, 1e-14));
  o.loss_type = CpoLoss::ipo;  // averaged by default: x_w = (-2, -2), x_l = (-3, -2): z = (1, 0)
  o.cpo_alpha = 0;
  r = losskit::cpo(pc, pr, lc, lr, o);
  CHECK_THAT(r.value, Catch::Matchers::WithinRel((std::pow(1 - 5.0, 2) + std::pow(0 - 5.0, 2)) / 2, 1e-14));
  o.loss_type = CpoLoss::hinge;  // summed: beta z = 0.3, -0.6
  r = losskit::cpo(pc, pr, lc, lr, o);
  CHECK_THAT(r.value, Catch::Matchers::WithinRel((0.7 + 1.6) / 2, 1e-14));
  CHECK(r.d_policy_chosen[0] == -0.1 / 2);
  o.loss_type = CpoLoss::sigmoid;
  o.alpha = 0.5;  // AlphaPO on summed log-probs: r(x) = (1 - e^(-x/2)) / 0.5
  r = losskit::cpo(pc, pr, lc, lr, o);
  const double rw = 2 * (1 - std::exp(3.0)), rl = 2 * (1 - std::exp(4.5));
  CHECK_THAT(r.per_row[0], Catch::Matchers::WithinRel(std::log1p(std::exp(-0.1 * (rw - rl))), 1e-13));
  CHECK_THAT(r.chosen_rewards[0], Catch::Matchers::WithinRel(0.1 * rw, 1e-14));
}

TEST_CASE("cpo: central finite differences for every loss type and option", "[cpo][fd]") {
  const Batch b = batch(6, 21);
  for (CpoLoss t : {CpoLoss::sigmoid, CpoLoss::hinge, CpoLoss::ipo, CpoLoss::simpo}) {
    for (int variant = 0; variant < 4; ++variant) {
      CpoOptions o;
      o.loss_type = t;
      if (variant == 1) {
        o.label_smoothing = t == CpoLoss::sigmoid || t == CpoLoss::simpo ? 0.2 : 0.0;  // hinge / ipo reject it
        o.average_log_prob = true;
        o.beta = 2.0;
      }
      if (variant == 2) {
        o.average_log_prob = false;
        o.cpo_alpha = 0.3;
      }
      if (variant == 3) {
        o.alpha = -0.4;
        o.average_log_prob = true;
        o.reduction = losskit::Reduction::sum;
      }
      CAPTURE(int(t), variant);
      fd_check(b, o);
    }
  }
}

TEST_CASE("cpo: extreme margins stay finite", "[cpo][extreme]") {
  VectorXd pc(2), pr(2);
  pc << -1e-3, -1e5;
  pr << -1e5, -1e-3;
  std::vector<int> one{1, 1};
  for (CpoLoss t : {CpoLoss::sigmoid, CpoLoss::hinge, CpoLoss::ipo, CpoLoss::simpo}) {
    CpoOptions o;
    o.loss_type = t;
    o.label_smoothing = t == CpoLoss::sigmoid || t == CpoLoss::simpo ? 0.1 : 0.0;
    const auto r = losskit::cpo(pc, pr, one, one, o);
    CAPTURE(int(t));
    CHECK(std::isfinite(r.value));
    CHECK(r.d_policy_chosen.allFinite());
    CHECK(r.d_policy_rejected.allFinite());
  }
}

TEST_CASE("cpo: argument errors", "[cpo][errors]") {
  const Batch b = batch(3, 2);
  using preftest::check_throws;
  check_throws([&] { losskit::cpo(b.pc, b.pr.head(2), b.lc, b.lr); }, {"losskit::cpo", "'policy_rejected' has 2 entries"});
  CpoOptions o;
  check_throws([&] { losskit::cpo(b.pc, b.pr, losskit::Values{}, losskit::Values{}, o); },
               {"'chosen_lengths' must be given", "NLL"});
  o.cpo_alpha = 0;  // summed sigmoid without NLL: no lengths needed
  CHECK(std::isfinite(losskit::cpo(b.pc, b.pr, losskit::Values{}, losskit::Values{}, o).value));
  o.loss_type = CpoLoss::simpo;
  check_throws([&] { losskit::cpo(b.pc, b.pr, b.lc, losskit::Values{}, o); },
               {"'rejected_lengths' must be given", "averaging"});
  std::vector<double> zero{2, 0, 1};
  check_throws([&] { losskit::cpo(b.pc, b.pr, b.lc, zero, o); }, {"'rejected_lengths' is 0 at index 1"});
  o.label_smoothing = 1.5;
  check_throws([&] { losskit::cpo(b.pc, b.pr, b.lc, b.lr, o); }, {"'label_smoothing' must be in [0, 1]"});
  o = {};
  o.loss_type = static_cast<CpoLoss>(9);
  check_throws([&] { losskit::cpo(b.pc, b.pr, b.lc, b.lr, o); }, {"unknown 'loss_type' 9"});
  o = {};
  o.simpo_gamma = std::numeric_limits<double>::infinity();
  check_throws([&] { losskit::cpo(b.pc, b.pr, b.lc, b.lr, o); }, {"'simpo_gamma' must be finite"});
  o = {};
  o.cpo_alpha = -1;
  check_throws([&] { losskit::cpo(b.pc, b.pr, b.lc, b.lr, o); }, {"'cpo_alpha' must be finite and >= 0"});
}

TEST_CASE("cpo: options the loss type does not read are rejected", "[cpo][errors]") {
  // TRL's CPOTrainer warns about label_smoothing with hinge / ipo and ignores it.
  const Batch b = batch(3, 2);
  using preftest::check_throws;
  CpoOptions o;
  o.loss_type = CpoLoss::hinge;
  o.label_smoothing = 0.1;
  check_throws([&] { losskit::cpo(b.pc, b.pr, b.lc, b.lr, o); },
               {"losskit::cpo: 'label_smoothing' is 0.1, but loss_type 'hinge' does not read it"});
  o.loss_type = CpoLoss::ipo;
  check_throws([&] { losskit::cpo(b.pc, b.pr, b.lc, b.lr, o); }, {"'label_smoothing' is 0.1", "loss_type 'ipo'"});
  o = {};
  o.simpo_gamma = 1.0;
  for (CpoLoss t : {CpoLoss::sigmoid, CpoLoss::hinge, CpoLoss::ipo}) {
    o.loss_type = t;
    CAPTURE(int(t));
    check_throws([&] { losskit::cpo(b.pc, b.pr, b.lc, b.lr, o); }, {"losskit::cpo: 'simpo_gamma' is 1, but loss_type"});
  }
  // Read by the types that use them.
  o.loss_type = CpoLoss::simpo;
  o.label_smoothing = 0.1;
  CHECK(std::isfinite(losskit::cpo(b.pc, b.pr, b.lc, b.lr, o).value));
  o.loss_type = CpoLoss::sigmoid;
  o.simpo_gamma = 0.5;  // the default, explicitly: accepted
  CHECK(std::isfinite(losskit::cpo(b.pc, b.pr, b.lc, b.lr, o).value));
}

TEST_CASE("cpo: AlphaPO on summed log-probs far below -709 / alpha: exact limits, never NaN", "[cpo][extreme][alpha]") {
  // alpha 0.1, beta 0.1, no NLL, one pair per call: r(x) = (1 - e^(-x / 10)) * 10, e^(-x / 10)
  // overflows for x < -7098 (x = -1e5: e^1e4; x = -1e7: e^1e6).
  const double inf = HUGE_VAL;
  auto at = [](double xw, double xl, CpoLoss t = CpoLoss::sigmoid, double eps = 0.0) {
    VectorXd pc(1), pr(1);
    pc << xw;
    pr << xl;
    CpoOptions o;
    o.loss_type = t;
    o.alpha = 0.1;
    o.cpo_alpha = 0.0;
    o.average_log_prob = false;
    o.label_smoothing = eps;
    return losskit::cpo(pc, pr, losskit::Values{}, losskit::Values{}, o);
  };
  for (double big : {-1e5, -1e7}) {
    CAPTURE(big);
    // Chosen far more likely: z = +inf (it overflows), loss 0, and both gradients vanish:
    // d/dpi_l = beta s(-beta z) e^(-alpha x_l) -> 0 (was 0 * inf = NaN).
    auto r = at(-10, big);
    CHECK(r.value == 0.0);
    CHECK(r.d_policy_chosen[0] == 0.0);
    CHECK(r.d_policy_rejected[0] == 0.0);
    CHECK(r.margins[0] == inf);
    CHECK(r.accuracy == 1.0);
    // Chosen far less likely: the exact loss and d/dpi_w overflow; d/dpi_l = beta e^(-alpha x_l).
    r = at(big, -10);
    CHECK(r.value == inf);
    CHECK(r.d_policy_chosen[0] == -inf);
    CHECK_THAT(r.d_policy_rejected[0], Catch::Matchers::WithinRel(0.1 * std::exp(1.0), 1e-15));
    CHECK(r.accuracy == 0.0);
    // Equal log-probs: z = 0 exactly (was -inf - -inf = NaN): loss log 2, gradients -+0.05 e^(-alpha x) = -+inf.
    r = at(big, big);
    CHECK_THAT(r.value, Catch::Matchers::WithinRel(std::log(2.0), 1e-15));
    CHECK(r.d_policy_chosen[0] == -inf);
    CHECK(r.d_policy_rejected[0] == inf);
    CHECK(r.margins[0] == 0.0);
    CHECK(r.chosen_rewards[0] == -inf);  // beta r(x) itself overflows
    // Both huge, chosen slightly more likely: z = e^(-alpha x_w) (e^(alpha) - 1) / alpha overflows to +inf.
    r = at(big, big - 10);
    CHECK(r.value == 0.0);
    CHECK(r.d_policy_chosen[0] == 0.0);
    CHECK(r.d_policy_rejected[0] == 0.0);
    CHECK(r.margins[0] == inf);
    CHECK(r.accuracy == 1.0);
    // With label smoothing e: the e sp(beta z) part makes the loss and d/dpi_l overflow, d/dpi_w = beta e e^(-alpha x_w).
    r = at(-10, big, CpoLoss::sigmoid, 0.1);
    CHECK(r.value == inf);
    CHECK_THAT(r.d_policy_chosen[0], Catch::Matchers::WithinRel(0.1 * 0.1 * std::exp(1.0), 1e-15));
    CHECK(r.d_policy_rejected[0] == -inf);
    // hinge: max(0, 1 - beta z); ipo: (z - 5)^2.
    r = at(-10, big, CpoLoss::hinge);
    CHECK(r.value == 0.0);
    CHECK(r.d_policy_rejected[0] == 0.0);  // was 0 * inf
    r = at(big, big, CpoLoss::hinge);
    CHECK(r.value == 1.0);
    CHECK(r.d_policy_chosen[0] == -inf);
    r = at(big, big, CpoLoss::ipo);
    CHECK(r.value == 25.0);
    CHECK(r.d_policy_chosen[0] == -inf);
    CHECK(r.d_policy_rejected[0] == inf);
    r = at(-10, big, CpoLoss::ipo);
    CHECK(r.value == inf);
    CHECK(r.d_policy_chosen[0] == inf);  // 2 (z - 5) e^1 with z = +inf
    CHECK(r.d_policy_rejected[0] == -inf);
  }
  SECTION("no NaN anywhere on a grid of summed log-probs, every loss type") {
    for (CpoLoss t : {CpoLoss::sigmoid, CpoLoss::hinge, CpoLoss::ipo, CpoLoss::simpo})
      for (double xw : {-1e7, -1e5, -7100.0, -7090.0, -10.0, -0.5})
        for (double xl : {-1e7, -1e5, -7100.0, -7090.0, -10.0, -0.5}) {
          CAPTURE(int(t), xw, xl);
          const auto r = at(xw, xl, t, t == CpoLoss::sigmoid || t == CpoLoss::simpo ? 0.1 : 0.0);
          CHECK(!std::isnan(r.value));
          CHECK(!std::isnan(r.d_policy_chosen[0]));
          CHECK(!std::isnan(r.d_policy_rejected[0]));
          CHECK(!std::isnan(r.margins[0]));
        }
  }
  SECTION("where e^(-alpha x) is large but the results are finite: against long double") {
    // x = -7090: e^709 is finite, r(x) = -10 (e^709 - 1) is not (it was -inf, and z = NaN).
    auto r = at(-7090, -7090);
    const long double e709 = std::exp(709.0L), e700 = std::exp(700.0L), e70005 = std::exp(700.05L);
    CHECK_THAT(r.value, Catch::Matchers::WithinRel(std::log(2.0), 1e-15));
    CHECK_THAT(r.d_policy_chosen[0], Catch::Matchers::WithinRel(double(-0.05L * e709), 1e-12));
    CHECK_THAT(r.d_policy_rejected[0], Catch::Matchers::WithinRel(double(0.05L * e709), 1e-12));
    // hinge on both sides of the switch to log space (a = 700.05 and 700): d/dpi = -+beta e^a.
    r = at(-7000.5, -7000, CpoLoss::hinge);
    CHECK_THAT(r.d_policy_chosen[0], Catch::Matchers::WithinRel(double(-0.1L * e70005), 1e-12));
    CHECK_THAT(r.d_policy_rejected[0], Catch::Matchers::WithinRel(double(0.1L * e700), 1e-12));
  }
  SECTION("moderate log-probs: central differences, alpha of both signs, summed and averaged") {
    const Batch b = batch(6, 21);
    for (CpoLoss t : {CpoLoss::sigmoid, CpoLoss::hinge, CpoLoss::ipo, CpoLoss::simpo})
      for (double alpha : {0.1, 0.03, -0.3})
        for (bool average : {false, true}) {
          CpoOptions o;
          o.loss_type = t;
          o.alpha = average ? 10 * alpha : alpha;
          o.average_log_prob = average;
          o.beta = 0.5;
          o.label_smoothing = t == CpoLoss::sigmoid || t == CpoLoss::simpo ? 0.1 : 0.0;
          CAPTURE(int(t), o.alpha, average);
          fd_check(b, o);
        }
  }
}
