#include <losskit/losskit.hpp>

#include <cmath>
#include <string>
#include <vector>

#include "preference_test_support.hpp"

using losskit::BcoOptions;
using losskit::BcoRunningMean;
using preftest::VectorXd;

TEST_CASE("bco: PyTorch float64 reference (TRL BCOTrainer: RunningMoments, UDM weights)", "[bco][reference]") {
  const auto recs = preftest::records_of("bco");
  REQUIRE(recs.size() >= 4);
  for (const auto& r : recs) {
    INFO(r.describe());
    const auto x = preftest::inputs_of(r);
    const auto seed = std::uint64_t(r.num("seed"));
    BcoRunningMean running;
    for (int k = 0; k < int(r.num("warm", 0)); ++k)
      running.update(preftest::near(seed + 10 + std::uint64_t(k), VectorXd::Zero(5), 0.5));
    BcoOptions o;
    o.beta = r.opt_num("beta", 0.1);
    VectorXd probs(Eigen::Index(r.num("m")));
    for (Eigen::Index i = 0; i < probs.size(); ++i) probs[i] = preftest::u(seed + 9, std::size_t(i));
    if (r.opt_num("udm", 0) != 0) o.rejected_desirable_prob = probs;
    const auto res = losskit::bco(x.pc, x.pr, x.rc, x.rr, running, o);
    preftest::check_outputs(res, r, 1e-13, 1e-13);
    preftest::check_close(res.reference_point, r.scalar("reference_point"), 1e-14, "delta");
    CHECK(res.reference_point == running.mean());
    preftest::check_close(running.count(), r.scalar("running_count"), 1e-15, "count");
    preftest::check_close(running.var(), r.scalar("running_var"), 1e-13, "var");
    preftest::check_close(running.std(), r.scalar("running_std"), 1e-13, "std");
  }
}

TEST_CASE("bco: logistic regression matches scikit-learn (class_weight balanced, C = 1)", "[bco][logreg][reference]") {
  const auto recs = preftest::records_of("logreg");
  REQUIRE(recs.size() >= 3);
  for (const auto& r : recs) {
    INFO(r.describe());
    const auto n = Eigen::Index(r.num("n")), m = Eigen::Index(r.num("m")), d = Eigen::Index(r.num("d"));
    const auto seed = std::uint64_t(r.num("seed"));
    Eigen::MatrixXd xc(n, d), xr(m, d);
    for (Eigen::Index j = 0; j < d; ++j) {
      const double mu = 0.5 * (2.0 * preftest::u(seed + 1, std::size_t(j)) - 1.0);
      for (Eigen::Index i = 0; i < n; ++i) xc(i, j) = (2.0 * preftest::u(seed, std::size_t(i * d + j)) - 1.0) + mu;
      for (Eigen::Index i = 0; i < m; ++i) xr(i, j) = 2.0 * preftest::u(seed + 2, std::size_t(i * d + j)) - 1.0;
    }
    const auto clf = losskit::fit_udm_classifier(xc, xr);
    CHECK(clf.converged());
    CHECK(clf.iterations() <= 15);
    // sklearn's newton-cg stops with a gradient of ~1e-8 (ours ends near 1e-14): agreement to ~1e-8.
    preftest::check_close(clf.coef(), r.vec("coef"), 1e-8, "coef vs sklearn newton-cg (tight)");
    preftest::check_close(clf.intercept(), r.scalar("intercept"), 1e-8, "intercept");
    Eigen::MatrixXd all(n + m, d);
    all << xc, xr;
    preftest::check_close(clf.predict_proba(all), r.vec("proba"), 1e-8, "predict_proba");
    // sklearn's defaults (lbfgs, tol 1e-4), which TRL uses, land within ~1e-4 of the optimum.
    preftest::check_close(clf.coef(), r.vec("coef_default"), 2e-3, "coef vs sklearn defaults");
  }
}

TEST_CASE("bco: logistic regression optimality and options", "[bco][logreg]") {
  Eigen::MatrixXd x(6, 2);
  x << 0.1, 1.0, -0.3, 0.2, 0.8, -0.5, 1.2, 0.4, -1.0, -0.7, 0.0, 0.9;
  const std::vector<int> y{1, 0, 1, 1, 0, 0};
  losskit::LogisticRegressionOptions o;
  o.balanced_class_weight = false;
  o.C = 0.5;
  losskit::LogisticRegression clf;
  clf.fit(x, y, o);
  // gradient of sum_i [sp(z_i) - y_i z_i] + |w|^2 / (2C) vanishes at the solution
  const VectorXd p = clf.predict_proba(x);
  VectorXd resid(6);
  for (int i = 0; i < 6; ++i) resid[i] = p[i] - y[std::size_t(i)];
  const VectorXd gw = x.transpose() * resid + clf.coef() / 0.5;
  CHECK(gw.cwiseAbs().maxCoeff() <= 1e-10);
  CHECK(std::fabs(resid.sum()) <= 1e-10);
  o.fit_intercept = false;
  clf.fit(x.cast<float>(), y, o);
  CHECK(clf.intercept() == 0.0);
  using preftest::check_throws;
  const std::vector<int> one_class(6, 1);
  check_throws([&] { losskit::LogisticRegression().fit(x, one_class); }, {"LogisticRegression::fit", "both classes"});
  const std::vector<int> bad{1, 0, 2, 1, 0, 0};
  check_throws([&] { losskit::LogisticRegression().fit(x, bad); }, {"'labels' must be 0 or 1, got 2 at index 2"});
  const std::vector<int> short_y{1, 0};
  check_throws([&] { losskit::LogisticRegression().fit(x, short_y); }, {"'labels' has 2 entries, expected 6"});
  check_throws([&] { clf.predict_proba(Eigen::MatrixXd::Zero(2, 3)); }, {"'features' has 3 columns"});
}

TEST_CASE("bco: running mean follows TRL's RunningMoments; JSON round trip is exact", "[bco][state]") {
  BcoRunningMean run;
  CHECK(run.mean() == 0.0);
  CHECK(run.count() == 1e-24);
  VectorXd a(3), b(2);
  a << 0.3, -0.1, 0.7;
  b << 1.5, -2.25;
  run.update(a);
  run.update(b);
  CHECK_THAT(run.mean(), Catch::Matchers::WithinRel((0.3 - 0.1 + 0.7 + 1.5 - 2.25) / 5, 1e-14));
  CHECK_THAT(run.count(), Catch::Matchers::WithinRel(5.0, 1e-15));
  // the population variance of all five rewards (the 1e-24 initial count weighs nothing)
  VectorXd all(5);
  all << a, b;
  const double var = (all.array() - all.mean()).square().mean();
  CHECK_THAT(run.var(), Catch::Matchers::WithinRel(var, 1e-13));
  CHECK_THAT(run.std(), Catch::Matchers::WithinRel(std::sqrt(var * 5 / 4), 1e-13));
  run.update(VectorXd(0));  // no-op
  CHECK_THAT(run.count(), Catch::Matchers::WithinRel(5.0, 1e-15));
  const std::string json = run.to_json();
  const BcoRunningMean back = BcoRunningMean::from_json(json);
  CHECK(back.mean() == run.mean());
  CHECK(back.var() == run.var());
  CHECK(back.std() == run.std());
  CHECK(back.count() == run.count());
  CHECK(back.to_json() == json);
  BcoRunningMean restored;
  restored.restore(run.state());
  CHECK(restored.mean() == run.mean());
  // TRL's own file (python json.dumps, indent 2, sorted keys), including its first-update inf std
  const auto trl = BcoRunningMean::from_json(
      "{\n  \"count\": 1.0,\n  \"mean\": 0.123456789012345,\n  \"std\": Infinity,\n  \"var\": 1e-24\n}\n");
  CHECK(trl.mean() == 0.123456789012345);
  CHECK(std::isinf(trl.std()));
  CHECK(trl.var() == 1e-24);
  preftest::check_throws([] { BcoRunningMean::from_json("{\"mean\": 1}"); }, {"from_json", "'count' is missing"});
}

TEST_CASE("bco: hand-checked loss, UDM weights, gradient", "[bco]") {
  VectorXd pc(1), rc(1), pr(2), rr(2);
  pc << -3;
  rc << -5;  // r = 0.2
  pr << -4, -6;
  rr << -4, -3;  // r = 0, -0.3
  BcoOptions o;
  std::vector<double> p{0.9, 0.2};
  o.rejected_desirable_prob = p;
  const auto r = losskit::bco(pc, pr, rc, rr, 0.05, o);
  const double w0 = std::min(10.0, 0.9 / (0.1 + 1e-8)), w1 = std::max(0.5, 0.2 / (0.8 + 1e-8));
  auto sp = [](double v) { return std::log1p(std::exp(v)); };
  const double want = (sp(-(0.2 - 0.05)) + w0 * sp(0.0 - 0.05) + w1 * sp(-0.3 - 0.05)) / 3;
  CHECK_THAT(r.value, Catch::Matchers::WithinRel(want, 1e-14));
  CHECK(w1 == 0.5);
  const VectorXd w = losskit::bco_udm_weights(p);
  CHECK_THAT(w[0], Catch::Matchers::WithinRel(w0, 1e-15));
  CHECK(w[1] == 0.5);
  std::vector<double> sure{1.0};
  CHECK(losskit::bco_udm_weights(sure)[0] == 10.0);  // p = 1: clamped at the max ratio
  CHECK_THAT(r.d_policy_rejected[0], Catch::Matchers::WithinRel(w0 * 0.1 / (1 + std::exp(0.05)) / 3, 1e-14));
}

TEST_CASE("bco: central finite differences (delta and weights constant)", "[bco][fd]") {
  const VectorXd pc = preftest::seq(1, preftest::lengths(2, 5, 20), -2, -0.1);
  const VectorXd pr = preftest::seq(3, preftest::lengths(4, 6, 20), -2, -0.1);
  const VectorXd rc = preftest::near(5, pc, 15), rr = preftest::near(6, pr, 15);
  std::vector<double> p{0.1, 0.5, 0.7, 0.95, 0.99, 0.3};
  for (bool udm : {false, true}) {
    BcoOptions o;
    o.beta = 0.4;
    if (udm) o.rejected_desirable_prob = p;
    const auto r = losskit::bco(pc, pr, rc, rr, 0.3, o);
    preftest::check_fd([&](const std::vector<VectorXd>& x) { return losskit::bco(x[0], x[1], rc, rr, 0.3, o).value; },
                       {pc, pr}, {r.d_policy_chosen, r.d_policy_rejected});
  }
}

TEST_CASE("bco: extreme rewards, errors, and a failed call leaves the state alone", "[bco][errors]") {
  VectorXd pc(1), pr(1), z = VectorXd::Zero(1);
  pc << 1e5;
  pr << -1e5;
  const auto r = losskit::bco(pc, pr, z, z, 0.0);
  CHECK(std::isfinite(r.value));
  CHECK(r.d_policy_chosen.allFinite());
  BcoRunningMean run;
  run.update(VectorXd::Constant(2, 0.5));
  const auto before = run.state();
  BcoOptions o;
  std::vector<double> p{0.5, 0.5};  // wrong size
  o.rejected_desirable_prob = p;
  using preftest::check_throws;
  check_throws([&] { losskit::bco(pc, pr, z, z, run, o); },
               {"losskit::bco", "'rejected_desirable_prob' has 2 entries, expected 1"});
  CHECK(run.mean() == before.mean);
  CHECK(run.count() == before.count);
  std::vector<double> bad{1.5};
  o.rejected_desirable_prob = bad;
  check_throws([&] { losskit::bco(pc, pr, z, z, run, o); }, {"probabilities must be in [0, 1], got 1.5"});
  check_throws([&] { losskit::bco(pc, pr, z, z, std::nan("")); }, {"'delta' must be finite"});
  o = {};
  o.update_running_mean = false;  // evaluation: delta = the current mean, state unchanged
  const auto ev = losskit::bco(pc, pr, z, z, run, o);
  CHECK(ev.reference_point == before.mean);
  CHECK(run.count() == before.count);
}
