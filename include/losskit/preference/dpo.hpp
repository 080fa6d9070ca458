#pragma once
// DPO and its TRL variants over per-sequence log-probabilities (huggingface/trl
// trl/trainer/dpo_trainer.py, DPOConfig; Liger-Kernel chunked_loss/dpo_loss.py).
//
// Per pair i: policy pi_w, pi_l and reference rho_w, rho_l (sums of completion-token log-probs),
//   D_w = pi_w - rho_w,  D_l = pi_l - rho_l,  h = beta (D_w - D_l),  s(x) = sigmoid(x),
//   sp(x) = softplus(x) = -log s(-x),  cdpo_e(x) = (1 - e) sp(-x) + e sp(x)  (d/dx = e s(x) - (1 - e) s(-x)).
// Loss types (TRL `loss_type` names; e = label_smoothing, n_w, n_l = completion lengths):
//   sigmoid       sp(-h); with conservative_sigmoid: cdpo_e(h) (cDPO, TRL <= 0.25)
//   robust        [(1 - e) sp(-h) - e sp(h)] / (1 - 2e),  e in [0, 0.5)
//   hinge         max(0, 1 - h)                            (d/dh = -1 for h < 1, else 0)
//   ipo           (D_w / n_w - D_l / n_l - 1 / (2 beta))^2  (TRL: length-normalised, no beta inside)
//   exo_pair      s(h) (log s(h) - log(1 - e)) + s(-h) (log s(-h) - log e),  e in (0, 1);
//                 d/dh = s(h) s(-h) (h - log((1 - e) / e))
//   nca_pair      sp(-r_w) + sp(r_w) / 2 + sp(r_l) / 2,  r = beta D
//   bco_pair      sp(-(r_w - delta)) + sp(r_l - delta),  delta = bco_pair_delta (0: current TRL;
//                 TRL <= 0.25 used a running mean, see BcoRunningMean in bco.hpp)
//   sppo_hard     (D_w - 1 / (2 beta))^2 + (D_l + 1 / (2 beta))^2
//   aot           cdpo_e(beta (a_(k) - b_(k))), a = pi_w - pi_l and b = rho_w - rho_l each sorted
//                 ascending within the batch; the gradient of term k goes to the pair whose a has
//                 rank k (stable sort: ties keep pair order); per_row[k] is the k-th sorted term
//   aot_unpaired  cdpo_e(beta (D_w(k) - D_l(k))), D_w and D_l sorted separately (TRL's old aot_pair)
//   apo_zero      1 - s(r_w) + s(r_l)
//   apo_down      s(r_w) + 1 - s(h)
//   discopop      (1 - m) sp(-h) + m e^-h,  m = s(h / tau), tau = discopop_tau;
//                 d/dh = m (1 - m) / tau (e^-h - sp(-h)) - (1 - m) s(-h) - m e^-h
//                      = m e^-h ((1 - tau) - m) / tau - m (1 - m) sp(-h) / tau - (1 - m) s(-h)   (used),
//                 with m e^-h = exp(log s(h/tau) - h) (no 1 * inf, no inf - inf). tau <= 1: value and
//                 gradient finite for every finite h (tau = 1: L -> sp(-h) + 1, d/dh -> -1 as h -> -inf).
//                 tau > 1: m e^-h ~ e^(-h (1 - 1/tau)) is unbounded as h -> -inf and so is the gradient,
//                 ~ (1/tau - 1) e^(-h (1 - 1/tau)); once that overflows (h = -1e4, tau = 2) the value is
//                 +inf and d/dh = -inf exactly: d/dpi_w = -inf, d/dpi_l = +inf, never NaN
//   sigmoid_norm  sp(-beta (D_w / n_w - D_l / n_l))        (length-normalised DPO)
//   sft           NLL = -sum_i pi_w,i / sum_i n_w,i: the token-mean cross entropy of the chosen
//                 completions over the batch, added to every pair (TRL broadcasts the scalar), so
//                 its mean is NLL; d/dpi_w,j of the mean = -1 / sum_i n_w,i
// Several loss types in one call: L_i = sum_k weight_k L_k,i (TRL `loss_weights`, default 1 each).
// RPO, both published forms:
//   rpo_alpha  + alpha NLL (the token-mean NLL above; TRL's old `rpo_alpha`, Pang et al. 2404.19733;
//              the same as appending `sft` with weight alpha)
//   rpo_eta    - eta beta pi_w,i per pair (Liu et al. 2405.16436, official code: losses -= pi_w beta eta,
//              pi_w the SUMMED log-prob); d/dpi_w = -eta beta
// Result: rewards beta D_w, beta D_l (as current TRL, for every loss type), margins, accuracy
// (reward_w > reward_l), the per-pair losses, and the gradient of the reduced value w.r.t. the summed
// log-probs pi_w, pi_l (the reference is constant). The gradient w.r.t. h-only losses is
// d/dpi_w = beta dL/dh, d/dpi_l = -beta dL/dh.
// Lengths: ipo and sigmoid_norm need chosen_lengths and rejected_lengths, every one > 0 (TRL clamps
// a zero length to 1; we reject it: std::invalid_argument); sft and rpo_alpha need chosen_lengths
// with a positive sum; the lengths may be given with any loss type (checked, read only by those).
// Options no selected loss type reads must stay at their DpoOptions{} defaults, else
// std::invalid_argument naming the option and the selected loss types: label_smoothing (read by
// robust, exo_pair, aot, aot_unpaired, and sigmoid with conservative_sigmoid), conservative_sigmoid
// (sigmoid), discopop_tau (discopop), bco_pair_delta (bco_pair). TRL differs: its DPOTrainer only
// warns about label_smoothing > 0 with hinge, ipo, bco_pair, sppo_hard, nca_pair, apo_zero or
// apo_down, and ignores it. (An option set explicitly to its default value cannot be told from an
// unset one, and is accepted.)
// Not implemented: TRL's f_divergence_type, ld_alpha (LD-DPO works on the token log-probs: weight
// them in sequence_logprobs) and use_weighting (WPO).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <numeric>
#include <string>
#include <vector>

#include "losskit/core/scalar_math.hpp"
#include "losskit/preference/preference_common.hpp"

namespace losskit {

enum class DpoLoss {
  sigmoid,
  robust,
  hinge,
  ipo,
  exo_pair,
  nca_pair,
  bco_pair,
  sppo_hard,
  apo_zero,
  apo_down,
  discopop,
  sigmoid_norm,
  aot,
  aot_unpaired,
  sft
};

// TRL's name of a loss type ("sigmoid", "aot_unpaired", ...); "unknown" for a value out of range.
inline const char* dpo_loss_name(DpoLoss t) noexcept {
  switch (t) {
    case DpoLoss::sigmoid: return "sigmoid";
    case DpoLoss::robust: return "robust";
    case DpoLoss::hinge: return "hinge";
    case DpoLoss::ipo: return "ipo";
    case DpoLoss::exo_pair: return "exo_pair";
    case DpoLoss::nca_pair: return "nca_pair";
    case DpoLoss::bco_pair: return "bco_pair";
    case DpoLoss::sppo_hard: return "sppo_hard";
    case DpoLoss::apo_zero: return "apo_zero";
    case DpoLoss::apo_down: return "apo_down";
    case DpoLoss::discopop: return "discopop";
    case DpoLoss::sigmoid_norm: return "sigmoid_norm";
    case DpoLoss::aot: return "aot";
    case DpoLoss::aot_unpaired: return "aot_unpaired";
    case DpoLoss::sft: return "sft";
  }
  return "unknown";
}

// Options of losskit::dpo; names and defaults of TRL's DPOConfig where it has them.
struct DpoOptions {
  double beta = 0.1;
  std::vector<DpoLoss> loss_types{DpoLoss::sigmoid};  // TRL `loss_type` (a list); no duplicates
  std::vector<double> loss_weights{};                 // one per loss type; empty: 1 each
  // The next four are type-specific: away from their defaults they need a loss type that reads them.
  double label_smoothing = 0.0;        // robust, exo_pair, aot, aot_unpaired (and sigmoid if conservative_sigmoid)
  bool conservative_sigmoid = false;   // cDPO: `sigmoid` uses label_smoothing (TRL <= 0.25); current TRL: off
  double discopop_tau = 0.05;          // discopop
  double bco_pair_delta = 0.0;         // reward shift of bco_pair (0 in current TRL)
  double rpo_alpha = 0.0;              // + alpha * token-mean NLL of the chosen completions (needs chosen_lengths)
  double rpo_eta = 0.0;                // - eta * beta * pi_w per pair (Liu et al. official RPO, summed log-prob)
  Values chosen_lengths{};             // completion token counts (ipo, sigmoid_norm, sft, rpo_alpha)
  Values rejected_lengths{};           // (ipo, sigmoid_norm)
  Reduction reduction = Reduction::mean;
  double normalizer = 0.0;             // > 0: divide by this instead of the number of pairs
  double grad_scale = 1.0;             // upstream gradient of the reduced value
};

namespace detail {

inline Term robust_term(double x, double e) {
  const double k = 1.0 / (1.0 - 2.0 * e);
  return {k * ((1.0 - e) * softplus(-x) - e * softplus(x)), -k * ((1.0 - e) * sigmoid(-x) + e * sigmoid(x))};
}

inline Term exo_term(double x, double e) {
  const double sw = sigmoid(x), sl = sigmoid(-x);
  return {sw * (log_sigmoid(x) - std::log1p(-e)) + sl * (log_sigmoid(-x) - std::log(e)),
          sigmoid_grad(x) * (x - (std::log1p(-e) - std::log(e)))};
}

inline Term discopop_term(double x, double tau) {
  const double m = sigmoid(x / tau), m1 = sigmoid(-x / tau);  // m, 1 - m
  const double sp = softplus(-x);
  const double m_exp = std::exp(log_sigmoid(x / tau) - x);    // m e^-x, never 1 * inf
  const double value = m1 * sp + m_exp;
  // m (1 - m) e^-x / tau - m e^-x as one product: no inf - inf when m e^-x overflows (tau > 1).
  const double grad = m_exp * (((1.0 - tau) - m) / tau) - sigmoid_grad(x / tau) * sp / tau - m1 * sigmoid(-x);
  return {value, grad};
}

// Indices that sort v ascending (stable; NaN last, so the order is a strict weak ordering).
inline std::vector<Eigen::Index> sort_order(const Eigen::VectorXd& v) {
  std::vector<Eigen::Index> idx(std::size_t(v.size()));
  std::iota(idx.begin(), idx.end(), Eigen::Index(0));
  std::stable_sort(idx.begin(), idx.end(), [&](Eigen::Index a, Eigen::Index b) {
    const double x = v[a], y = v[b];
    return x < y || (!std::isnan(x) && std::isnan(y));
  });
  return idx;
}

inline void check_dpo_options(const char* fn, const DpoOptions& o) {
  check_positive(fn, "beta", o.beta);
  if (o.loss_types.empty()) fail(fn, "'loss_types' is empty: give at least one loss type");
  if (!o.loss_weights.empty() && o.loss_weights.size() != o.loss_types.size())
    fail(fn, "'loss_weights' has ", o.loss_weights.size(), " entries, expected one per loss type (",
         o.loss_types.size(), ")");
  for (std::size_t k = 0; k < o.loss_weights.size(); ++k)
    if (!std::isfinite(o.loss_weights[k])) fail(fn, "'loss_weights' must be finite, got ", o.loss_weights[k], " at ", k);
  bool uses_smoothing = false, reads_smoothing = false;
  for (std::size_t k = 0; k < o.loss_types.size(); ++k) {
    const DpoLoss t = o.loss_types[k];
    if (int(t) < int(DpoLoss::sigmoid) || int(t) > int(DpoLoss::sft))
      fail(fn, "'loss_types' has an unknown loss type (", int(t), ") at index ", k);
    for (std::size_t j = 0; j < k; ++j)
      if (o.loss_types[j] == t)
        fail(fn, "'loss_types' lists '", dpo_loss_name(t), "' twice (indices ", j, " and ", k,
             "); give each loss type once, with its weight in 'loss_weights'");
    if (t == DpoLoss::robust) check_in(fn, "label_smoothing (robust)", o.label_smoothing, 0.0, 0.5, false, true);
    if (t == DpoLoss::exo_pair) check_in(fn, "label_smoothing (exo_pair)", o.label_smoothing, 0.0, 1.0, true, true);
    uses_smoothing |= t == DpoLoss::aot || t == DpoLoss::aot_unpaired || (t == DpoLoss::sigmoid && o.conservative_sigmoid);
    reads_smoothing |= t == DpoLoss::robust || t == DpoLoss::exo_pair;
  }
  reads_smoothing |= uses_smoothing;
  if (uses_smoothing) check_in(fn, "label_smoothing", o.label_smoothing, 0.0, 1.0, false, false);
  check_positive(fn, "discopop_tau", o.discopop_tau);
  check_finite(fn, "bco_pair_delta", o.bco_pair_delta);
  check_nonnegative(fn, "rpo_alpha", o.rpo_alpha);
  check_nonnegative(fn, "rpo_eta", o.rpo_eta);
  check_reduction(fn, o);

  // A type-specific option away from its default while no selected loss type reads it is an error
  // (TRL warns and ignores it). The defaults are DpoOptions{}'s.
  const DpoOptions def{};
  std::string types;  // the selected loss types, for the messages
  for (DpoLoss t : o.loss_types) types += (types.empty() ? "" : ", ") + std::string(dpo_loss_name(t));
  auto selected = [&](DpoLoss t) { return std::find(o.loss_types.begin(), o.loss_types.end(), t) != o.loss_types.end(); };
  if (o.label_smoothing != def.label_smoothing && !reads_smoothing)
    fail(fn, "'label_smoothing' is ", o.label_smoothing, ", but none of the selected loss types (", types,
         ") reads it (robust, exo_pair, aot, aot_unpaired do, and sigmoid with 'conservative_sigmoid'); set it to ",
         def.label_smoothing);
  if (o.conservative_sigmoid && !selected(DpoLoss::sigmoid))
    fail(fn, "'conservative_sigmoid' is true, but loss type 'sigmoid' is not selected (loss_types: ", types,
         "); set it to false");
  if (o.discopop_tau != def.discopop_tau && !selected(DpoLoss::discopop))
    fail(fn, "'discopop_tau' is ", o.discopop_tau, ", but loss type 'discopop' is not selected (loss_types: ", types,
         "); leave it at ", def.discopop_tau);
  if (o.bco_pair_delta != def.bco_pair_delta && !selected(DpoLoss::bco_pair))
    fail(fn, "'bco_pair_delta' is ", o.bco_pair_delta, ", but loss type 'bco_pair' is not selected (loss_types: ", types,
         "); leave it at ", def.bco_pair_delta);
}

}  // namespace detail

namespace detail {

// dpo() on checked inputs; fn names the public function in error messages. `batch`: these pairs
// are part of a larger batch (dpo_step's per-pair calls; the NLL's gradient is the batch's, the
// batch's chosen tokens were checked).
inline PreferenceResult dpo_impl(const char* fn, const PairedInputs& in, const DpoOptions& o,
                                 const NllBatch* batch = nullptr) {
  const Eigen::VectorXd &pw = in.chosen, &pl = in.rejected, &rw = in.ref_chosen, &rl = in.ref_rejected;
  const Eigen::Index n = in.n;
  detail::check_dpo_options(fn, o);

  bool need_both_lengths = false, has_sft = false;
  for (DpoLoss t : o.loss_types) {
    need_both_lengths |= t == DpoLoss::ipo || t == DpoLoss::sigmoid_norm;
    has_sft |= t == DpoLoss::sft;
  }
  const bool need_nll = has_sft || o.rpo_alpha > 0.0;
  const char* why_len = need_both_lengths ? "loss type 'ipo' / 'sigmoid_norm'" : "the NLL term (sft / rpo_alpha)";
  Eigen::VectorXd nw, nl;
  if (need_both_lengths || need_nll || !o.chosen_lengths.empty())
    nw = detail::lengths_vector(fn, "chosen_lengths", o.chosen_lengths, n, "policy_chosen", need_both_lengths, why_len);
  if (need_both_lengths || !o.rejected_lengths.empty())
    nl = detail::lengths_vector(fn, "rejected_lengths", o.rejected_lengths, n, "policy_chosen", need_both_lengths,
                                why_len);
  if (need_nll && !batch) detail::check_chosen_tokens(fn, nw, "the NLL term (sft / rpo_alpha)");

  const double beta = o.beta, eps = o.label_smoothing;
  const Eigen::VectorXd dw = pw - rw, dl = pl - rl;
  Eigen::VectorXd loss = Eigen::VectorXd::Zero(n), gw = Eigen::VectorXd::Zero(n), gl = Eigen::VectorXd::Zero(n);
  PreferenceResult res;
  double nll_weight = o.rpo_alpha;

  for (std::size_t k = 0; k < o.loss_types.size(); ++k) {
    const DpoLoss type = o.loss_types[k];
    const double wk = o.loss_weights.empty() ? 1.0 : o.loss_weights[k];
    // h-only losses: L(h) with h = beta (D_w - D_l).
    auto by_h = [&](auto&& f) {
      for (Eigen::Index i = 0; i < n; ++i) {
        const Term t = f(beta * (dw[i] - dl[i]));
        loss[i] += wk * t.value;
        gw[i] += wk * beta * t.grad;
        gl[i] -= wk * beta * t.grad;
      }
    };
    // Length-normalised: L(u) with u = D_w / n_w - D_l / n_l.
    auto by_norm = [&](auto&& f) {
      for (Eigen::Index i = 0; i < n; ++i) {
        const Term t = f(dw[i] / nw[i] - dl[i] / nl[i]);
        loss[i] += wk * t.value;
        gw[i] += wk * t.grad / nw[i];
        gl[i] -= wk * t.grad / nl[i];
      }
    };
    // Separate chosen / rejected terms: f(D_w) + g(D_l).
    auto by_parts = [&](auto&& f, auto&& g) {
      for (Eigen::Index i = 0; i < n; ++i) {
        const Term a = f(dw[i]), b = g(dl[i]);
        loss[i] += wk * (a.value + b.value);
        gw[i] += wk * a.grad;
        gl[i] += wk * b.grad;
      }
    };
    // AOT: term j on the sorted x(j) - y(j). paired (aot): x = pi_w - pi_l, y = rho_w - rho_l (constant);
    // unpaired (aot_unpaired): x = D_w, y = D_l, each sorted on its own.
    auto by_sorted = [&](const Eigen::VectorXd& x, const Eigen::VectorXd& y, bool paired) {
      const std::vector<Eigen::Index> ox = detail::sort_order(x), oy = detail::sort_order(y);
      for (Eigen::Index j = 0; j < n; ++j) {
        const Eigen::Index i = ox[std::size_t(j)], m = oy[std::size_t(j)];
        const Term t = detail::cdpo_term(beta * (x[i] - y[m]), eps);
        loss[j] += wk * t.value;
        gw[i] += wk * beta * t.grad;
        gl[paired ? i : m] -= wk * beta * t.grad;
      }
    };
    const double half_inv_beta = 0.5 / beta;
    switch (type) {
      case DpoLoss::sigmoid:
        if (o.conservative_sigmoid)
          by_h([&](double h) { return detail::cdpo_term(h, eps); });
        else
          by_h([](double h) { return Term{detail::softplus(-h), -detail::sigmoid(-h)}; });
        break;
      case DpoLoss::robust: by_h([&](double h) { return detail::robust_term(h, eps); }); break;
      case DpoLoss::hinge:
        by_h([](double h) { return h < 1.0 ? Term{1.0 - h, -1.0} : Term{std::isnan(h) ? h : 0.0, 0.0}; });
        break;
      case DpoLoss::exo_pair: by_h([&](double h) { return detail::exo_term(h, eps); }); break;
      case DpoLoss::discopop: by_h([&](double h) { return detail::discopop_term(h, o.discopop_tau); }); break;
      case DpoLoss::apo_down:
        by_h([](double h) { return Term{1.0 - detail::sigmoid(h), -detail::sigmoid_grad(h)}; });
        by_parts([&](double x) { return Term{detail::sigmoid(beta * x), beta * detail::sigmoid_grad(beta * x)}; },
                 [](double) { return Term{0.0, 0.0}; });
        break;
      case DpoLoss::ipo:
        by_norm([&](double u) {
          const double e = u - half_inv_beta;
          return Term{e * e, 2.0 * e};
        });
        break;
      case DpoLoss::sigmoid_norm:
        by_norm([&](double u) { return Term{detail::softplus(-beta * u), -beta * detail::sigmoid(-beta * u)}; });
        break;
      case DpoLoss::nca_pair:
        by_parts(
            [&](double x) {
              const double r = beta * x;
              return Term{detail::softplus(-r) + 0.5 * detail::softplus(r),
                          beta * (0.5 * detail::sigmoid(r) - detail::sigmoid(-r))};
            },
            [&](double x) {
              const double r = beta * x;
              return Term{0.5 * detail::softplus(r), 0.5 * beta * detail::sigmoid(r)};
            });
        break;
      case DpoLoss::bco_pair:
        by_parts(
            [&](double x) {
              const double r = beta * x - o.bco_pair_delta;
              return Term{detail::softplus(-r), -beta * detail::sigmoid(-r)};
            },
            [&](double x) {
              const double r = beta * x - o.bco_pair_delta;
              return Term{detail::softplus(r), beta * detail::sigmoid(r)};
            });
        break;
      case DpoLoss::sppo_hard:
        by_parts(
            [&](double x) {
              const double e = x - half_inv_beta;
              return Term{e * e, 2.0 * e};
            },
            [&](double x) {
              const double e = x + half_inv_beta;
              return Term{e * e, 2.0 * e};
            });
        break;
      case DpoLoss::apo_zero:
        by_parts([&](double x) { return Term{detail::sigmoid(-beta * x), -beta * detail::sigmoid_grad(beta * x)}; },
                 [&](double x) { return Term{detail::sigmoid(beta * x), beta * detail::sigmoid_grad(beta * x)}; });
        break;
      case DpoLoss::aot: by_sorted(pw - pl, rw - rl, true); break;
      case DpoLoss::aot_unpaired: by_sorted(dw, dl, false); break;
      case DpoLoss::sft: nll_weight += wk; break;
    }
  }
  if (need_nll) res.nll = detail::add_token_mean_nll(pw, nw, nll_weight, loss, gw, batch);
  if (o.rpo_eta > 0.0) {
    loss -= (o.rpo_eta * beta) * pw;
    gw.array() -= o.rpo_eta * beta;
  }
  detail::finish_paired(o, res, beta * dw, beta * dl, std::move(loss), std::move(gw), std::move(gl));
  return res;
}

}  // namespace detail

// losskit::dpo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, options) -> PreferenceResult
// All four are vectors with one summed log-prob per pair (float or double). See the top of this file.
template <class PC, class PR, class RC, class RR>
inline PreferenceResult dpo(const Eigen::DenseBase<PC>& policy_chosen, const Eigen::DenseBase<PR>& policy_rejected,
                            const Eigen::DenseBase<RC>& ref_chosen, const Eigen::DenseBase<RR>& ref_rejected,
                            const DpoOptions& o = {}) {
  const char* fn = "dpo";
  return detail::dpo_impl(fn, detail::paired_inputs(fn, policy_chosen, policy_rejected, ref_chosen, ref_rejected), o);
}

}  // namespace losskit
