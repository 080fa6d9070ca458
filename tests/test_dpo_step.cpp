// dpo_step and sequence_pair_step: the fused, pair-pipelined forward + loss + backward from
// logits, against the three unfused calls it replaces (sequence_logprobs, dpo,
// sequence_logprobs_backward), bit for bit; central differences through dpo_step itself; the
// rows the pipeline carries over between pairs of different lengths and the rows it writes last;
// argument errors.

#include <losskit/losskit.hpp>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "test_support.hpp"

namespace {

using Eigen::VectorXd;
using losskit::DpoLoss;
using losskit::DpoOptions;
using losskit::SequenceLayout;
using losskit::SequenceLogprobOptions;

constexpr std::int64_t kIgnore = -100;

// P chosen then P rejected sequences of the given lengths; the first `prompt` rows of each
// masked (weight 0), one row of the first rejected sequence at ignore_index, one row weighted 0.5.
template <class T>
struct Batch {
  std::int64_t P = 0;
  SequenceLayout layout;
  std::vector<std::int64_t> targets;
  std::vector<double> mask;
  losskit::RowMatrix<T> policy, reference;
};

template <class T>
Batch<T> make_batch(Eigen::Index vocab, const std::vector<std::int64_t>& lengths, std::int64_t prompt,
                    std::uint32_t seed, double scale = 3.0) {
  Batch<T> b;
  b.P = std::int64_t(lengths.size()) / 2;
  std::vector<std::int64_t> offsets{0};
  for (std::int64_t n : lengths) offsets.push_back(offsets.back() + n);
  const std::int64_t rows = offsets.back();
  b.layout = SequenceLayout::offsets(offsets);
  b.mask.assign(std::size_t(rows), 1.0);
  b.targets.resize(std::size_t(rows));
  for (std::size_t q = 0; q + 1 < offsets.size(); ++q)
    for (std::int64_t r = offsets[q]; r < offsets[q + 1]; ++r) {
      b.targets[std::size_t(r)] = (r * 7919 + std::int64_t(seed)) % vocab;
      if (r - offsets[q] < prompt) b.mask[std::size_t(r)] = 0.0;
    }
  b.targets[std::size_t(offsets[std::size_t(b.P) + 1] - 1)] = kIgnore;
  b.mask[std::size_t(offsets[1] - 1)] = 0.5;
  b.policy = lktest::random_logits<T>(rows, vocab, seed, scale);
  b.reference = lktest::random_logits<T>(rows, vocab, seed + 1000u, scale);
  return b;
}

// The unfused path dpo_step replaces: forward (policy and reference in one call), dpo, backward.
template <class T>
losskit::PreferenceResult unfused(const Batch<T>& b, const losskit::RowMatrix<T>& policy, losskit::RowMatrix<T>& grad,
                                  const DpoOptions& d, const SequenceLogprobOptions& o, losskit::SequenceLogprobs* fwd) {
  const auto f = losskit::sequence_logprobs(policy, b.reference, b.targets, b.layout, o);
  const auto r = losskit::dpo(f.sum.head(b.P), f.sum.tail(b.P), f.ref_sum.head(b.P), f.ref_sum.tail(b.P), d);
  VectorXd up(2 * b.P);
  up << r.d_policy_chosen, r.d_policy_rejected;
  losskit::sequence_logprobs_backward(policy, b.targets, b.layout, up, grad, o, f);
  if (fwd) *fwd = f;
  return r;
}

// Exact equality of two matrices (NaN never appears here).
template <class M>
void check_same_bits(const M& a, const M& b) {
  REQUIRE(a.rows() == b.rows());
  REQUIRE(a.cols() == b.cols());
  Eigen::Index diff = 0, first = -1;
  for (Eigen::Index i = 0; i < a.size(); ++i)
    if (a.data()[i] != b.data()[i]) {
      if (first < 0) first = i;
      ++diff;
    }
  CAPTURE(first, diff);
  CHECK(diff == 0);
}

template <class T>
void check_against_unfused(const Batch<T>& b, const DpoOptions& d, SequenceLogprobOptions o, int threads, bool in_place) {
  o.loss_mask = b.mask;
  o.threads = threads;
  CAPTURE(threads, in_place, o.temperature, b.policy.rows(), b.policy.cols());
  losskit::RowMatrix<T> g_ref(b.policy.rows(), b.policy.cols());
  losskit::SequenceLogprobs f;
  const auto r = unfused(b, b.policy, g_ref, d, o, &f);

  losskit::RowMatrix<T> x = b.policy, g(b.policy.rows(), b.policy.cols());
  g.setConstant(T(7));  // every entry must be written
  losskit::RowMatrix<T>& out = in_place ? x : g;
  const auto s = losskit::dpo_step(x, b.reference, b.targets, b.layout, out, d, o);
  check_same_bits(out, g_ref);
  CHECK(s.loss.value == r.value);
  CHECK(s.loss.d_policy_chosen == r.d_policy_chosen);
  CHECK(s.loss.d_policy_rejected == r.d_policy_rejected);
  CHECK(s.loss.margins == r.margins);
  CHECK(s.loss.accuracy == r.accuracy);
  CHECK(s.logprobs.sum == f.sum);
  CHECK(s.logprobs.ref_sum == f.ref_sum);
  CHECK(s.logprobs.tokens == f.tokens);
  CHECK(s.logprobs.mean == f.mean);
  CHECK(s.logprobs.lse.cwiseEqual(f.lse).count() + s.logprobs.lse.array().isNaN().count() == f.lse.size());
  // a real gradient, not a vacuous comparison
  CHECK(g_ref.cwiseAbs().maxCoeff() > T(0));
}

}  // namespace

TEMPLATE_TEST_CASE("dpo_step: the same bits as sequence_logprobs + dpo + sequence_logprobs_backward",
                   "[dpo_step]", float, double) {
  using T = TestType;
  // Pairs of different lengths (the pipeline carries rows of a longer pair into the next pair's
  // forward rows and writes the last pair's rows as passes of their own); widths not a multiple
  // of the SIMD width.
  const auto b = make_batch<T>(1003, {6, 3, 9, 2, 7, 5, 2, 8}, 1, 11u);
  DpoOptions d;
  SequenceLogprobOptions o;
  for (int threads : {1, 2})
    for (bool in_place : {false, true}) check_against_unfused(b, d, o, threads, in_place);

  SECTION("temperature != 1") {
    o.temperature = 0.7;
    check_against_unfused(b, d, o, 1, false);
  }
  SECTION("several loss types with weights, rpo_eta, sum reduction and grad_scale") {
    d.loss_types = {DpoLoss::sigmoid, DpoLoss::ipo, DpoLoss::hinge, DpoLoss::discopop};
    d.loss_weights = {1.0, 0.25, 0.5, 2.0};
    d.rpo_eta = 0.3;
    const std::vector<double> nc{3.5, 1.0, 3.0, 1.0}, nr{4.0, 3.0, 5.0, 6.0};
    d.chosen_lengths = nc;
    d.rejected_lengths = nr;
    d.reduction = losskit::Reduction::sum;
    d.grad_scale = 0.5;
    check_against_unfused(b, d, o, 2, false);
  }
  SECTION("the token-mean NLL (sft, rpo_alpha): per pair, with the batch's pairs and chosen tokens") {
    d.loss_types = {DpoLoss::sigmoid, DpoLoss::sft};
    d.loss_weights = {1.0, 0.5};
    d.rpo_alpha = 0.25;
    const std::vector<double> nc{5.0, 0.0, 8.0, 1.5};  // one chosen length 0: the batch's sum counts
    d.chosen_lengths = nc;
    check_against_unfused(b, d, o, 1, false);
    check_against_unfused(b, d, o, 2, true);
  }
  SECTION("robust with label smoothing, a normalizer") {
    d.loss_types = {DpoLoss::robust};
    d.label_smoothing = 0.1;
    d.normalizer = 3.0;
    check_against_unfused(b, d, o, 1, true);
  }
  SECTION("a pair whose loss is flat (hinge past its margin): zero rows, not read") {
    d.loss_types = {DpoLoss::hinge};
    d.beta = 1e-6;  // h ~ 0 < 1: every pair has d/dh = -1
    check_against_unfused(b, d, o, 1, false);
    d.beta = 1e6;  // |h| large: some pairs have h >= 1 and a zero gradient
    check_against_unfused(b, d, o, 1, false);
  }
}

TEST_CASE("dpo_step: large rows with non-temporal stores, one and two threads", "[dpo_step]") {
  // 2 x 36 rows x 32000 floats = 9.2 MB of gradient: streamed (non-temporal) stores.
  auto b = make_batch<float>(32000, {12, 8, 10, 6, 9, 7, 5, 5}, 1, 23u, 4.0);
  // Rows whose later chunks climb far above the earlier ones (chunks redone against the new
  // maximum), in the policy only, the reference only, and both.
  for (Eigen::Index r = 3; r < b.policy.rows(); r += 5)
    for (Eigen::Index c = 0; c < b.policy.cols(); ++c) {
      const float ramp = 6.0f * float(c / 2048);
      if (r % 3 != 1) b.policy(r, c) += ramp;
      if (r % 3 != 2) b.reference(r, c) += 0.5f * ramp;
    }
  const DpoOptions d;
  for (int threads : {1, 2})
    for (bool in_place : {false, true}) check_against_unfused(b, d, SequenceLogprobOptions{}, threads, in_place);
}

TEST_CASE("dpo_step: central differences w.r.t. the policy logits", "[dpo_step][fd]") {
  const auto b = make_batch<double>(13, {4, 3, 5, 3, 3, 4}, 1, 5u);
  for (const DpoLoss t : {DpoLoss::sigmoid, DpoLoss::ipo, DpoLoss::apo_zero}) {
    DpoOptions d;
    d.loss_types = {t};
    const std::vector<double> nc{3.0, 2.0, 4.0}, nr{1.0, 2.0, 3.0};
    if (t == DpoLoss::ipo) {
      d.chosen_lengths = nc;
      d.rejected_lengths = nr;
    }
    SequenceLogprobOptions o;
    o.loss_mask = b.mask;
    CAPTURE(losskit::dpo_loss_name(t));
    lktest::check_gradient_fd(
        [&](const losskit::RowMatrix<double>& x, losskit::RowMatrix<double>* g) {
          losskit::RowMatrix<double> scratch(x.rows(), x.cols());
          return losskit::dpo_step(x, b.reference, b.targets, b.layout, g ? *g : scratch, d, o).loss.value;
        },
        b.policy, 1e-6, 1e-5);
  }
}

TEST_CASE("sequence_pair_step: a reference-free pair loss, the callback's view of each pair", "[dpo_step]") {
  const auto b = make_batch<float>(517, {5, 4, 2, 6, 3, 3}, 1, 31u);
  SequenceLogprobOptions o;
  o.loss_mask = b.mask;
  o.per_token = true;
  o.entropy = true;
  // SimPO-like: -log sigmoid(beta (mean_w - mean_l) - gamma) per pair, mean over the 3 pairs.
  const double beta = 2.0, gamma = 0.5;
  auto loss = [&](double pw, double pl, double nw, double nl) {
    const double h = beta * (pw / nw - pl / nl) - gamma;
    return losskit::detail::sigmoid(-h);  // -dL/dh
  };
  std::vector<std::int64_t> seen;
  auto pair_grad = [&](const losskit::PairLogprobs& s) {
    seen.push_back(s.pair);
    CHECK(s.ref_chosen == 0.0);
    const double c = loss(s.chosen, s.rejected, s.chosen_tokens, s.rejected_tokens) / 3.0;
    return losskit::PairUpstream{-beta * c / s.chosen_tokens, beta * c / s.rejected_tokens};
  };
  losskit::RowMatrix<float> g(b.policy.rows(), b.policy.cols());
  const auto s = losskit::sequence_pair_step(b.policy, b.targets, b.layout, pair_grad, g, o);
  CHECK(seen == std::vector<std::int64_t>{0, 1, 2});

  const auto f = losskit::sequence_logprobs(b.policy, b.targets, b.layout, o);
  CHECK(s.sum == f.sum);
  CHECK(s.tokens == f.tokens);
  CHECK(s.token_logp == f.token_logp);
  CHECK(s.token_entropy == f.token_entropy);
  CHECK(s.ref_sum.size() == 0);
  VectorXd up(6);
  for (int p = 0; p < 3; ++p) {
    const double c = loss(f.sum[p], f.sum[3 + p], f.tokens[p], f.tokens[3 + p]) / 3.0;
    up[p] = -beta * c / f.tokens[p];
    up[3 + p] = beta * c / f.tokens[3 + p];
  }
  losskit::RowMatrix<float> g_ref(g.rows(), g.cols());
  losskit::sequence_logprobs_backward(b.policy, b.targets, b.layout, up, g_ref, o, f);
  check_same_bits(g, g_ref);
}

TEST_CASE("dpo_step: argument errors name the function and argument; the gradient is untouched", "[dpo_step]") {
  const auto b = make_batch<float>(17, {3, 2, 4, 3}, 0, 3u);
  losskit::RowMatrix<float> g = losskit::RowMatrix<float>::Constant(b.policy.rows(), b.policy.cols(), 5.0f);
  const losskit::RowMatrix<float> g0 = g;
  auto step = [&](const DpoOptions& d, const SequenceLayout& layout) {
    return lktest::invalid_argument_of([&] { losskit::dpo_step(b.policy, b.reference, b.targets, layout, g, d); });
  };
  DpoOptions d;
  for (const DpoLoss t : {DpoLoss::aot, DpoLoss::aot_unpaired}) {
    d.loss_types = {DpoLoss::sigmoid, t};
    const std::string msg = step(d, b.layout);
    CAPTURE(msg);
    CHECK(msg.find("dpo_step") != std::string::npos);
    CHECK(msg.find(std::string("'") + losskit::dpo_loss_name(t) + "'") != std::string::npos);
  }
  d = DpoOptions{};
  d.rpo_alpha = 1.0;  // the NLL needs the chosen lengths
  CHECK(step(d, b.layout).find("'chosen_lengths'") != std::string::npos);
  const std::vector<double> zero{0.0, 0.0};
  d.chosen_lengths = zero;
  CHECK(step(d, b.layout).find("'chosen_lengths' sums to 0") != std::string::npos);
  d = DpoOptions{};
  d.loss_types = {DpoLoss::ipo};  // needs lengths
  CHECK(step(d, b.layout).find("'chosen_lengths'") != std::string::npos);
  d = DpoOptions{};
  d.beta = -1.0;
  CHECK(step(d, b.layout).find("dpo_step") != std::string::npos);
  // 3 sequences: not P chosen + P rejected
  const auto odd = SequenceLayout::offsets({0, 3, 5, 12});
  CHECK(step(DpoOptions{}, odd).find("'layout' has 3 sequences") != std::string::npos);
  // a fixed layout with the wrong number of rows
  CHECK(step(DpoOptions{}, SequenceLayout::fixed(2, 3)).find("'layout'") != std::string::npos);
  check_same_bits(g, g0);
}
