#include <losskit/losskit.hpp>

#include <cmath>
#include <vector>

#include "preference_test_support.hpp"

using losskit::KtoLoss;
using losskit::KtoOptions;
using preftest::VectorXd;

namespace {

KtoOptions options_of(const preftest::Record& r, const preftest::Inputs& x) {
  KtoOptions o;
  o.beta = r.opt_num("beta", 0.1);
  o.desirable_weight = r.opt_num("desirable_weight", 1.0);
  o.undesirable_weight = r.opt_num("undesirable_weight", 1.0);
  if (r.opt.count("loss_type") && r.opt.at("loss_type") == "apo_zero_unpaired") o.loss_type = KtoLoss::apo_zero_unpaired;
  if (r.has("z0")) {
    o.z0 = r.opt_num("z0", 0.0);
  } else if (o.loss_type == KtoLoss::kto) {
    o.kl_policy = x.kp;
    o.kl_reference = x.kr;
  }
  return o;
}

}  // namespace

TEST_CASE("kto: PyTorch float64 reference (TRL KTOTrainer formulas)", "[kto][reference]") {
  const auto recs = preftest::records_of("kto");
  REQUIRE(recs.size() >= 7);
  bool saw_clamp = false;
  for (const auto& r : recs) {
    INFO(r.describe());
    const auto x = preftest::inputs_of(r);
    const auto res = losskit::kto(x.pc, x.pr, x.rc, x.rr, options_of(r, x));
    preftest::check_outputs(res, r, 1e-13, 1e-13);
    preftest::check_close(res.reference_point, r.scalar("reference_point"), 1e-14, "z0");
    CHECK(res.count == x.pc.size() + x.pr.size());
    saw_clamp |= !r.has("z0") && r.scalar("reference_point") == 0.0 && !r.has("loss_type");
  }
  CHECK(saw_clamp);  // one case has a negative KL estimate, clamped at 0
}

TEST_CASE("kto: hand-checked value, z0 estimate and clamp", "[kto]") {
  VectorXd pc(2), rc(2), pr(1), rr(1);
  pc << -10, -20;
  rc << -12, -19;  // D = 2, -1
  pr << -5;
  rr << -8;        // D = 3
  KtoOptions o;
  std::vector<double> kp{-4, -6}, kr{-5, -6};  // mean(kp - kr) = 0.5
  o.kl_policy = kp;
  o.kl_reference = kr;
  auto r = losskit::kto(pc, pr, rc, rr, o);
  auto sig = [](double v) { return 1 / (1 + std::exp(-v)); };
  const double want = ((1 - sig(0.1 * 1.5)) + (1 - sig(0.1 * -1.5)) + (1 - sig(0.1 * (0.5 - 3)))) / 3;
  CHECK_THAT(r.value, Catch::Matchers::WithinRel(want, 1e-14));
  CHECK(r.reference_point == 0.5);
  CHECK_THAT(r.d_policy_chosen[0], Catch::Matchers::WithinRel(-0.1 * sig(0.15) * sig(-0.15) / 3, 1e-14));
  CHECK_THAT(r.d_policy_rejected[0], Catch::Matchers::WithinRel(0.1 * sig(-0.25) * sig(0.25) / 3, 1e-14));
  std::vector<double> kr2{-3, -5};  // mean(kp - kr) = -1: clamped to 0
  o.kl_reference = kr2;
  r = losskit::kto(pc, pr, rc, rr, o);
  CHECK(r.reference_point == 0.0);
  // z0 given by the caller is used as is (negative allowed, as Liger's `kl`)
  KtoOptions g;
  g.z0 = -0.25;
  r = losskit::kto(pc, pr, rc, rr, g);
  CHECK(r.reference_point == -0.25);
  // apo_zero_unpaired needs no reference point
  KtoOptions a;
  a.loss_type = KtoLoss::apo_zero_unpaired;
  r = losskit::kto(pc, pr, rc, rr, a);
  CHECK_THAT(r.value, Catch::Matchers::WithinRel(((1 - sig(0.2)) + (1 - sig(-0.1)) + sig(0.3)) / 3, 1e-14));
}

TEST_CASE("kto: central finite differences (z0 detached)", "[kto][fd]") {
  const VectorXd pc = preftest::seq(1, preftest::lengths(2, 5, 20), -2, -0.1);
  const VectorXd pr = preftest::seq(3, preftest::lengths(4, 4, 20), -2, -0.1);
  const VectorXd rc = preftest::near(5, pc, 15), rr = preftest::near(6, pr, 15);
  const VectorXd kp = preftest::near(7, VectorXd::Constant(6, -10.0), 3), kr = preftest::near(8, VectorXd::Constant(6, -10.0), 3);
  for (int variant = 0; variant < 3; ++variant) {
    KtoOptions o;
    o.beta = 0.3;
    o.desirable_weight = 1.33;
    o.undesirable_weight = 0.75;
    if (variant == 0) {
      o.kl_policy = kp;
      o.kl_reference = kr;
    } else if (variant == 1) {
      o.z0 = 0.4;
      o.reduction = losskit::Reduction::sum;
    } else {
      o.loss_type = KtoLoss::apo_zero_unpaired;
    }
    const auto r = losskit::kto(pc, pr, rc, rr, o);
    CAPTURE(variant);
    preftest::check_fd([&](const std::vector<VectorXd>& x) { return losskit::kto(x[0], x[1], rc, rr, o).value; },
                       {pc, pr}, {r.d_policy_chosen, r.d_policy_rejected});
  }
}

TEST_CASE("kto: extreme rewards stay finite; one side may be empty", "[kto][extreme]") {
  VectorXd pc(2), rc = VectorXd::Zero(2), pr(1), rr = VectorXd::Zero(1);
  pc << 1e5, -1e5;
  pr << -1e5;
  KtoOptions o;
  o.z0 = 0.0;
  const auto r = losskit::kto(pc, pr, rc, rr, o);
  CHECK(std::isfinite(r.value));
  CHECK(r.d_policy_chosen.allFinite());
  CHECK(r.per_row[0] == 0.0);
  CHECK(r.per_row[1] == 1.0);
  const auto only = losskit::kto(pc, VectorXd(0), rc, VectorXd(0), o);
  CHECK(only.count == 2);
  CHECK(only.d_policy_rejected.size() == 0);
}

TEST_CASE("kto: errors", "[kto][errors]") {
  VectorXd pc = VectorXd::Constant(3, -5), pr = VectorXd::Constant(2, -6);
  using preftest::check_throws;
  check_throws([&] { losskit::kto(pc, pr, pc, pr); }, {"losskit::kto", "the reference point is missing"});
  KtoOptions o;
  o.z0 = 0.1;
  check_throws([&] { losskit::kto(pc, pr, pc.head(2), pr, o); }, {"'ref_chosen' has 2 entries, expected 3", "'policy_chosen'"});
  check_throws([&] { losskit::kto(pc, pr, pc, pr.head(1), o); }, {"'ref_rejected' has 1 entries, expected 2"});
  check_throws([&] { losskit::kto(VectorXd(0), VectorXd(0), VectorXd(0), VectorXd(0), o); }, {"both empty"});
  std::vector<double> kp{1, 2}, kr{1};
  o.kl_policy = kp;
  check_throws([&] { losskit::kto(pc, pr, pc, pr, o); }, {"either 'z0' or 'kl_policy'"});
  o.z0.reset();
  o.kl_reference = kr;
  check_throws([&] { losskit::kto(pc, pr, pc, pr, o); }, {"'kl_reference' has 1 entries, expected 2"});
  KtoOptions w;
  w.z0 = 0;
  w.undesirable_weight = -1;
  check_throws([&] { losskit::kto(pc, pr, pc, pr, w); }, {"'undesirable_weight' must be finite and >= 0"});
}

TEST_CASE("kto: apo_zero_unpaired rejects a reference point it would ignore", "[kto][errors]") {
  VectorXd pc = VectorXd::Constant(3, -5), pr = VectorXd::Constant(2, -6), rc = VectorXd::Constant(3, -4.5),
           rr = VectorXd::Constant(2, -6.5);
  using preftest::check_throws;
  KtoOptions o;
  o.loss_type = KtoLoss::apo_zero_unpaired;
  const double value = losskit::kto(pc, pr, rc, rr, o).value;  // no reference point: fine
  o.z0 = 0.3;
  check_throws([&] { losskit::kto(pc, pr, rc, rr, o); },
               {"losskit::kto: 'z0' is given, but loss_type 'apo_zero_unpaired' has no reference point"});
  o.z0 = 0.0;  // even the value it uses: it is still not read
  check_throws([&] { losskit::kto(pc, pr, rc, rr, o); }, {"'z0' is given", "apo_zero_unpaired"});
  o.z0.reset();
  std::vector<double> kp{-5, -6}, kr{-5.5, -6};
  o.kl_policy = kp;
  check_throws([&] { losskit::kto(pc, pr, rc, rr, o); }, {"'kl_policy' is given", "apo_zero_unpaired"});
  o.kl_reference = kr;
  check_throws([&] { losskit::kto(pc, pr, rc, rr, o); }, {"'kl_policy' is given", "apo_zero_unpaired"});
  o.kl_policy = {};
  check_throws([&] { losskit::kto(pc, pr, rc, rr, o); }, {"'kl_reference' is given", "apo_zero_unpaired"});
  // The same options with loss_type kto use them.
  o.kl_policy = kp;
  o.loss_type = KtoLoss::kto;
  CHECK(losskit::kto(pc, pr, rc, rr, o).value != value);
}
