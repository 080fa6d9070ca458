#include <losskit/losskit.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "preference_test_support.hpp"

using losskit::DpoLoss;
using losskit::DpoOptions;
using preftest::VectorXd;

namespace {

const std::vector<DpoLoss> kAllTypes = {
    DpoLoss::sigmoid,  DpoLoss::robust,   DpoLoss::hinge,    DpoLoss::ipo,          DpoLoss::exo_pair,
    DpoLoss::nca_pair, DpoLoss::bco_pair, DpoLoss::sppo_hard, DpoLoss::apo_zero,    DpoLoss::apo_down,
    DpoLoss::discopop, DpoLoss::sigmoid_norm, DpoLoss::aot,  DpoLoss::aot_unpaired, DpoLoss::sft};

DpoLoss loss_from_name(const std::string& name) {
  for (DpoLoss t : kAllTypes)
    if (name == losskit::dpo_loss_name(t)) return t;
  throw std::runtime_error("unknown loss type " + name);
}

DpoOptions options_of(const preftest::Record& r) {
  DpoOptions o;
  o.beta = r.opt_num("beta", 0.1);
  o.loss_types.clear();
  for (const auto& name : r.opt_list("loss_types")) o.loss_types.push_back(loss_from_name(name));
  for (const auto& w : r.opt_list("loss_weights")) o.loss_weights.push_back(std::stod(w));
  o.label_smoothing = r.opt_num("label_smoothing", 0.0);
  o.conservative_sigmoid = r.opt_num("conservative_sigmoid", 0) != 0;
  o.discopop_tau = r.opt_num("discopop_tau", 0.05);
  o.bco_pair_delta = r.opt_num("bco_pair_delta", 0.0);
  o.rpo_alpha = r.opt_num("rpo_alpha", 0.0);
  o.rpo_eta = r.opt_num("rpo_eta", 0.0);
  return o;
}

// Inputs with chosen and rejected lengths: a small batch with varied margins.
struct Batch {
  VectorXd pc, pr, rc, rr, lc, lr;
};
Batch small_batch(Eigen::Index n, std::uint64_t seed, double scale) {
  Batch b;
  b.lc = preftest::lengths(seed, n, 20);
  b.lr = preftest::lengths(seed + 1, n, 20);
  b.pc = preftest::seq(seed + 2, b.lc, -2.0, -0.05);
  b.pr = preftest::seq(seed + 3, b.lr, -2.0, -0.05);
  b.rc = preftest::near(seed + 4, b.pc, scale);
  b.rr = preftest::near(seed + 5, b.pr, scale);
  return b;
}

losskit::PreferenceResult run(const Batch& b, DpoOptions o) {
  o.chosen_lengths = b.lc;
  o.rejected_lengths = b.lr;
  return losskit::dpo(b.pc, b.pr, b.rc, b.rr, o);
}

// FD check of d value / d policy (both sides) in double.
void fd_check(const Batch& b, const DpoOptions& o, double tol = 1e-6) {
  const auto res = run(b, o);
  preftest::check_fd(
      [&](const std::vector<VectorXd>& x) {
        Batch c = b;
        c.pc = x[0];
        c.pr = x[1];
        return run(c, o).value;
      },
      {b.pc, b.pr}, {res.d_policy_chosen, res.d_policy_rejected}, tol);
}

double sp(double x) { return double(std::log1p(std::exp(-std::fabs((long double)x))) + std::max(0.0L, (long double)x)); }

}  // namespace

TEST_CASE("dpo: PyTorch float64 reference (TRL formulas), every loss type and option", "[dpo][reference]") {
  const auto recs = preftest::records_of("dpo");
  REQUIRE(recs.size() >= 40);
  for (const auto& r : recs) {
    INFO(r.describe());
    const auto x = preftest::inputs_of(r);
    DpoOptions o = options_of(r);
    o.chosen_lengths = x.lc;
    o.rejected_lengths = x.lr;
    const auto res = losskit::dpo(x.pc, x.pr, x.rc, x.rr, o);
    preftest::check_paired_outputs(res, r, 1e-12, 1e-12);
    CHECK(res.count == x.pc.size());
  }
}

TEST_CASE("dpo: hand-checked values of every loss type", "[dpo]") {
  // One pair: D_w = 3, D_l = -2 (beta 0.1 -> h = 0.5); lengths 4 and 5.
  VectorXd pc(1), pr(1), rc(1), rr(1);
  pc << -7.0;
  rc << -10.0;
  pr << -12.0;
  rr << -10.0;
  std::vector<double> lc{4.0}, lr{5.0};
  const double h = 0.5, rw = 0.3, rl = -0.2;
  const double s = 1.0 / (1.0 + std::exp(-h));
  auto sig = [](double x) { return 1.0 / (1.0 + std::exp(-x)); };
  struct Case {
    DpoLoss type;
    double want;
  };
  const double m = sig(h / 0.05);
  const std::vector<Case> cases = {
      {DpoLoss::sigmoid, std::log1p(std::exp(-h))},
      {DpoLoss::robust, (0.9 * std::log1p(std::exp(-h)) - 0.1 * std::log1p(std::exp(h))) / 0.8},
      {DpoLoss::hinge, 0.5},
      {DpoLoss::ipo, std::pow(3.0 / 4.0 + 2.0 / 5.0 - 5.0, 2)},
      {DpoLoss::exo_pair, s * (std::log(s) - std::log(0.9)) + (1 - s) * (std::log(1 - s) - std::log(0.1))},
      {DpoLoss::nca_pair, std::log1p(std::exp(-rw)) + 0.5 * std::log1p(std::exp(rw)) + 0.5 * std::log1p(std::exp(rl))},
      {DpoLoss::bco_pair, std::log1p(std::exp(-rw)) + std::log1p(std::exp(rl))},
      {DpoLoss::sppo_hard, std::pow(3.0 - 5.0, 2) + std::pow(-2.0 + 5.0, 2)},
      {DpoLoss::apo_zero, 1.0 - sig(rw) + sig(rl)},
      {DpoLoss::apo_down, sig(rw) + 1.0 - sig(h)},
      {DpoLoss::discopop, (1 - m) * std::log1p(std::exp(-h)) + m * std::exp(-h)},
      {DpoLoss::sigmoid_norm, std::log1p(std::exp(-0.1 * (3.0 / 4.0 + 2.0 / 5.0)))},
      {DpoLoss::aot, std::log1p(std::exp(-h))},           // one pair: sorting is the identity
      {DpoLoss::aot_unpaired, std::log1p(std::exp(-h))},
      {DpoLoss::sft, 7.0 / 4.0},                           // -pi_w / n_w
  };
  for (const auto& c : cases) {
    CAPTURE(losskit::dpo_loss_name(c.type));
    DpoOptions o;
    o.loss_types = {c.type};
    o.label_smoothing = c.type == DpoLoss::robust || c.type == DpoLoss::exo_pair ? 0.1 : 0.0;
    o.chosen_lengths = lc;
    o.rejected_lengths = lr;
    const auto res = losskit::dpo(pc, pr, rc, rr, o);
    CHECK_THAT(res.value, Catch::Matchers::WithinRel(c.want, 1e-13));
    CHECK_THAT(res.chosen_rewards[0], Catch::Matchers::WithinRel(rw, 1e-15));
    CHECK_THAT(res.rejected_rewards[0], Catch::Matchers::WithinRel(rl, 1e-15));
    CHECK(res.accuracy == 1.0);
  }
  // Gradients by hand for sigmoid: d/dpi_w = -beta s(-h), d/dpi_l = +beta s(-h).
  const auto res = losskit::dpo(pc, pr, rc, rr);
  CHECK_THAT(res.d_policy_chosen[0], Catch::Matchers::WithinRel(-0.1 * (1 - s), 1e-14));
  CHECK_THAT(res.d_policy_rejected[0], Catch::Matchers::WithinRel(0.1 * (1 - s), 1e-14));
}

TEST_CASE("dpo: TRL defaults (beta 0.1, sigmoid, mean over pairs)", "[dpo]") {
  const Batch b = small_batch(7, 77, 10.0);
  const auto res = losskit::dpo(b.pc, b.pr, b.rc, b.rr);
  long double want = 0;
  for (Eigen::Index i = 0; i < 7; ++i) {
    const long double hh = 0.1L * ((b.pc[i] - b.rc[i]) - (b.pr[i] - b.rr[i]));
    want += std::log1p(std::exp(-hh));
  }
  CHECK_THAT(res.value, Catch::Matchers::WithinRel(double(want / 7), 1e-14));
  CHECK(res.denominator == 7.0);
  CHECK(res.count == 7);
  CHECK(res.nll == 0.0);
  // margins = chosen - rejected rewards; accuracy = share of positive margins
  CHECK((res.margins - (res.chosen_rewards - res.rejected_rewards)).cwiseAbs().maxCoeff() == 0.0);
  double wins = 0;
  for (Eigen::Index i = 0; i < 7; ++i) wins += res.margins[i] > 0;
  CHECK(res.accuracy == wins / 7);
}

TEST_CASE("dpo: central finite differences for every loss type and option", "[dpo][fd]") {
  const Batch b = small_batch(6, 31, 8.0);
  SECTION("each loss type alone") {
    for (DpoLoss t : kAllTypes) {
      CAPTURE(losskit::dpo_loss_name(t));
      DpoOptions o;
      o.loss_types = {t};
      if (t == DpoLoss::exo_pair || t == DpoLoss::robust || t == DpoLoss::aot || t == DpoLoss::aot_unpaired)
        o.label_smoothing = 0.2;
      fd_check(b, o);
      o.beta = 0.7;  // wider margins
      fd_check(b, o);
    }
  }
  SECTION("options") {
    DpoOptions o;
    o.conservative_sigmoid = true;
    o.label_smoothing = 0.3;
    fd_check(b, o);
    o = {};
    o.loss_types = {DpoLoss::discopop};
    o.discopop_tau = 0.7;
    fd_check(b, o);
    o = {};
    o.loss_types = {DpoLoss::bco_pair};
    o.bco_pair_delta = -0.4;
    fd_check(b, o);
    o = {};
    o.rpo_alpha = 0.8;
    fd_check(b, o);
    o = {};
    o.rpo_eta = 0.005;
    o.beta = 0.05;
    fd_check(b, o);
    o = {};
    o.loss_types = kAllTypes;
    o.label_smoothing = 0.05;
    o.loss_weights.assign(kAllTypes.size(), 0.5);
    o.loss_weights[3] = -1.0;
    o.rpo_alpha = 0.3;
    o.rpo_eta = 0.01;
    fd_check(b, o);
  }
  SECTION("reductions and upstream scale") {
    for (auto red : {losskit::Reduction::sum, losskit::Reduction::none, losskit::Reduction::mean}) {
      DpoOptions o;
      o.loss_types = {DpoLoss::sigmoid, DpoLoss::aot_unpaired, DpoLoss::sft};
      o.reduction = red;
      o.grad_scale = -2.5;
      const auto res = run(b, o);
      DpoOptions unit = o;
      unit.grad_scale = 1.0;
      preftest::check_fd(
          [&](const std::vector<VectorXd>& x) {
            Batch c = b;
            c.pc = x[0];
            c.pr = x[1];
            return -2.5 * run(c, unit).value;
          },
          {b.pc, b.pr}, {res.d_policy_chosen, res.d_policy_rejected});
    }
  }
}

TEST_CASE("dpo: reductions", "[dpo]") {
  const Batch b = small_batch(5, 5, 6.0);
  DpoOptions o;
  o.loss_types = {DpoLoss::ipo, DpoLoss::sigmoid};
  const auto mean = run(b, o);
  o.reduction = losskit::Reduction::sum;
  const auto sum = run(b, o);
  CHECK_THAT(sum.value, Catch::Matchers::WithinRel(5 * mean.value, 1e-14));
  CHECK(sum.denominator == 1.0);
  CHECK((sum.d_policy_chosen - 5 * mean.d_policy_chosen).cwiseAbs().maxCoeff() <= 1e-15);
  o.reduction = losskit::Reduction::none;
  const auto none = run(b, o);
  CHECK(none.per_row == sum.per_row);
  CHECK(none.value == sum.value);
  o.reduction = losskit::Reduction::mean;
  o.normalizer = 20.0;
  const auto norm = run(b, o);
  CHECK_THAT(norm.value, Catch::Matchers::WithinRel(sum.value / 20, 1e-14));
  CHECK(norm.denominator == 20.0);
  CHECK((norm.d_policy_rejected - sum.d_policy_rejected / 20).cwiseAbs().maxCoeff() <= 1e-16);
}

TEST_CASE("dpo: aot sorts within the batch; the gradient follows the permutation", "[dpo][aot]") {
  // a = pi_w - pi_l = (3, -1, 2), b = rho_w - rho_l = (0.5, 1.5, -4) -> sorted a (-1, 2, 3), sorted b (-4, 0.5, 1.5)
  VectorXd pc(3), pr(3), rc(3), rr(3);
  pc << -1, -5, -2;
  pr << -4, -4, -4;
  rc << -3.5, -2.5, -8;
  rr << -4, -4, -4;
  DpoOptions o;
  o.loss_types = {DpoLoss::aot};
  o.beta = 0.5;
  const auto res = losskit::dpo(pc, pr, rc, rr, o);
  const double d[3] = {-1 - (-4), 2 - 0.5, 3 - 1.5};  // term k
  const int pair_of_rank[3] = {1, 2, 0};
  double want = 0;
  for (int k = 0; k < 3; ++k) {
    want += sp(-0.5 * d[k]);
    CHECK_THAT(res.per_row[k], Catch::Matchers::WithinRel(sp(-0.5 * d[k]), 1e-14));
    const double g = -0.5 / (1 + std::exp(0.5 * d[k])) / 3;
    CHECK_THAT(res.d_policy_chosen[pair_of_rank[k]], Catch::Matchers::WithinRel(g, 1e-14));
    CHECK_THAT(res.d_policy_rejected[pair_of_rank[k]], Catch::Matchers::WithinRel(-g, 1e-14));
  }
  CHECK_THAT(res.value, Catch::Matchers::WithinRel(want / 3, 1e-14));
  SECTION("ties keep pair order (stable sort)") {
    VectorXd tie = VectorXd::Constant(3, -2.0);
    const auto r2 = losskit::dpo(tie, pr, rc, rr, o);  // a all equal
    // b sorted: (-4 [pair 2], 0.5 [pair 0], 1.5 [pair 1]); a ranks are pairs 0, 1, 2 in order
    const double a = -2 + 4;
    const double g0 = -0.5 / (1 + std::exp(0.5 * (a + 4))) / 3;
    CHECK_THAT(r2.d_policy_chosen[0], Catch::Matchers::WithinRel(g0, 1e-14));
  }
  SECTION("aot_unpaired sorts D_w and D_l separately") {
    o.loss_types = {DpoLoss::aot_unpaired};
    const auto r3 = losskit::dpo(pc, pr, rc, rr, o);
    // D_w = (2.5, -2.5, 6) -> ranks: pair 1, 0, 2; D_l = (0, 0, 0)... all zero: stable -> pairs 0, 1, 2
    const double dw_sorted[3] = {-2.5, 2.5, 6};
    const int w_pair[3] = {1, 0, 2};
    for (int k = 0; k < 3; ++k) {
      const double g = -0.5 / (1 + std::exp(0.5 * dw_sorted[k])) / 3;
      CHECK_THAT(r3.d_policy_chosen[w_pair[k]], Catch::Matchers::WithinRel(g, 1e-14));
      CHECK_THAT(r3.d_policy_rejected[k], Catch::Matchers::WithinRel(-g, 1e-14));
    }
  }
}

TEST_CASE("dpo: extreme margins |h| up to 1e4 stay finite", "[dpo][extreme]") {
  // beta 0.1: D = +-5e4 -> h = +-1e4 (and -+1e4 on the other pair)
  VectorXd pc(4), pr(4), rc(4), rr(4);
  pc << 0, -1e5, -1e3, -2e4;
  rc << -5e4, -5e4, -1e3, -1e4;
  pr << -5e4, 0, -1e3, -3e4;
  rr << 0, -5e4, -1e3 - 1e-3, -3e4;
  std::vector<double> len{1, 1, 1, 1};
  for (DpoLoss t : kAllTypes) {
    for (double beta : {0.1, 1.0}) {
      CAPTURE(losskit::dpo_loss_name(t), beta);
      DpoOptions o;
      o.loss_types = {t};
      o.beta = beta;
      o.label_smoothing = t == DpoLoss::exo_pair || t == DpoLoss::robust ? 0.1 : 0.0;
      o.chosen_lengths = len;
      o.rejected_lengths = len;
      const auto r = losskit::dpo(pc, pr, rc, rr, o);
      CHECK(std::isfinite(r.value));
      CHECK(r.per_row.allFinite());
      CHECK(r.d_policy_chosen.allFinite());
      CHECK(r.d_policy_rejected.allFinite());
    }
  }
  SECTION("asymptotic values") {
    VectorXd a(2), z = VectorXd::Zero(2), b(2);
    a << 1e5, -1e5;  // h = +1e4, -1e4
    b << 0, 0;
    DpoOptions o;
    auto r = losskit::dpo(a, b, z, z, o);
    CHECK(r.per_row[0] == 0.0);      // sp(-1e4) underflows to exactly 0
    CHECK(r.per_row[1] == 1e4);      // sp(1e4) = 1e4
    CHECK(r.d_policy_chosen[1] == -0.1 / 2);
    o.loss_types = {DpoLoss::discopop};
    r = losskit::dpo(a, b, z, z, o);
    CHECK(r.per_row[0] == 0.0);      // m e^-h = e^(log m - h): 0, not 1 * inf
    CHECK(r.per_row[1] == 1e4);      // m = s(-2e5) = 0: the logistic part
    CHECK(r.d_policy_chosen[1] == -0.1 / 2);
    o.loss_types = {DpoLoss::exo_pair};
    o.label_smoothing = 1e-3;
    r = losskit::dpo(a, b, z, z, o);
    CHECK_THAT(r.per_row[0], Catch::Matchers::WithinRel(-std::log1p(-1e-3), 1e-12));  // KL([1, 0] || [1 - e, e])
    CHECK_THAT(r.per_row[1], Catch::Matchers::WithinRel(-std::log(1e-3), 1e-12));
    CHECK(r.d_policy_chosen.cwiseAbs().maxCoeff() == 0.0);
  }
}

TEST_CASE("dpo: float inputs, row vectors, expressions", "[dpo]") {
  const Batch b = small_batch(9, 9, 5.0);
  const auto ref = losskit::dpo(b.pc, b.pr, b.rc, b.rr);
  const Eigen::VectorXf fc = b.pc.cast<float>(), fr = b.pr.cast<float>();  // exact: inputs are floats
  const auto rf = losskit::dpo(fc, fr, b.rc.transpose(), b.rr.cast<float>());
  CHECK(rf.value == ref.value);
  CHECK(rf.d_policy_chosen == ref.d_policy_chosen);
  const auto re = losskit::dpo(b.pc, b.pr, b.rc * 1.0, b.rr.array() + 0.0);
  CHECK(re.value == ref.value);
}

TEST_CASE("dpo: NaN propagates", "[dpo]") {
  Batch b = small_batch(4, 3, 5.0);
  b.pc[2] = std::numeric_limits<double>::quiet_NaN();
  for (DpoLoss t : {DpoLoss::sigmoid, DpoLoss::hinge, DpoLoss::aot, DpoLoss::discopop}) {
    DpoOptions o;
    o.loss_types = {t};
    const auto r = run(b, o);
    CAPTURE(losskit::dpo_loss_name(t));
    CHECK(std::isnan(r.value));
  }
}

TEST_CASE("dpo: argument errors name the function, the argument and the value", "[dpo][errors]") {
  const Batch b = small_batch(4, 3, 5.0);
  using preftest::check_throws;
  const VectorXd three = b.pc.head(3);
  check_throws([&] { losskit::dpo(b.pc, three, b.rc, b.rr); },
               {"losskit::dpo", "'policy_rejected' has 3 entries, expected 4", "'policy_chosen'"});
  check_throws([&] { losskit::dpo(b.pc, b.pr, b.rc, three); }, {"'ref_rejected' has 3 entries"});
  check_throws([&] { losskit::dpo(VectorXd(0), VectorXd(0), VectorXd(0), VectorXd(0)); }, {"empty"});
  check_throws([&] { losskit::dpo(Eigen::MatrixXd::Zero(2, 2), b.pr, b.rc, b.rr); },
               {"'policy_chosen' must be a vector, got shape 2x2"});
  DpoOptions o;
  o.loss_types = {};
  check_throws([&] { losskit::dpo(b.pc, b.pr, b.rc, b.rr, o); }, {"'loss_types' is empty"});
  o.loss_types = {DpoLoss::sigmoid, DpoLoss::ipo, DpoLoss::sigmoid};
  check_throws([&] { losskit::dpo(b.pc, b.pr, b.rc, b.rr, o); }, {"'loss_types' lists 'sigmoid' twice"});
  o.loss_types = {DpoLoss::sigmoid, static_cast<DpoLoss>(42)};
  check_throws([&] { losskit::dpo(b.pc, b.pr, b.rc, b.rr, o); }, {"unknown loss type (42)"});
  o.loss_types = {DpoLoss::sigmoid, DpoLoss::hinge};
  o.loss_weights = {1.0};
  check_throws([&] { losskit::dpo(b.pc, b.pr, b.rc, b.rr, o); }, {"'loss_weights' has 1 entries, expected one per loss type (2)"});
  o = {};
  o.loss_types = {DpoLoss::ipo};
  check_throws([&] { losskit::dpo(b.pc, b.pr, b.rc, b.rr, o); }, {"'chosen_lengths' must be given", "ipo"});
  std::vector<int> lens{3, 0, 2, 2};
  o.chosen_lengths = lens;
  o.rejected_lengths = lens;
  check_throws([&] { losskit::dpo(b.pc, b.pr, b.rc, b.rr, o); }, {"'chosen_lengths' is 0 at index 1"});
  o.loss_types = {DpoLoss::sigmoid_norm};
  std::vector<int> ok{3, 1, 2, 2};
  o.chosen_lengths = ok;
  check_throws([&] { losskit::dpo(b.pc, b.pr, b.rc, b.rr, o); }, {"'rejected_lengths' is 0 at index 1"});
  std::vector<int> short_len{1, 2};
  o.rejected_lengths = short_len;
  check_throws([&] { losskit::dpo(b.pc, b.pr, b.rc, b.rr, o); }, {"'rejected_lengths' has 2 entries, expected 4"});
  o = {};
  o.loss_types = {DpoLoss::sft};
  std::vector<int> zeros{0, 0, 0, 0};
  o.chosen_lengths = zeros;
  check_throws([&] { losskit::dpo(b.pc, b.pr, b.rc, b.rr, o); }, {"'chosen_lengths' sums to 0"});
  o = {};
  o.rpo_alpha = 1.0;
  check_throws([&] { losskit::dpo(b.pc, b.pr, b.rc, b.rr, o); }, {"'chosen_lengths' must be given"});
  o = {};
  o.loss_types = {DpoLoss::robust};
  o.label_smoothing = 0.5;
  check_throws([&] { losskit::dpo(b.pc, b.pr, b.rc, b.rr, o); }, {"'label_smoothing (robust)' must be in [0, 0.5), got 0.5"});
  o.loss_types = {DpoLoss::exo_pair};
  o.label_smoothing = 0.0;
  check_throws([&] { losskit::dpo(b.pc, b.pr, b.rc, b.rr, o); }, {"'label_smoothing (exo_pair)' must be in (0, 1)"});
  o = {};
  o.beta = 0.0;
  check_throws([&] { losskit::dpo(b.pc, b.pr, b.rc, b.rr, o); }, {"'beta' must be positive"});
  o = {};
  o.discopop_tau = -1;
  check_throws([&] { losskit::dpo(b.pc, b.pr, b.rc, b.rr, o); }, {"'discopop_tau' must be positive"});
  o = {};
  o.rpo_eta = -1;
  check_throws([&] { losskit::dpo(b.pc, b.pr, b.rc, b.rr, o); }, {"'rpo_eta' must be finite and >= 0"});
  o = {};
  o.normalizer = -1;
  check_throws([&] { losskit::dpo(b.pc, b.pr, b.rc, b.rr, o); }, {"'normalizer' must be >= 0"});
}

TEST_CASE("dpo: options that no selected loss type reads are rejected, naming the option and the types",
          "[dpo][errors]") {
  // TRL warns and ignores label_smoothing here; losskit refuses a setting that would do nothing.
  const Batch b = small_batch(4, 3, 5.0);
  using preftest::check_throws;
  auto fails = [&](const DpoOptions& o, std::vector<std::string> fragments) {
    fragments.push_back("losskit::dpo: ");
    check_throws([&] { run(b, o); }, fragments);
  };
  DpoOptions o;
  o.label_smoothing = 0.1;  // sigmoid without conservative_sigmoid
  fails(o, {"'label_smoothing' is 0.1, but none of the selected loss types (sigmoid) reads it",
            "conservative_sigmoid"});
  for (DpoLoss t : {DpoLoss::hinge, DpoLoss::ipo, DpoLoss::nca_pair, DpoLoss::bco_pair, DpoLoss::sppo_hard,
                    DpoLoss::apo_zero, DpoLoss::apo_down, DpoLoss::discopop, DpoLoss::sigmoid_norm, DpoLoss::sft}) {
    CAPTURE(losskit::dpo_loss_name(t));
    o.loss_types = {t};
    fails(o, {"'label_smoothing' is 0.1", std::string("(") + losskit::dpo_loss_name(t) + ") reads it"});
  }
  o.loss_types = {DpoLoss::hinge, DpoLoss::sft};
  fails(o, {"(hinge, sft)"});
  o = {};
  o.loss_types = {DpoLoss::hinge, DpoLoss::ipo};
  o.conservative_sigmoid = true;
  fails(o, {"'conservative_sigmoid' is true, but loss type 'sigmoid' is not selected (loss_types: hinge, ipo)"});
  o = {};
  o.discopop_tau = 0.5;
  fails(o, {"'discopop_tau' is 0.5, but loss type 'discopop' is not selected (loss_types: sigmoid)", "0.05"});
  o = {};
  o.loss_types = {DpoLoss::sigmoid, DpoLoss::nca_pair};
  o.bco_pair_delta = 0.3;
  fails(o, {"'bco_pair_delta' is 0.3, but loss type 'bco_pair' is not selected (loss_types: sigmoid, nca_pair)"});

  SECTION("accepted when one selected type reads the option; the value is the same as with it alone") {
    for (DpoLoss t : {DpoLoss::robust, DpoLoss::exo_pair, DpoLoss::aot, DpoLoss::aot_unpaired}) {
      CAPTURE(losskit::dpo_loss_name(t));
      DpoOptions a;
      a.loss_types = {DpoLoss::hinge, t};
      a.label_smoothing = 0.1;
      DpoOptions h, single = a;
      h.loss_types = {DpoLoss::hinge};
      single.loss_types = {t};
      CHECK_THAT(run(b, a).value, Catch::Matchers::WithinRel(run(b, h).value + run(b, single).value, 1e-14));
    }
    DpoOptions c;
    c.conservative_sigmoid = true;  // cDPO with e = 0 is plain sigmoid
    CHECK(run(b, c).value == run(b, {}).value);
    c = {};
    c.loss_types = {DpoLoss::sigmoid, DpoLoss::discopop, DpoLoss::bco_pair};
    c.discopop_tau = 0.5;
    c.bco_pair_delta = -0.2;
    CHECK(std::isfinite(run(b, c).value));
    // Explicitly set to the default: indistinguishable from unset, accepted.
    c = {};
    c.discopop_tau = 0.05;
    c.bco_pair_delta = 0.0;
    c.label_smoothing = 0.0;
    CHECK(run(b, c).value == run(b, {}).value);
  }
}

TEST_CASE("dpo: discopop at h = -1e4 for tau >= 1: finite where the exact gradient is, else exactly +-inf",
          "[dpo][extreme][discopop]") {
  // One pair with h = beta (D_w - D_l) = h0 (beta 0.1, D_l = 0).
  auto at = [](double h0, double tau) {
    VectorXd pc(1), z = VectorXd::Zero(1);
    pc << h0 / 0.1;
    DpoOptions o;
    o.loss_types = {DpoLoss::discopop};
    o.discopop_tau = tau;
    return losskit::dpo(pc, z, z, z, o);
  };
  // Reference in long double from the definition L = (1 - m) sp(-h) + m e^-h, m = s(h / tau), with
  // log m = -sp(-h / tau) so that m e^-h = e^(log m - h) does not overflow:
  //   dL/dh = m (1 - m) / tau (e^-h - sp(-h)) - (1 - m) s(-h) - m e^-h.
  auto reference = [](long double h, long double tau, long double& grad) {
    auto spl = [](long double x) { return x > 0 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x)); };
    const long double lm = -spl(-h / tau), m = std::exp(lm), m1 = 1 - m, me = std::exp(lm - h);
    const long double sp = spl(-h), s_neg = 1 / (1 + std::exp(h));
    grad = m1 / tau * me - m * m1 / tau * sp - m1 * s_neg - me;
    return m1 * sp + me;
  };
  SECTION("tau = 1 and tau slightly above 1: value and gradient finite and exact") {
    // m e^-h = e^(-h (1 - 1/tau)) comes from log s(h / tau) - h: the rounding of h / tau (~1e4 ulp)
    // puts ~1e-12 into it, hence 1e-11.
    for (double tau : {1.0, 1.0001, 1.001}) {
      CAPTURE(tau);
      long double g = 0;
      const double want = double(reference(-1e4L, tau, g));
      const auto r = at(-1e4, tau);
      CHECK(std::isfinite(r.value));
      CHECK_THAT(r.value, Catch::Matchers::WithinRel(want, 1e-11));
      CHECK_THAT(r.d_policy_chosen[0], Catch::Matchers::WithinRel(0.1 * double(g), 1e-11));
      CHECK_THAT(r.d_policy_rejected[0], Catch::Matchers::WithinRel(-0.1 * double(g), 1e-11));
    }
    CHECK_THAT(at(-1e4, 1.0).value, Catch::Matchers::WithinRel(1e4 + 1, 1e-15));  // sp(1e4) + 1
    CHECK_THAT(at(-1e4, 1.0).d_policy_chosen[0], Catch::Matchers::WithinRel(-0.1, 1e-15));  // beta dL/dh, dL/dh = -1
  }
  SECTION("tau > 1: value +inf, gradient -inf / +inf (it overflows too), never NaN") {
    for (double tau : {1.5, 2.0, 10.0}) {
      CAPTURE(tau);
      const auto r = at(-1e4, tau);
      CHECK(r.value == HUGE_VAL);
      CHECK(r.d_policy_chosen[0] == -HUGE_VAL);
      CHECK(r.d_policy_rejected[0] == HUGE_VAL);
      const auto p = at(1e4, tau);  // the other end: m = 1, everything vanishes
      CHECK(p.value == 0.0);
      CHECK(p.d_policy_chosen[0] == 0.0);
    }
  }
  SECTION("tau > 1 where the exact values are representable: against the reference, and central differences") {
    for (double h0 : {-300.0, -20.0, -1.0, 3.0}) {
      long double g = 0;
      const double want = double(reference(h0, 2.0L, g));
      CAPTURE(h0);
      const auto r = at(h0, 2.0);
      CHECK_THAT(r.value, Catch::Matchers::WithinRel(want, 1e-12));
      CHECK_THAT(r.d_policy_chosen[0], Catch::Matchers::WithinRel(0.1 * double(g), 1e-12));
    }
    const Batch b = small_batch(6, 31, 8.0);
    for (double tau : {1.0, 2.0, 5.0}) {
      CAPTURE(tau);
      DpoOptions o;
      o.loss_types = {DpoLoss::discopop};
      o.discopop_tau = tau;
      o.beta = 0.7;
      fd_check(b, o);
    }
  }
}
