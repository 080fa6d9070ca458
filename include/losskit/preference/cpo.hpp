#pragma once
// CPO (Xu et al. 2401.08417) and its TRL loss types, reference-free (huggingface/trl
// trl/experimental/cpo/cpo_trainer.py `cpo_loss`, CPOConfig; Liger-Kernel chunked_loss/cpo_loss.py).
//
// Per pair, with x = pi (the summed log-prob) or pi / n (averaged; TRL averages for ipo and simpo,
// Liger's `average_log_prob` defaults to false), and the AlphaPO reward (alpha != 0, TRL `alpha`)
//   r(x) = (1 - e^(-alpha x)) / alpha   (r(x) = x for alpha = 0),   r'(x) = e^(-alpha x),
//   z = r(x_w) - r(x_l),  cdpo_e(v) = (1 - e) sp(-v) + e sp(v),  e = label_smoothing, sp = softplus:
//   sigmoid   cdpo_e(beta z)                 d/dz = beta (e s(beta z) - (1 - e) s(-beta z))
//   hinge     max(0, 1 - beta z)             d/dz = -beta for beta z < 1, else 0
//   ipo       (z - 1 / (2 beta))^2           d/dz = 2 (z - 1 / (2 beta))
//   simpo     cdpo_e(beta z - gamma)         (gamma = simpo_gamma; TRL writes beta (z - gamma / beta))
// plus cpo_alpha * NLL, NLL = -sum_i pi_w,i / sum_i n_w,i (the token-mean cross entropy of the chosen
// completions, TRL's nn.CrossEntropyLoss over chosen labels, Liger's nll / non-ignored chosen tokens),
// added to every pair so that the mean over pairs gets it once.
// d/dpi_w = dL/dz r'(x_w) / n_w (or without / n_w when summed) - cpo_alpha * n_pairs / sum n_w (in the
// sum over pairs); d/dpi_l = -dL/dz r'(x_l) [/ n_l].
// Rewards (TRL): beta r(x_w), beta r(x_l); accuracy: reward_w > reward_l.
// Lengths: averaging needs chosen_lengths and rejected_lengths, each > 0; cpo_alpha > 0 needs
// chosen_lengths with a positive sum; otherwise they may be empty. Defaults: TRL CPOConfig (beta 0.1,
// sigmoid, label_smoothing 0, simpo_gamma 0.5, cpo_alpha 1, alpha 0).

#include <cmath>
#include <optional>

#include "losskit/core/scalar_math.hpp"
#include "losskit/preference/preference_common.hpp"

namespace losskit {

enum class CpoLoss { sigmoid, hinge, ipo, simpo };

struct CpoOptions {
  double beta = 0.1;
  CpoLoss loss_type = CpoLoss::sigmoid;
  double label_smoothing = 0.0;            // cDPO-style smoothing of sigmoid and simpo
  double simpo_gamma = 0.5;                // simpo margin gamma
  double cpo_alpha = 1.0;                  // weight of the chosen token-mean NLL (Liger: alpha); 0: none
  double alpha = 0.0;                      // AlphaPO reward shape; 0: plain log-probs
  std::optional<bool> average_log_prob{};  // unset: TRL's choice (average for ipo and simpo)
  Reduction reduction = Reduction::mean;
  double normalizer = 0.0;
  double grad_scale = 1.0;
};

namespace detail {

// What distinguishes cpo and simpo calls of the shared body.
struct ReferenceFreeSpec {
  CpoLoss type;
  bool average;            // x = pi / n instead of pi
  double gamma;            // simpo margin
  const char* gamma_name;  // its option name, for messages
  double cpo_alpha;
  double alpha;            // AlphaPO
};

// The shared body of cpo and simpo.
template <class PC, class PR, class Options>
inline PreferenceResult reference_free(const char* fn, const Eigen::DenseBase<PC>& policy_chosen,
                                       const Eigen::DenseBase<PR>& policy_rejected, const Values& chosen_lengths,
                                       const Values& rejected_lengths, const Options& o, const ReferenceFreeSpec& spec) {
  const CpoLoss type = spec.type;
  const bool average = spec.average;
  const double gamma = spec.gamma, cpo_alpha = spec.cpo_alpha, alpha = spec.alpha;
  const Eigen::VectorXd pw = to_vector(fn, "policy_chosen", policy_chosen);
  const Eigen::VectorXd pl = to_vector(fn, "policy_rejected", policy_rejected);
  const Eigen::Index n = pw.size();
  if (n == 0) fail(fn, "'policy_chosen' is empty: the batch needs at least one pair");
  check_size(fn, "policy_rejected", pl.size(), "policy_chosen", n);
  check_positive(fn, "beta", o.beta);
  if (int(type) < int(CpoLoss::sigmoid) || int(type) > int(CpoLoss::simpo))
    fail(fn, "unknown 'loss_type' ", int(type));
  check_in(fn, "label_smoothing", o.label_smoothing, 0.0, 1.0, false, false);
  check_finite(fn, spec.gamma_name, gamma);
  if (!(cpo_alpha >= 0.0) || !std::isfinite(cpo_alpha)) fail(fn, "'cpo_alpha' must be finite and >= 0, got ", cpo_alpha);
  check_finite(fn, "alpha", alpha);
  check_reduction(fn, o);
  const bool need_nll = cpo_alpha > 0.0;
  const char* why = average ? "averaging the log-probs" : "the NLL term (cpo_alpha > 0)";
  Eigen::VectorXd nw = Eigen::VectorXd::Ones(n), nl = Eigen::VectorXd::Ones(n);
  if (average || need_nll || !chosen_lengths.empty())
    nw = lengths_vector(fn, "chosen_lengths", chosen_lengths, n, "policy_chosen", average, why);
  if (average || !rejected_lengths.empty())
    nl = lengths_vector(fn, "rejected_lengths", rejected_lengths, n, "policy_chosen", average, why);
  if (need_nll) check_chosen_tokens(fn, nw, why);

  const double beta = o.beta, eps = o.label_smoothing;
  // x -> (r(x), r'(x))
  auto reward = [alpha](double x, double& slope) {
    if (alpha == 0.0) {
      slope = 1.0;
      return x;
    }
    slope = std::exp(-alpha * x);
    return -std::expm1(-alpha * x) / alpha;
  };
  Eigen::VectorXd loss(n), gw(n), gl(n), rw(n), rl(n);
  for (Eigen::Index i = 0; i < n; ++i) {
    const double xw = average ? pw[i] / nw[i] : pw[i], xl = average ? pl[i] / nl[i] : pl[i];
    double sw = 0.0, sl = 0.0;
    rw[i] = reward(xw, sw);
    rl[i] = reward(xl, sl);
    const double z = rw[i] - rl[i];
    double value = 0.0, dz = 0.0;
    switch (type) {
      case CpoLoss::sigmoid:
      case CpoLoss::simpo: {
        const Term t = cdpo_term(beta * z - (type == CpoLoss::simpo ? gamma : 0.0), eps);
        value = t.value;
        dz = beta * t.grad;
        break;
      }
      case CpoLoss::hinge:
        value = beta * z < 1.0 ? 1.0 - beta * z : (std::isnan(z) ? z : 0.0);
        dz = beta * z < 1.0 ? -beta : 0.0;
        break;
      case CpoLoss::ipo: {
        const double e = z - 0.5 / beta;
        value = e * e;
        dz = 2.0 * e;
        break;
      }
    }
    loss[i] = value;
    gw[i] = dz * sw / (average ? nw[i] : 1.0);
    gl[i] = -dz * sl / (average ? nl[i] : 1.0);
  }
  PreferenceResult res;
  if (need_nll) res.nll = add_token_mean_nll(pw, nw, cpo_alpha, loss, gw);
  finish_paired(o, res, beta * rw, beta * rl, std::move(loss), std::move(gw), std::move(gl));
  return res;
}

}  // namespace detail

// losskit::cpo(policy_chosen, policy_rejected, chosen_lengths, rejected_lengths, options) -> PreferenceResult
// Summed log-probs per pair (vectors); lengths = completion token counts (may be empty when unused).
template <class PC, class PR>
inline PreferenceResult cpo(const Eigen::DenseBase<PC>& policy_chosen, const Eigen::DenseBase<PR>& policy_rejected,
                            const Values& chosen_lengths, const Values& rejected_lengths, const CpoOptions& o = {}) {
  const bool average = o.average_log_prob.value_or(o.loss_type == CpoLoss::ipo || o.loss_type == CpoLoss::simpo);
  return detail::reference_free("cpo", policy_chosen, policy_rejected, chosen_lengths, rejected_lengths, o,
                                {o.loss_type, average, o.simpo_gamma, "simpo_gamma", o.cpo_alpha, o.alpha});
}

}  // namespace losskit
