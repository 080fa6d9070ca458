#include <losskit/losskit.hpp>

#include <cmath>
#include <vector>

#include "preference_test_support.hpp"

using losskit::SparsePoOptions;
using preftest::VectorXd;

namespace {

// gen_preference_refs.py sparse_inputs
struct Tokens {
  std::vector<double> offsets;
  VectorXd pol, ref, kl, mu, md;
};
Tokens tokens_of(const preftest::Record& r) {
  const auto b = Eigen::Index(r.num("n")), s = Eigen::Index(r.num("seed"));
  const double maxlen = r.num("maxlen");
  VectorXd lens(2 * b);
  if (r.head.count("zero_len") && r.head.at("zero_len") == "True") {
    for (Eigen::Index i = 0; i < 2 * b; ++i) lens[i] = std::floor((maxlen + 1) * preftest::u(std::uint64_t(s), std::size_t(i)));
  } else {
    lens = preftest::lengths(std::uint64_t(s), 2 * b, maxlen);
  }
  Tokens t;
  t.offsets.push_back(0.0);
  for (Eigen::Index i = 0; i < lens.size(); ++i) t.offsets.push_back(t.offsets.back() + lens[i]);
  const auto n = Eigen::Index(t.offsets.back());
  t.pol.resize(n);
  t.kl.resize(n);
  t.mu.resize(n);
  t.md.resize(n);
  for (Eigen::Index i = 0; i < n; ++i) {
    t.pol[i] = double(float(-3.0 * preftest::u(std::uint64_t(s + 1), std::size_t(i))));
    t.kl[i] = double(float(-0.2 * preftest::u(std::uint64_t(s + 3), std::size_t(i))));
    t.mu[i] = std::floor(8.0 * preftest::u(std::uint64_t(s + 4), std::size_t(i))) / 4.0;
    t.md[i] = std::floor(8.0 * preftest::u(std::uint64_t(s + 5), std::size_t(i))) / 4.0;
  }
  t.ref = preftest::near(std::uint64_t(s + 2), t.pol, 0.5);
  return t;
}

}  // namespace

TEST_CASE("sparse_po: PyTorch float64 reference (SparsePO trainer on padded batches)", "[sparse_po][reference]") {
  const auto recs = preftest::records_of("sparse_po");
  REQUIRE(recs.size() >= 5);
  for (const auto& r : recs) {
    INFO(r.describe());
    const Tokens t = tokens_of(r);
    SparsePoOptions o;
    o.beta = r.opt_num("beta", 0.1);
    o.l1_norm_param_u = r.opt_num("l1_norm_param_u", 0.0);
    o.l1_norm_param_d = r.opt_num("l1_norm_param_d", 0.0);
    o.shared_mask = r.opt_num("shared_mask", 0) != 0;
    if (r.opt_num("masks", 1) != 0) {
      o.reward_mask = t.mu;
      if (!o.shared_mask) o.kl_mask = t.md;
    }
    const auto res = losskit::sparse_po(t.pol, t.ref, t.kl, t.offsets, o);
    preftest::check_close(res.value, r.scalar("value"), 1e-13, "value");
    preftest::check_close(res.per_row, r.vec("per_row"), 1e-13, "per_row");
    preftest::check_close(res.d_policy_logps, r.vec("d_policy"), 1e-13, "d_policy");
    preftest::check_close(res.d_token_kl, r.vec("d_kl"), 1e-13, "d_kl");
    preftest::check_close(res.d_reward_mask, r.vec("d_mu"), 1e-13, "d_mu");
    if (!o.shared_mask) preftest::check_close(res.d_kl_mask, r.vec("d_md"), 1e-13, "d_md");
    CHECK(res.d_kl_mask.size() == (o.shared_mask ? 0 : t.pol.size()));
    preftest::check_close(res.u, r.vec("u"), 1e-13, "u");
    preftest::check_close(res.d, r.vec("d"), 1e-13, "d");
    preftest::check_close(res.chosen_rewards, r.vec("chosen_rewards"), 1e-13, "chosen_rewards");
    preftest::check_close(res.rejected_rewards, r.vec("rejected_rewards"), 1e-13, "rejected_rewards");
    CHECK(res.accuracy == r.scalar("accuracy"));
  }
}

TEST_CASE("sparse_po: all-ones masks reduce to DPO on sums with the KL margin", "[sparse_po]") {
  // 2 pairs; chosen 0 = tokens 0-1, chosen 1 = 2, rejected 0 = 3-5, rejected 1 = 6-7
  const std::vector<std::int64_t> off{0, 2, 3, 6, 8};
  VectorXd pol(8), ref(8), kl(8);
  pol << -1, -2, -0.5, -3, -1, -1, -2, -0.25;
  ref << -1.5, -1.5, -1, -2, -1, -2, -1, -0.5;
  kl << -0.1, -0.2, 0, -0.05, -0.3, 0, -0.1, -0.1;
  const auto r = losskit::sparse_po(pol, ref, kl, off);
  const double u0 = (0.5 - 0.5) - (-1 + 0 + 1), d0 = (-0.3) - (-0.35);
  const double u1 = 0.5 - (-1 + 0.25), d1 = 0.0 - (-0.2);
  auto sp = [](double v) { return std::log1p(std::exp(v)); };
  CHECK_THAT(r.value, Catch::Matchers::WithinRel((sp(-0.1 * (u0 - d0)) + sp(-0.1 * (u1 - d1))) / 2, 1e-14));
  CHECK_THAT(r.u[1], Catch::Matchers::WithinRel(u1, 1e-15));
  CHECK_THAT(r.d[0], Catch::Matchers::WithinRel(d0, 1e-14));
  // token gradients: chosen -beta S / 2, rejected +beta S / 2; the same as dpo's on the sums when d = 0
  const double s0 = 1 / (1 + std::exp(0.1 * (u0 - d0)));
  CHECK_THAT(r.d_policy_logps[0], Catch::Matchers::WithinRel(-0.1 * s0 / 2, 1e-14));
  CHECK_THAT(r.d_policy_logps[4], Catch::Matchers::WithinRel(0.1 * s0 / 2, 1e-14));
  CHECK_THAT(r.d_token_kl[1], Catch::Matchers::WithinRel(0.1 * s0 / 2, 1e-14));
  CHECK_THAT(r.d_token_kl[5], Catch::Matchers::WithinRel(-0.1 * s0 / 2, 1e-14));
  // rewards as the SparsePO trainer logs them: beta (masked reward + masked KL term)
  CHECK_THAT(r.chosen_rewards[0], Catch::Matchers::WithinRel(0.1 * (0.0 - 0.3), 1e-14));
  SECTION("tokens outside the offsets get zero gradient") {
    const std::vector<std::int64_t> inner{1, 2, 3, 6, 7};  // skips token 0 and token 7
    const auto q = losskit::sparse_po(pol, ref, kl, inner);
    CHECK(q.d_policy_logps[0] == 0.0);
    CHECK(q.d_policy_logps[7] == 0.0);
    CHECK(q.d_reward_mask[7] == 0.0);
    CHECK(q.d_policy_logps[1] != 0.0);
  }
}

TEST_CASE("sparse_po: central finite differences w.r.t. token log-probs, KL terms and masks", "[sparse_po][fd]") {
  const std::vector<std::int64_t> off{0, 3, 4, 4, 7, 9, 12};  // 3 pairs; chosen 2 is empty
  const Eigen::Index n = 12;
  VectorXd pol(n), ref(n), kl(n), mu(n), md(n);
  for (Eigen::Index i = 0; i < n; ++i) {
    pol[i] = -3.0 * preftest::u(11, std::size_t(i));
    ref[i] = pol[i] + 2.0 * preftest::u(12, std::size_t(i)) - 1.0;
    kl[i] = -0.5 * preftest::u(13, std::size_t(i));
    mu[i] = 0.1 + 1.5 * preftest::u(14, std::size_t(i));
    md[i] = 0.1 + 1.5 * preftest::u(15, std::size_t(i));
  }
  for (int variant = 0; variant < 3; ++variant) {
    SparsePoOptions o;
    o.beta = variant == 0 ? 0.1 : 0.9;
    o.l1_norm_param_u = 0.01;
    o.l1_norm_param_d = 0.02;
    o.shared_mask = variant == 2;
    if (variant == 1) o.reduction = losskit::Reduction::sum;
    auto f = [&](const std::vector<VectorXd>& x) {
      SparsePoOptions q = o;
      q.reward_mask = x[2];
      if (!o.shared_mask) q.kl_mask = x[3];
      return losskit::sparse_po(x[0], ref, x[1], off, q).value;
    };
    SparsePoOptions q = o;
    q.reward_mask = mu;
    if (!o.shared_mask) q.kl_mask = md;
    const auto r = losskit::sparse_po(pol, ref, kl, off, q);
    CAPTURE(variant);
    if (o.shared_mask)
      preftest::check_fd(f, {pol, kl, mu}, {r.d_policy_logps, r.d_token_kl, r.d_reward_mask});
    else
      preftest::check_fd(f, {pol, kl, mu, md}, {r.d_policy_logps, r.d_token_kl, r.d_reward_mask, r.d_kl_mask});
  }
}

TEST_CASE("sparse_po: extreme margins and errors", "[sparse_po][errors]") {
  const std::vector<std::int64_t> off{0, 1, 2};
  VectorXd pol(2), ref = VectorXd::Zero(2), kl = VectorXd::Zero(2);
  pol << 1e5, -1e5;
  const auto r = losskit::sparse_po(pol, ref, kl, off);
  CHECK(r.value == 0.0);
  CHECK(r.d_policy_logps.allFinite());
  pol << -1e5, 1e5;
  const auto q = losskit::sparse_po(pol, ref, kl, off);
  CHECK(q.value == 2e4);
  using preftest::check_throws;
  check_throws([&] { losskit::sparse_po(pol, ref.head(1), kl, off); }, {"losskit::sparse_po", "'reference_logps' has 1 entries"});
  const std::vector<std::int64_t> even{0, 1};
  check_throws([&] { losskit::sparse_po(pol, ref, kl, even); }, {"'sequence_offsets' has 2 entries, expected 2 B + 1"});
  const std::vector<std::int64_t> down{0, 2, 1};
  check_throws([&] { losskit::sparse_po(pol, ref, kl, down); }, {"must be non-decreasing"});
  const std::vector<std::int64_t> past{0, 1, 3};
  check_throws([&] { losskit::sparse_po(pol, ref, kl, past); }, {"integers in [0, 2]"});
  SparsePoOptions o;
  o.shared_mask = true;
  o.kl_mask = ref;
  check_throws([&] { losskit::sparse_po(pol, ref, kl, off, o); }, {"'kl_mask' must be empty with 'shared_mask'"});
  o = {};
  const VectorXd three = VectorXd::Ones(3);
  o.reward_mask = three;
  check_throws([&] { losskit::sparse_po(pol, ref, kl, off, o); }, {"'reward_mask' has 3 entries, expected 2"});
  o = {};
  o.l1_norm_param_d = -1;
  check_throws([&] { losskit::sparse_po(pol, ref, kl, off, o); }, {"must be finite and >= 0"});
}
