// The preference losses composed with the sequence log-prob kernel, end to end in double:
//   policy logits [rows, V] -> sequence_logprobs -> per-sequence summed log-probs (and token
//   counts) -> dpo / simpo / orpo / kto -> d value / d summed log-probs ->
//   sequence_logprobs_backward -> d value / d policy logits,
// checked against central differences of the whole function logits -> loss value (issue 4:
// "gradients w.r.t. policy logits by central finite differences through the sequence log-prob
// kernel"). Each piece has its own FD test (test_sequence_logprobs.cpp, test_dpo.cpp, ...); this
// file checks that they fit together: which vector goes where, the lengths the length-normalised
// losses take, masks, ignore_index and temperature on the way back.
//
// Layout: chosen then rejected completions stacked in one logits matrix (TRL's concatenated
// forward), sequences of different lengths, the first rows of each sequence are prompt rows with
// loss mask 0, and one completion row has the ignore_index target. Also: extreme margins through the
// composition, an all-masked completion (an error by default, sum 0 with allow_empty_sequences),
// and argument errors the per-loss tests do not cover.

#include <losskit/losskit.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "preference_test_support.hpp"
#include "test_support.hpp"

namespace {

using Eigen::VectorXd;
using losskit::DpoLoss;
using losskit::DpoOptions;
using losskit::SequenceLayout;
using losskit::SequenceLogprobOptions;
using Matrix = losskit::RowMatrix<double>;

constexpr std::int64_t kIgnore = -100;

// B_c chosen then B_r rejected sequences in one logits matrix, with a reference model's logits.
struct Batch {
  Eigen::Index chosen = 0, rejected = 0;
  SequenceLayout layout;
  std::vector<std::int64_t> targets;
  std::vector<double> mask;  // 0 on prompt rows
  Matrix policy, reference;
};

// rows[b] rows per sequence; the first `prompt` rows of each are masked out; the last row of the
// first rejected sequence has target ignore_index. Logits uniform in [-scale, scale].
Batch make_batch(Eigen::Index vocab, const std::vector<std::int64_t>& chosen_rows,
                 const std::vector<std::int64_t>& rejected_rows, std::int64_t prompt, std::uint32_t seed,
                 double scale = 3.0) {
  Batch b;
  b.chosen = Eigen::Index(chosen_rows.size());
  b.rejected = Eigen::Index(rejected_rows.size());
  std::vector<std::int64_t> offsets{0};
  for (const auto* part : {&chosen_rows, &rejected_rows})
    for (std::int64_t n : *part) offsets.push_back(offsets.back() + n);
  const std::int64_t rows = offsets.back();
  b.layout = SequenceLayout::offsets(offsets);
  b.targets.resize(std::size_t(rows));
  b.mask.assign(std::size_t(rows), 1.0);
  for (std::size_t q = 0; q + 1 < offsets.size(); ++q)
    for (std::int64_t r = offsets[q]; r < offsets[q + 1]; ++r) {
      const double u = preftest::u(seed, std::size_t(r));
      b.targets[std::size_t(r)] = std::min<std::int64_t>(vocab - 1, std::int64_t(double(vocab) * u));
      if (r - offsets[q] < prompt) b.mask[std::size_t(r)] = 0.0;
    }
  if (b.rejected > 0) b.targets[std::size_t(offsets[std::size_t(b.chosen) + 1] - 1)] = kIgnore;
  b.policy = lktest::random_logits<double>(rows, vocab, seed, scale);
  b.reference = lktest::random_logits<double>(rows, vocab, seed + 1000u, scale);
  return b;
}

bool counted(const Batch& b, Eigen::Index r) {
  return b.mask[std::size_t(r)] != 0.0 && b.targets[std::size_t(r)] != kIgnore;
}

// What the losses see: summed log-probs of the policy (pc, pr) and of the reference (rc, rr), and
// the completion token counts (nc, nr) that sequence_logprobs returns.
struct Seqs {
  VectorXd pc, pr, rc, rr, nc, nr;
};

// What the backward needs from a loss: its value and d value / d pc, d pr.
struct Grads {
  double value = 0.0;
  VectorXd dc, dr;
};
template <class Result>
Grads grads_of(const Result& r) {
  return {r.value, r.d_policy_chosen, r.d_policy_rejected};
}
using SeqLoss = std::function<Grads(const Seqs&)>;

// logits -> loss value, and (with g) the chained gradient w.r.t. the logits. The reference sums
// are constants, taken once by sequence_logprobs' reference overload.
struct Composed {
  const Batch& b;
  SequenceLogprobOptions o;
  SeqLoss loss;
  VectorXd ref_sum;
  bool reuse_forward = false;

  Composed(const Batch& batch, SequenceLogprobOptions opts, SeqLoss l) : b(batch), o(opts), loss(std::move(l)) {
    o.loss_mask = b.mask;
    ref_sum = losskit::sequence_logprobs(b.policy, b.reference, b.targets, b.layout, o).ref_sum;
  }

  Seqs seqs(const losskit::SequenceLogprobs& f) const {
    return {f.sum.head(b.chosen),   f.sum.tail(b.rejected),    ref_sum.head(b.chosen),
            ref_sum.tail(b.rejected), f.tokens.head(b.chosen), f.tokens.tail(b.rejected)};
  }
  Seqs seqs(const Matrix& x) const { return seqs(losskit::sequence_logprobs(x, b.targets, b.layout, o)); }

  double operator()(const Matrix& x, Matrix* g) const {
    const auto f = losskit::sequence_logprobs(x, b.targets, b.layout, o);
    const Grads r = loss(seqs(f));
    if (g) {
      VectorXd d(b.chosen + b.rejected);
      d << r.dc, r.dr;
      if (reuse_forward)
        losskit::sequence_logprobs_backward(x, b.targets, b.layout, d, *g, o, f);
      else
        losskit::sequence_logprobs_backward(x, b.targets, b.layout, d, *g, o);
    }
    return r.value;
  }
};

// Central differences of the composed function, with the backward recomputing the row statistics
// and reusing the forward's; the gradient is exactly 0 on rows that are not counted and not 0
// everywhere (a flat loss would pass vacuously). The step is 1e-4 (logits of size ~3): the
// default 1e-6 leaves a rounding error of about 1e-16 |value| / 3e-6 in each difference, which
// reaches the tolerance 1e-6 (relative, floor 1e-2) once |value| is ~100 (ipo: worst 1.9e-6 at
// step 1e-6, 1.9e-7 at 1e-5, 1.8e-8 at 1e-4, where the h^2 truncation error is still smaller).
void check_end_to_end(const Batch& b, const SequenceLogprobOptions& o, const SeqLoss& loss) {
  Composed c(b, o, loss);
  Matrix g(b.policy.rows(), b.policy.cols());
  const double value = c(b.policy, &g);
  for (Eigen::Index r = 0; r < g.rows(); ++r)
    if (!counted(b, r)) {
      CAPTURE(r);
      CHECK(g.row(r).cwiseAbs().maxCoeff() == 0.0);
    }
  CHECK(g.cwiseAbs().maxCoeff() > 1e-4);
  for (bool reuse : {false, true}) {
    CAPTURE(reuse, o.temperature, value);
    c.reuse_forward = reuse;
    lktest::check_gradient_fd(c, b.policy, 1e-6, 1e-4);
  }
}

// dpo on the sequences, with the token counts as the completion lengths (ipo, sigmoid_norm, sft,
// rpo_alpha use them).
SeqLoss dpo_loss(const DpoOptions& opts) {
  return [opts](const Seqs& s) {
    DpoOptions o = opts;
    o.chosen_lengths = s.nc;
    o.rejected_lengths = s.nr;
    return grads_of(losskit::dpo(s.pc, s.pr, s.rc, s.rr, o));
  };
}

// The reference-free losses take the token counts as the completion lengths.
SeqLoss simpo_loss(const losskit::SimpoOptions& so) {
  return [so](const Seqs& s) { return grads_of(losskit::simpo(s.pc, s.pr, s.nc, s.nr, so)); };
}
SeqLoss orpo_loss(const losskit::OrpoOptions& oo) {
  return [oo](const Seqs& s) { return grads_of(losskit::orpo(s.pc, s.pr, s.nc, s.nr, oo)); };
}
SeqLoss cpo_loss(const losskit::CpoOptions& co) {
  return [co](const Seqs& s) { return grads_of(losskit::cpo(s.pc, s.pr, s.nc, s.nr, co)); };
}
// kto: chosen = desirable, rejected = undesirable examples.
SeqLoss kto_loss(const losskit::KtoOptions& ko) {
  return [ko](const Seqs& s) { return grads_of(losskit::kto(s.pc, s.pr, s.rc, s.rr, ko)); };
}

// h = beta (D_w - D_l) of every pair at the batch's policy logits.
VectorXd margins(const Batch& b, const SequenceLogprobOptions& o, double beta) {
  const Composed c(b, o, {});
  const Seqs s = c.seqs(b.policy);
  return beta * ((s.pc - s.rc) - (s.pr - s.rr));
}

// Three pairs: chosen and rejected completions of different lengths, two prompt rows each.
Batch pairs(Eigen::Index vocab, std::uint32_t seed) { return make_batch(vocab, {6, 4, 9}, {5, 7, 3}, 2, seed); }

}  // namespace

TEST_CASE("end to end: dpo through sequence_logprobs, central differences w.r.t. the policy logits",
          "[preference][end_to_end][dpo][fd]") {
  const Eigen::Index vocab = GENERATE(17, 33);
  CAPTURE(vocab);
  const Batch b = pairs(vocab, 101u + std::uint32_t(vocab));
  const SequenceLogprobOptions o;

  SECTION("sigmoid, TRL defaults (beta 0.1, summed log-probs, mean over pairs)") {
    check_end_to_end(b, o, dpo_loss({}));
  }
  SECTION("sigmoid with conservative label smoothing (cDPO)") {
    DpoOptions d;
    d.conservative_sigmoid = true;
    d.label_smoothing = 0.2;
    d.beta = 0.5;
    check_end_to_end(b, o, dpo_loss(d));
  }
  SECTION("ipo on length-averaged log-probs (TRL), lengths = the kernel's token counts") {
    DpoOptions d;
    d.loss_types = {DpoLoss::ipo};
    d.beta = 0.3;
    // The value is the mean of (D_w / n_w - D_l / n_l - 1 / (2 beta))^2 with n the counted tokens.
    const Composed c(b, o, dpo_loss(d));
    const Seqs s = c.seqs(b.policy);
    CHECK(s.nc.minCoeff() >= 2.0);
    CHECK(s.nr[0] == 2.0);  // 5 rows - 2 prompt rows - 1 ignore_index row
    const VectorXd e = (s.pc - s.rc).cwiseQuotient(s.nc) - (s.pr - s.rr).cwiseQuotient(s.nr) -
                       VectorXd::Constant(b.chosen, 0.5 / d.beta);
    CHECK_THAT(c(b.policy, nullptr), Catch::Matchers::WithinRel(e.squaredNorm() / double(b.chosen), 1e-13));
    check_end_to_end(b, o, dpo_loss(d));
  }
  SECTION("hinge: pairs on both sides of the kink") {
    // beta puts h = 1 between the largest margin and the next one (or 0); the kink itself is not
    // differentiable.
    VectorXd m = margins(b, o, 1.0);
    std::sort(m.data(), m.data() + m.size());
    REQUIRE(m[m.size() - 1] > 0.0);
    DpoOptions d;
    d.loss_types = {DpoLoss::hinge};
    d.beta = 2.0 / (m[m.size() - 1] + std::max(0.0, m[m.size() - 2]));
    const VectorXd h = margins(b, o, d.beta);
    CAPTURE(h.transpose());
    REQUIRE((h.array() - 1.0).abs().minCoeff() > 1e-3);
    REQUIRE(h.maxCoeff() > 1.0);
    REQUIRE(h.minCoeff() < 1.0);
    check_end_to_end(b, o, dpo_loss(d));
  }
  SECTION("several loss types with weights in one call") {
    DpoOptions d;
    d.loss_types = {DpoLoss::sigmoid, DpoLoss::hinge, DpoLoss::ipo, DpoLoss::aot, DpoLoss::sigmoid_norm,
                    DpoLoss::discopop, DpoLoss::sft};
    d.loss_weights = {1.0, 0.3, 0.5, 0.7, -0.4, 0.6, 0.2};
    d.label_smoothing = 0.1;  // aot
    const VectorXd h = margins(b, o, d.beta);
    CAPTURE(h.transpose());
    REQUIRE((h.array() - 1.0).abs().minCoeff() > 1e-3);
    check_end_to_end(b, o, dpo_loss(d));
  }
  SECTION("RPO, TRL's form: + alpha * token-mean NLL of the chosen completions (rpo_alpha)") {
    DpoOptions d;
    d.rpo_alpha = 0.8;
    const Composed c(b, o, {});
    const Seqs s = c.seqs(b.policy);
    DpoOptions dl = d;
    dl.chosen_lengths = s.nc;
    const auto res = losskit::dpo(s.pc, s.pr, s.rc, s.rr, dl);
    CHECK_THAT(res.nll, Catch::Matchers::WithinRel(-s.pc.sum() / s.nc.sum(), 1e-14));
    check_end_to_end(b, o, dpo_loss(d));
  }
  SECTION("RPO, official form: - eta * beta * summed chosen log-prob (rpo_eta)") {
    DpoOptions d;
    d.rpo_eta = 0.5;
    d.beta = 0.2;
    check_end_to_end(b, o, dpo_loss(d));
  }
}

TEST_CASE("end to end: simpo and orpo through sequence_logprobs (averaged log-probs, NLL term)",
          "[preference][end_to_end][simpo][orpo][fd]") {
  const Eigen::Index vocab = GENERATE(17, 33);
  CAPTURE(vocab);
  const Batch b = pairs(vocab, 202u + std::uint32_t(vocab));
  const SequenceLogprobOptions o;
  SECTION("simpo, Liger / TRL defaults (cpo_alpha 1)") { check_end_to_end(b, o, simpo_loss({})); }
  SECTION("simpo, the paper's form (no NLL) with label smoothing") {
    losskit::SimpoOptions so;
    so.cpo_alpha = 0.0;
    so.beta = 2.5;
    so.gamma = 1.2;
    so.label_smoothing = 0.1;
    check_end_to_end(b, o, simpo_loss(so));
  }
  SECTION("orpo, TRL defaults (NLL included)") { check_end_to_end(b, o, orpo_loss({})); }
  SECTION("orpo without the NLL term") {
    losskit::OrpoOptions oo;
    oo.compute_nll_loss = false;
    oo.beta = 0.5;
    check_end_to_end(b, o, orpo_loss(oo));
  }
}

TEST_CASE("end to end: kto through sequence_logprobs, desirable and undesirable counts differ",
          "[preference][end_to_end][kto][fd]") {
  const Eigen::Index vocab = GENERATE(17, 33);
  CAPTURE(vocab);
  // Three desirable and two undesirable examples.
  const Batch b = make_batch(vocab, {6, 4, 9}, {5, 7}, 2, 303u + std::uint32_t(vocab));
  const SequenceLogprobOptions o;
  SECTION("z0 given by the caller, unequal weights") {
    losskit::KtoOptions ko;
    ko.z0 = 0.3;
    ko.beta = 0.4;
    ko.desirable_weight = 1.3;
    ko.undesirable_weight = 0.7;
    check_end_to_end(b, o, kto_loss(ko));
  }
  SECTION("z0 estimated from mismatched completions, detached") {
    // The mismatched completions' log-probs are constants here (TRL computes them without a
    // gradient): the policy's and the reference's summed log-probs of the batch at the start.
    const Composed c(b, o, {});
    const Seqs s = c.seqs(b.policy);
    VectorXd kp(5), kr(5);
    kp << s.pc, s.pr;
    kr << s.rc, s.rr;
    kr.array() -= 1.5;  // a positive mean difference: z0 is not clamped to 0
    losskit::KtoOptions ko;
    ko.kl_policy = kp;
    ko.kl_reference = kr;
    ko.beta = 0.4;
    const auto res = losskit::kto(s.pc, s.pr, s.rc, s.rr, ko);
    CHECK(res.reference_point > 0.0);
    check_end_to_end(b, o, kto_loss(ko));
  }
  SECTION("apo_zero_unpaired") {
    losskit::KtoOptions ko;
    ko.loss_type = losskit::KtoLoss::apo_zero_unpaired;
    ko.beta = 0.4;
    check_end_to_end(b, o, kto_loss(ko));
  }
}

TEST_CASE("end to end: temperature != 1 in sequence_logprobs", "[preference][end_to_end][fd]") {
  const double temperature = GENERATE(0.7, 2.0);
  const Batch b = pairs(33, 404u);
  SequenceLogprobOptions o;
  o.temperature = temperature;
  SECTION("dpo sigmoid") { check_end_to_end(b, o, dpo_loss({})); }
  SECTION("dpo ipo (averaged)") {
    DpoOptions d;
    d.loss_types = {DpoLoss::ipo};
    check_end_to_end(b, o, dpo_loss(d));
  }
  SECTION("simpo") {
    check_end_to_end(b, o, simpo_loss({}));
  }
}

TEST_CASE("end to end: a completion whose loss mask is all zero", "[preference][end_to_end][mask]") {
  Batch b = pairs(17, 505u);
  // Chosen sequence 1 (rows 6..9): every row masked.
  for (std::size_t r = 6; r < 10; ++r) b.mask[r] = 0.0;
  using preftest::check_throws;

  SECTION("rejected by sequence_logprobs (default), naming the sequence and its rows") {
    // Its sum would be 0 = log-prob 0 (probability 1): dpo on sums would give the pair a non-zero
    // loss and send gradient to rejected sequence 1 (the other sequence of the pair).
    SequenceLogprobOptions o;
    o.loss_mask = b.mask;
    check_throws([&] { losskit::sequence_logprobs(b.policy, b.targets, b.layout, o); },
                 {"losskit::sequence_logprobs:", "sequence 1 has no counted tokens (all masked or ignore_index: rows [6, 10))",
                  "'allow_empty_sequences'"});
    check_throws([&] { losskit::sequence_logprobs(b.policy, b.reference, b.targets, b.layout, o); },
                 {"sequence 1 has no counted tokens"});
    Matrix g = Matrix::Constant(b.policy.rows(), b.policy.cols(), 7.0);
    check_throws([&] { losskit::sequence_logprobs_backward(b.policy, b.targets, b.layout, VectorXd::Ones(6), g, o); },
                 {"losskit::sequence_logprobs_backward:", "sequence 1 has no counted tokens"});
    CHECK(g.cwiseAbs().minCoeff() == 7.0);  // untouched
  }

  SequenceLogprobOptions o;
  o.allow_empty_sequences = true;
  const Composed c(b, o, {});
  const Seqs s = c.seqs(b.policy);
  SECTION("allow_empty_sequences: sum 0 and 0 tokens; the summed-log-prob losses see log-prob 0") {
    CHECK(s.pc[1] == 0.0);
    CHECK(s.nc[1] == 0.0);
    CHECK(s.rc[1] == 0.0);
    // The pair still counts, with log-prob 0 for both models (D_w = 0): finite, and no gradient
    // reaches the masked rows (dropping the pair is the caller's job: s.nc[1] == 0 tells).
    check_end_to_end(b, o, dpo_loss({}));
  }
  SECTION("allow_empty_sequences: the length-normalised losses reject it, naming the argument and the index") {
    DpoOptions d;
    d.loss_types = {DpoLoss::ipo};
    d.chosen_lengths = s.nc;
    d.rejected_lengths = s.nr;
    check_throws([&] { losskit::dpo(s.pc, s.pr, s.rc, s.rr, d); },
                 {"losskit::dpo", "'chosen_lengths' is 0 at index 1"});
    d.loss_types = {DpoLoss::sigmoid_norm};
    check_throws([&] { losskit::dpo(s.pc, s.pr, s.rc, s.rr, d); }, {"'chosen_lengths' is 0 at index 1"});
    check_throws([&] { losskit::simpo(s.pc, s.pr, s.nc, s.nr); },
                 {"losskit::simpo", "'chosen_lengths' is 0 at index 1"});
    check_throws([&] { losskit::orpo(s.pc, s.pr, s.nc, s.nr); }, {"losskit::orpo", "'chosen_lengths' is 0 at index 1"});
  }
}

TEST_CASE("end to end: extreme margins (|h| >= 1e4) give finite losses and logits gradients",
          "[preference][end_to_end][extreme]") {
  // Logits in [-1e4, 1e4]: per-token log-probs of -thousands, |D_w - D_l| of 1e4 and more.
  const Batch b = make_batch(17, {6, 4, 9}, {5, 7, 3}, 2, 606u, 1e4);
  const SequenceLogprobOptions o;
  const VectorXd h = margins(b, o, 1.0);
  CAPTURE(h.transpose());
  REQUIRE(h.cwiseAbs().maxCoeff() >= 1e4);
  REQUIRE(h.minCoeff() < 0.0);
  REQUIRE(h.maxCoeff() > 0.0);
  auto finite = [&](const SeqLoss& loss) {
    const Composed c(b, o, loss);
    Matrix g(b.policy.rows(), b.policy.cols());
    const double v = c(b.policy, &g);
    CHECK(std::isfinite(v));
    CHECK(g.allFinite());
  };
  const std::vector<DpoLoss> all = {
      DpoLoss::sigmoid,  DpoLoss::robust,   DpoLoss::hinge,     DpoLoss::ipo,          DpoLoss::exo_pair,
      DpoLoss::nca_pair, DpoLoss::bco_pair, DpoLoss::sppo_hard, DpoLoss::apo_zero,     DpoLoss::apo_down,
      DpoLoss::discopop, DpoLoss::sigmoid_norm, DpoLoss::aot,   DpoLoss::aot_unpaired, DpoLoss::sft};
  for (DpoLoss t : all)
    for (double beta : {1.0, 0.1}) {
      CAPTURE(losskit::dpo_loss_name(t), beta);
      DpoOptions d;
      d.loss_types = {t};
      d.beta = beta;
      const bool smoothed = t == DpoLoss::sigmoid || t == DpoLoss::robust || t == DpoLoss::exo_pair ||
                            t == DpoLoss::aot || t == DpoLoss::aot_unpaired;
      d.label_smoothing = smoothed ? 0.1 : 0.0;  // the others reject it
      d.conservative_sigmoid = t == DpoLoss::sigmoid;
      finite(dpo_loss(d));
    }
  DpoOptions rpo;
  rpo.beta = 1.0;
  rpo.rpo_alpha = 1.0;
  rpo.rpo_eta = 0.005;
  finite(dpo_loss(rpo));
  losskit::SimpoOptions so;
  so.beta = 2.5;
  so.label_smoothing = 0.1;
  finite(simpo_loss(so));
  for (auto t : {losskit::CpoLoss::sigmoid, losskit::CpoLoss::hinge, losskit::CpoLoss::ipo, losskit::CpoLoss::simpo}) {
    CAPTURE(int(t));
    losskit::CpoOptions co;
    co.loss_type = t;
    co.beta = 1.0;
    finite(cpo_loss(co));
  }
  finite(orpo_loss({}));
  for (auto t : {losskit::KtoLoss::kto, losskit::KtoLoss::apo_zero_unpaired}) {
    CAPTURE(int(t));
    losskit::KtoOptions ko;
    ko.loss_type = t;
    ko.beta = 1.0;
    if (t == losskit::KtoLoss::kto) ko.z0 = 0.0;
    finite(kto_loss(ko));
  }
  finite([](const Seqs& s) {
    losskit::BcoOptions bo;
    bo.beta = 1.0;
    return grads_of(losskit::bco(s.pc, s.pr, s.rc, s.rr, 0.5, bo));
  });
}

TEST_CASE("end to end: mismatched batch sizes and unknown loss types name the arguments",
          "[preference][end_to_end][errors]") {
  const Batch b = pairs(17, 707u);
  const SequenceLogprobOptions o;
  const Composed c(b, o, {});
  const auto f = losskit::sequence_logprobs(b.policy, b.targets, b.layout, c.o);
  const Seqs s = c.seqs(f);
  const VectorXd two = s.pr.head(2);
  using preftest::check_throws;
  SECTION("the per-sequence vectors of the wrong batch") {
    check_throws([&] { losskit::simpo(s.pc, two, s.nc, s.nr); },
                 {"losskit::simpo", "'policy_rejected' has 2 entries, expected 3", "'policy_chosen'"});
    check_throws([&] { losskit::bco(s.pc, s.pr, s.rc, two, 0.0); },
                 {"losskit::bco", "'ref_rejected' has 2 entries, expected 3", "'policy_rejected'"});
    // Every sequence's token count instead of the chosen ones.
    DpoOptions d;
    d.loss_types = {DpoLoss::ipo};
    d.chosen_lengths = f.tokens;
    d.rejected_lengths = s.nr;
    check_throws([&] { losskit::dpo(s.pc, s.pr, s.rc, s.rr, d); },
                 {"losskit::dpo", "'chosen_lengths' has 6 entries, expected 3"});
  }
  SECTION("the backward given only the chosen half of the gradient") {
    Matrix g = Matrix::Constant(b.policy.rows(), b.policy.cols(), 7.0);
    bool failed = false;
    std::string msg;
    try {
      losskit::sequence_logprobs_backward(b.policy, b.targets, b.layout, s.pc, g, c.o, f);
    } catch (const std::invalid_argument& e) {
      failed = true;
      msg = e.what();
    }
    CAPTURE(msg);
    CHECK(failed);
    CHECK(msg.find("losskit::sequence_logprobs_backward") != std::string::npos);
    CHECK(msg.find("'d_sum' has 3 entries, expected 6 (one per sequence of 'layout')") != std::string::npos);
    CHECK(g.cwiseAbs().minCoeff() == 7.0);  // untouched
  }
  SECTION("unknown loss types") {
    losskit::KtoOptions ko;
    ko.z0 = 0.0;
    ko.loss_type = static_cast<losskit::KtoLoss>(7);
    check_throws([&] { losskit::kto(s.pc, s.pr, s.rc, s.rr, ko); }, {"losskit::kto", "unknown 'loss_type' 7"});
    DpoOptions d;
    d.loss_types = {DpoLoss::sigmoid, DpoLoss::ipo, static_cast<DpoLoss>(-1)};
    d.chosen_lengths = s.nc;
    d.rejected_lengths = s.nr;
    check_throws([&] { losskit::dpo(s.pc, s.pr, s.rc, s.rr, d); },
                 {"losskit::dpo", "'loss_types' has an unknown loss type (-1) at index 2"});
  }
}
