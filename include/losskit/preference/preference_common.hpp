#pragma once
// What every preference loss over per-sequence log-probabilities shares: the result types, the
// `Values` view for lengths / masks / offsets, input conversion, checks and the reduction.
//
// Conventions of every loss in preference/ (dpo, simpo, cpo, orpo, kto, bco, sparse_po):
// - Inputs are per-sequence log-probabilities: any dense Eigen vector (row or column, float,
//   double, half, bfloat16, or an expression), read once and converted to double. Everything
//   is computed in double.
// - Gradients are always w.r.t. the SUMMED log-probability of each sequence (what
//   sequence_logprobs_backward takes). A loss that uses length-averaged log-probabilities takes
//   the lengths and chains the 1 / length itself.
// - Reduction (TRL's `.mean()` by default): value = sum_i L_i / D with D = the number of
//   items (pairs, or examples for the unpaired losses) for `mean`, 1 for `sum` and `none`, or
//   `normalizer` if > 0. Gradients are of `value`, times `grad_scale`. `per_row` holds each
//   item's unscaled loss L_i for every reduction.
// - A log-prob of 0 is taken at face value (probability 1): a sequence without counted tokens must
//   not reach a loss on sums as 0, which is why sequence_logprobs rejects it by default (see its
//   allow_empty_sequences); the length-normalised losses reject a length of 0.
// - A batch with no pair (or no example) at all is an error, not NaN. NaN in an input propagates
//   to the loss and gradient; +-inf log-probabilities give inf / NaN as the formulas do.
// - Every argument is checked before anything is computed; errors throw std::invalid_argument
//   naming the function, the argument and the value.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "losskit/core/checks.hpp"
#include "losskit/core/config.hpp"
#include "losskit/core/scalar_math.hpp"
#include "losskit/core/types.hpp"

namespace losskit {

// Non-owning view of one number per sequence or per token (lengths, masks, offsets,
// probabilities): float, double, int32 or int64 storage, from a pointer and a size, a
// std::vector or a contiguous Eigen vector. Empty means "not given". Like Labels and Weights it
// only points at the caller's data: keep that alive until the call returns (do not store a view
// of a temporary in an options struct).
class Values {
 public:
  Values() = default;
  Values(const float* p, std::size_t n) : pf_(p), size_(n) {}
  Values(const double* p, std::size_t n) : pd_(p), size_(n) {}
  Values(const std::int32_t* p, std::size_t n) : p32_(p), size_(n) {}
  Values(const std::int64_t* p, std::size_t n) : p64_(p), size_(n) {}
  Values(const std::vector<float>& v) : Values(v.data(), v.size()) {}
  Values(const std::vector<double>& v) : Values(v.data(), v.size()) {}
  Values(const std::vector<std::int32_t>& v) : Values(v.data(), v.size()) {}
  Values(const std::vector<std::int64_t>& v) : Values(v.data(), v.size()) {}
  template <class Derived>
  Values(const Eigen::DenseBase<Derived>& v) : Values(v.derived().data(), std::size_t(v.size())) {
    static_assert(Derived::IsVectorAtCompileTime, "losskit::Values: expected a vector");
    static_assert(Eigen::internal::traits<Derived>::InnerStrideAtCompileTime == 1 || Derived::IsVectorAtCompileTime,
                  "losskit::Values: the vector must be contiguous");
  }

  // Entries [b, b + n) as a view of their own.
  Values slice(std::size_t b, std::size_t n) const noexcept {
    Values v = *this;
    if (pf_) v.pf_ += b;
    if (pd_) v.pd_ += b;
    if (p32_) v.p32_ += b;
    if (p64_) v.p64_ += b;
    v.size_ = n;
    return v;
  }
  bool empty() const noexcept { return size_ == 0; }
  std::size_t size() const noexcept { return size_; }
  double operator[](std::size_t i) const noexcept {
    return pd_ ? pd_[i] : pf_ ? double(pf_[i]) : p32_ ? double(p32_[i]) : double(p64_[i]);
  }

 private:
  const float* pf_ = nullptr;
  const double* pd_ = nullptr;
  const std::int32_t* p32_ = nullptr;
  const std::int64_t* p64_ = nullptr;
  std::size_t size_ = 0;
};

// Result of the paired losses (dpo, simpo, cpo, orpo, sparse_po). LossResult fields: `value`,
// `denominator`, `count` (pairs), `per_row` (each pair's loss L_i).
struct PreferenceResult : LossResult {
  Eigen::VectorXd chosen_rewards;     // per pair, the loss's implicit reward (DPO: beta (pi_w - rho_w))
  Eigen::VectorXd rejected_rewards;
  Eigen::VectorXd margins;            // chosen_rewards - rejected_rewards
  double accuracy = 0.0;              // fraction of pairs with chosen_rewards > rejected_rewards
  double nll = 0.0;                   // the token-mean NLL of the chosen completions, when the loss
                                      // includes one (dpo sft / rpo_alpha, cpo/simpo cpo_alpha, orpo)
  Eigen::VectorXd d_policy_chosen;    // d value / d (summed log-prob of each chosen sequence)
  Eigen::VectorXd d_policy_rejected;  // d value / d (summed log-prob of each rejected sequence)
};

// Result of the unpaired losses (kto, bco): per_row holds [chosen losses..., rejected losses...].
struct UnpairedPreferenceResult : LossResult {
  Eigen::VectorXd chosen_rewards;     // beta (pi - rho) of each chosen (desirable) example
  Eigen::VectorXd rejected_rewards;
  double reference_point = 0.0;       // what the rewards were compared with: KTO z0, BCO delta
  Eigen::VectorXd d_policy_chosen;
  Eigen::VectorXd d_policy_rejected;
};

namespace detail {

// Any dense Eigen vector (either orientation, any scalar convertible to double) as a VectorXd.
template <class Derived>
inline Eigen::VectorXd to_vector(const char* fn, const char* arg, const Eigen::DenseBase<Derived>& x) {
  const Derived& d = x.derived();
  if (d.rows() != 1 && d.cols() != 1)
    fail(fn, "'", arg, "' must be a vector, got shape ", d.rows(), "x", d.cols());
  Eigen::VectorXd v(d.size());
  Eigen::Index k = 0;
  for (Eigen::Index c = 0; c < d.cols(); ++c)
    for (Eigen::Index r = 0; r < d.rows(); ++r) v[k++] = double(d.coeff(r, c));
  return v;
}

inline void check_size(const char* fn, const char* arg, Eigen::Index got, const char* like, Eigen::Index want) {
  if (got != want)
    fail(fn, "'", arg, "' has ", got, " entries, expected ", want, " (the size of '", like, "')");
}

inline void check_finite(const char* fn, const char* arg, double x) {
  if (!std::isfinite(x)) fail(fn, "'", arg, "' must be finite, got ", x);
}

// A Values view as a VectorXd of `n` entries (checked).
inline Eigen::VectorXd values_vector(const char* fn, const char* arg, const Values& v, Eigen::Index n,
                                     const char* like) {
  check_size(fn, arg, Eigen::Index(v.size()), like, n);
  Eigen::VectorXd out(n);
  for (Eigen::Index i = 0; i < n; ++i) out[i] = v[std::size_t(i)];
  return out;
}

// Sequence lengths (completion token counts): finite and >= 0; with `positive`, every one > 0
// (`why` names the loss that divides by it). Missing lengths are an error naming `why`.
inline Eigen::VectorXd lengths_vector(const char* fn, const char* arg, const Values& v, Eigen::Index n,
                                      const char* like, bool positive, const char* why) {
  if (v.empty()) fail(fn, "'", arg, "' must be given: ", why, " needs the completion lengths");
  Eigen::VectorXd out = values_vector(fn, arg, v, n, like);
  for (Eigen::Index i = 0; i < n; ++i) {
    if (!(out[i] >= 0.0) || !std::isfinite(out[i]))
      fail(fn, "'", arg, "' must be finite and >= 0, got ", out[i], " at index ", i);
    if (positive && out[i] == 0.0)
      fail(fn, "'", arg, "' is 0 at index ", i, ": ", why, " divides by the completion length (an empty completion "
           "cannot be scored)");
  }
  return out;
}

// The reduction fields every preference options struct has.
template <class Options>
inline void check_reduction(const char* fn, const Options& o) {
  if (o.reduction != Reduction::mean && o.reduction != Reduction::sum && o.reduction != Reduction::none)
    fail(fn, "unknown 'reduction' ", int(o.reduction));
  if (!std::isfinite(o.grad_scale)) fail(fn, "'grad_scale' must be finite, got ", o.grad_scale);
  if (!(o.normalizer >= 0.0) || !std::isfinite(o.normalizer))
    fail(fn, "'normalizer' must be >= 0 (0 means: use the reduction's own), got ", o.normalizer);
}

// Per-item losses L_i and the gradients of sum_i L_i (in place) -> value, denominator, count,
// per_row, and the gradients of `value` times grad_scale.
template <class Options, class Result, class... Grads>
inline void reduce_items(const Options& o, Result& r, Eigen::VectorXd losses, Grads&... grads) {
  const Eigen::Index n = losses.size();
  const double d = o.normalizer > 0.0 ? o.normalizer : o.reduction == Reduction::mean ? double(n) : 1.0;
  double sum = 0.0;
  for (Eigen::Index i = 0; i < n; ++i) sum += losses[i];
  r.value = sum / d;
  r.denominator = d;
  r.count = std::int64_t(n);
  r.per_row = std::move(losses);
  const double scale = o.grad_scale / d;
  ((grads *= scale), ...);
}

// One term f(x) with its derivative.
struct Term {
  double value;
  double grad;
};

// The conservative (cDPO / label-smoothed) logistic loss (1 - e) sp(-x) + e sp(x), sp = softplus,
// and its derivative e s(x) - (1 - e) s(-x): DPO sigmoid / aot, CPO sigmoid, SimPO. A part with
// weight 0 is left out, so x = +-inf (an overflowed AlphaPO margin) gives 0 or inf, not 0 * inf.
inline Term cdpo_term(double x, double e) {
  const double lose = e == 1.0 ? 0.0 : (1.0 - e) * softplus(-x), win = e == 0.0 ? 0.0 : e * softplus(x);
  return {lose + win, e * sigmoid(x) - (1.0 - e) * sigmoid(-x)};
}

// Rewards, margins and accuracy (the share of margins > 0, i.e. of chosen > rejected) of a paired
// result. The margins are chosen - rejected unless given (cpo computes them where the rewards
// themselves overflow).
template <class Result>
inline void set_rewards(Result& r, Eigen::VectorXd chosen, Eigen::VectorXd rejected, Eigen::VectorXd margins) {
  Eigen::Index wins = 0;
  for (Eigen::Index i = 0; i < margins.size(); ++i) wins += margins[i] > 0.0;
  r.accuracy = margins.size() ? double(wins) / double(margins.size()) : 0.0;
  r.margins = std::move(margins);
  r.chosen_rewards = std::move(chosen);
  r.rejected_rewards = std::move(rejected);
}
template <class Result>
inline void set_rewards(Result& r, Eigen::VectorXd chosen, Eigen::VectorXd rejected) {
  Eigen::VectorXd margins = chosen - rejected;
  set_rewards(r, std::move(chosen), std::move(rejected), std::move(margins));
}

// The end of every paired loss: rewards, margins, accuracy, the reduction, the gradients.
template <class Options, class Result>
inline void finish_paired(const Options& o, Result& res, Eigen::VectorXd chosen_rewards, Eigen::VectorXd rejected_rewards,
                          Eigen::VectorXd margins, Eigen::VectorXd loss, Eigen::VectorXd gw, Eigen::VectorXd gl) {
  set_rewards(res, std::move(chosen_rewards), std::move(rejected_rewards), std::move(margins));
  reduce_items(o, res, std::move(loss), gw, gl);
  res.d_policy_chosen = std::move(gw);
  res.d_policy_rejected = std::move(gl);
}
template <class Options, class Result>
inline void finish_paired(const Options& o, Result& res, Eigen::VectorXd chosen_rewards, Eigen::VectorXd rejected_rewards,
                          Eigen::VectorXd loss, Eigen::VectorXd gw, Eigen::VectorXd gl) {
  Eigen::VectorXd margins = chosen_rewards - rejected_rewards;
  finish_paired(o, res, std::move(chosen_rewards), std::move(rejected_rewards), std::move(margins), std::move(loss),
                std::move(gw), std::move(gl));
}

// The pairs and chosen tokens of a whole batch, for the NLL's gradient when a loss is evaluated
// one pair at a time (dpo_step): that gradient, n weight / tokens per pair, depends on the batch
// only through these two numbers.
struct NllBatch {
  double pairs = 0.0;
  double tokens = 0.0;
};

// The token-mean NLL of the chosen completions as a function of their summed log-probs:
// adds `weight * NLL` to every pair's loss and the gradient of the sum over pairs. Returns NLL.
// With `batch`, the gradient is the one these pairs have inside that batch.
inline double add_token_mean_nll(const Eigen::VectorXd& pw, const Eigen::VectorXd& nw, double weight,
                                 Eigen::VectorXd& loss, Eigen::VectorXd& gw, const NllBatch* batch = nullptr) {
  const double tokens = nw.sum();
  const double nll = -pw.sum() / tokens;
  const double n = batch ? batch->pairs : double(pw.size());
  loss.array() += weight * nll;
  gw.array() -= n * weight / (batch ? batch->tokens : tokens);
  return nll;
}

inline void check_chosen_tokens(const char* fn, const Eigen::VectorXd& nw, const char* why) {
  if (!(nw.sum() > 0.0)) fail(fn, "'chosen_lengths' sums to 0: ", why, " is a mean over the chosen tokens");
}

// The paired losses' inputs (dpo, cpo / simpo, orpo): the policy's summed log-probs of the chosen
// and rejected completions and, for the losses with a reference model, the reference's, as
// vectors of one entry per pair. At least one pair; every vector the size of policy_chosen.
struct PairedInputs {
  Eigen::VectorXd chosen, rejected;          // policy_chosen, policy_rejected
  Eigen::VectorXd ref_chosen, ref_rejected;  // empty without a reference model
  Eigen::Index n = 0;                        // pairs
};

inline void check_pairs(const char* fn, PairedInputs& in, bool with_reference) {
  in.n = in.chosen.size();
  if (in.n == 0) fail(fn, "'policy_chosen' is empty: the batch needs at least one pair");
  check_size(fn, "policy_rejected", in.rejected.size(), "policy_chosen", in.n);
  if (!with_reference) return;
  check_size(fn, "ref_chosen", in.ref_chosen.size(), "policy_chosen", in.n);
  check_size(fn, "ref_rejected", in.ref_rejected.size(), "policy_chosen", in.n);
}

template <class PC, class PR>
inline PairedInputs paired_inputs(const char* fn, const Eigen::DenseBase<PC>& policy_chosen,
                                  const Eigen::DenseBase<PR>& policy_rejected) {
  PairedInputs in{to_vector(fn, "policy_chosen", policy_chosen), to_vector(fn, "policy_rejected", policy_rejected), {},
                  {}};
  check_pairs(fn, in, false);
  return in;
}

template <class PC, class PR, class RC, class RR>
inline PairedInputs paired_inputs(const char* fn, const Eigen::DenseBase<PC>& policy_chosen,
                                  const Eigen::DenseBase<PR>& policy_rejected, const Eigen::DenseBase<RC>& ref_chosen,
                                  const Eigen::DenseBase<RR>& ref_rejected) {
  PairedInputs in{to_vector(fn, "policy_chosen", policy_chosen), to_vector(fn, "policy_rejected", policy_rejected),
                  to_vector(fn, "ref_chosen", ref_chosen), to_vector(fn, "ref_rejected", ref_rejected)};
  check_pairs(fn, in, true);
  return in;
}

// The unpaired losses (kto, bco): D = pi - rho of the chosen and of the rejected examples.
template <class PC, class PR, class RC, class RR>
inline void unpaired_inputs(const char* fn, const Eigen::DenseBase<PC>& policy_chosen,
                            const Eigen::DenseBase<PR>& policy_rejected, const Eigen::DenseBase<RC>& ref_chosen,
                            const Eigen::DenseBase<RR>& ref_rejected, Eigen::VectorXd& dc, Eigen::VectorXd& dr) {
  const Eigen::VectorXd pc = to_vector(fn, "policy_chosen", policy_chosen);
  const Eigen::VectorXd pr = to_vector(fn, "policy_rejected", policy_rejected);
  const Eigen::VectorXd rc = to_vector(fn, "ref_chosen", ref_chosen);
  const Eigen::VectorXd rr = to_vector(fn, "ref_rejected", ref_rejected);
  check_size(fn, "ref_chosen", rc.size(), "policy_chosen", pc.size());
  check_size(fn, "ref_rejected", rr.size(), "policy_rejected", pr.size());
  if (pc.size() + pr.size() == 0) fail(fn, "'policy_chosen' and 'policy_rejected' are both empty: no example");
  dc = pc - rc;
  dr = pr - rr;
}

// The end of kto and bco: rewards beta D, the reference point, the per-example losses
// [chosen, rejected] reduced, the gradients.
template <class Options>
inline UnpairedPreferenceResult finish_unpaired(const Options& o, double beta, const Eigen::VectorXd& dc,
                                                const Eigen::VectorXd& dr, double reference_point,
                                                const Eigen::VectorXd& lc, const Eigen::VectorXd& lr,
                                                Eigen::VectorXd gc, Eigen::VectorXd gr) {
  UnpairedPreferenceResult res;
  res.chosen_rewards = beta * dc;
  res.rejected_rewards = beta * dr;
  res.reference_point = reference_point;
  Eigen::VectorXd loss(lc.size() + lr.size());
  loss << lc, lr;
  reduce_items(o, res, std::move(loss), gc, gr);
  res.d_policy_chosen = std::move(gc);
  res.d_policy_rejected = std::move(gr);
  return res;
}

}  // namespace detail
}  // namespace losskit
