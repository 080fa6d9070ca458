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
// AlphaPO numerics: with a = -alpha x, e^a overflows once x < -709 / alpha (alpha > 0, summed
// log-probs) while the loss and most gradients do not. So z = (e^(a_l) - e^(a_w)) / alpha is formed
// as sgn(d) e^(max a) (1 - e^(-|alpha d|)) / |alpha| (d = x_w - x_l; exactly 0 for x_w = x_l, no
// inf - inf) and dL/dz e^a as sgn(dL/dz) e^(log |dL/dz| + a) where e^a or dL/dz is out of range
// (log |dL/dz| from log s(-v) for sigmoid / simpo with e = 0, v = beta z - gamma; from log |z|
// for ipo when z overflowed). Value and gradient are then finite for every finite input where the
// exact ones are representable, and otherwise the exact +-inf (e.g. x_w = x_l = -1e5, alpha 0.1:
// value log 2, d/dpi_w = -inf) or 0 (e^(a - beta z) underflowing), never NaN from 0 * inf.
// Rewards (TRL): beta r(x_w), beta r(x_l) (-inf once r overflows); margins beta z and accuracy
// (z > 0, i.e. reward_w > reward_l) come from z, so they stay meaningful where both rewards are -inf.
// Lengths: averaging needs chosen_lengths and rejected_lengths, each > 0; cpo_alpha > 0 needs
// chosen_lengths with a positive sum; otherwise they may be empty. Defaults: TRL CPOConfig (beta 0.1,
// sigmoid, label_smoothing 0, simpo_gamma 0.5, cpo_alpha 1, alpha 0).
// Options the loss type does not read are rejected (std::invalid_argument naming the option and the
// loss type): label_smoothing != 0 with hinge or ipo, simpo_gamma != 0.5 with sigmoid, hinge or ipo.
// TRL's CPOTrainer warns about label_smoothing with hinge / ipo and ignores it.

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>

#include "losskit/core/scalar_math.hpp"
#include "losskit/preference/preference_common.hpp"

namespace losskit {

enum class CpoLoss { sigmoid, hinge, ipo, simpo };

struct CpoOptions {
  double beta = 0.1;
  CpoLoss loss_type = CpoLoss::sigmoid;
  double label_smoothing = 0.0;            // cDPO-style smoothing of sigmoid and simpo (must be 0 otherwise)
  double simpo_gamma = 0.5;                // simpo margin gamma (must stay 0.5 for the other types)
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
  bool gamma_set;          // gamma is not its default (an error unless the type is simpo)
  double cpo_alpha;
  double alpha;            // AlphaPO
};

// The AlphaPO margin z = r(x_w) - r(x_l) = (e^(a_l) - e^(a_w)) / alpha, a = -alpha x, as
// sgn(d) e^(max a) (1 - e^(-|alpha d|)) / |alpha| with d = x_w - x_l: no cancellation between the
// two rewards, 0 exactly when x_w = x_l, and +-inf only when |z| itself overflows (its log, log_abs,
// stays finite then).
struct AlphaMargin {
  double z;
  double log_abs;  // log |z|
};
inline AlphaMargin alpha_margin(double xw, double xl, double alpha) {
  const double d = xw - xl, hi = std::max(-alpha * xw, -alpha * xl);
  const double f = -std::expm1(-std::fabs(alpha * d)) / std::fabs(alpha);  // in [0, |d|]
  const double log_abs = hi + std::log(f);
  return {std::copysign(hi <= 700.0 ? std::exp(hi) * f : std::exp(log_abs), d), log_abs};
}

// g e^a (the chain rule dL/dz r'(x)) given lg = log |g| (-inf only when g is exactly 0): 0 then,
// whatever a; g e^a directly while g is a normal number and e^a cannot overflow; else e^(lg + a)
// with g's sign, which is finite whenever the product is (g may have overflowed or underflowed).
inline double times_exp(double g, double lg, double a) {
  if (lg == -HUGE_VAL) return 0.0;
  if (std::isfinite(g) && std::fabs(g) >= std::numeric_limits<double>::min() && a <= 700.0) return g * std::exp(a);
  return std::copysign(std::exp(lg + a), g);
}

// The shared body of cpo and simpo.
template <class PC, class PR, class Options>
inline PreferenceResult reference_free(const char* fn, const Eigen::DenseBase<PC>& policy_chosen,
                                       const Eigen::DenseBase<PR>& policy_rejected, const Values& chosen_lengths,
                                       const Values& rejected_lengths, const Options& o, const ReferenceFreeSpec& spec) {
  const CpoLoss type = spec.type;
  const bool average = spec.average;
  const double gamma = spec.gamma, cpo_alpha = spec.cpo_alpha, alpha = spec.alpha;
  const PairedInputs in = paired_inputs(fn, policy_chosen, policy_rejected);
  const Eigen::VectorXd &pw = in.chosen, &pl = in.rejected;
  const Eigen::Index n = in.n;
  check_positive(fn, "beta", o.beta);
  if (int(type) < int(CpoLoss::sigmoid) || int(type) > int(CpoLoss::simpo))
    fail(fn, "unknown 'loss_type' ", int(type));
  check_in(fn, "label_smoothing", o.label_smoothing, 0.0, 1.0, false, false);
  check_finite(fn, spec.gamma_name, gamma);
  if (o.label_smoothing != 0.0 && (type == CpoLoss::hinge || type == CpoLoss::ipo))
    fail(fn, "'label_smoothing' is ", o.label_smoothing, ", but loss_type '", type == CpoLoss::hinge ? "hinge" : "ipo",
         "' does not read it (sigmoid and simpo do); set it to 0");
  if (spec.gamma_set && type != CpoLoss::simpo)
    fail(fn, "'", spec.gamma_name, "' is ", gamma, ", but loss_type '",
         type == CpoLoss::sigmoid ? "sigmoid" : type == CpoLoss::hinge ? "hinge" : "ipo",
         "' does not read it (simpo does); leave it at its default");
  check_nonnegative(fn, "cpo_alpha", cpo_alpha);
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
  Eigen::VectorXd loss(n), gw(n), gl(n), rw(n), rl(n), z(n);
  for (Eigen::Index i = 0; i < n; ++i) {
    const double xw = average ? pw[i] / nw[i] : pw[i], xl = average ? pl[i] / nl[i] : pl[i];
    // Margin z = r(x_w) - r(x_l) and log |z| (for ipo's chain rule once z overflows).
    const AlphaMargin m =
        alpha == 0.0 ? AlphaMargin{xw - xl, std::log(std::fabs(xw - xl))} : alpha_margin(xw, xl, alpha);
    rw[i] = alpha == 0.0 ? xw : -std::expm1(-alpha * xw) / alpha;
    rl[i] = alpha == 0.0 ? xl : -std::expm1(-alpha * xl) / alpha;
    z[i] = m.z;
    // dL/dz, and dL/dx_w = dL/dz e^(a_w), dL/dx_l = -dL/dz e^(a_l) with a = -alpha x (0 for alpha = 0).
    double value = 0.0, dxw = 0.0, dxl = 0.0;
    const double aw = alpha == 0.0 ? 0.0 : -alpha * xw, al = alpha == 0.0 ? 0.0 : -alpha * xl;
    switch (type) {
      case CpoLoss::sigmoid:
      case CpoLoss::simpo: {
        const double v = beta * m.z - (type == CpoLoss::simpo ? gamma : 0.0);
        const Term t = cdpo_term(v, eps);
        value = t.value;
        const double dz = beta * t.grad;
        // log |dz|: with e = 0 (or 1) dz = -beta s(-v) (beta s(v)) underflows to 0 for large |v|
        // while e^a may overflow: take it from log s.
        const double ldz = eps == 0.0   ? std::log(beta) + log_sigmoid(-v)
                           : eps == 1.0 ? std::log(beta) + log_sigmoid(v)
                                        : std::log(std::fabs(dz));
        dxw = times_exp(dz, ldz, aw);
        dxl = -times_exp(dz, ldz, al);
        break;
      }
      case CpoLoss::hinge: {
        value = beta * m.z < 1.0 ? 1.0 - beta * m.z : (std::isnan(m.z) ? m.z : 0.0);
        const double dz = beta * m.z < 1.0 ? -beta : 0.0;
        const double ldz = dz == 0.0 ? -HUGE_VAL : std::log(beta);
        dxw = times_exp(dz, ldz, aw);
        dxl = -times_exp(dz, ldz, al);
        break;
      }
      case CpoLoss::ipo: {
        const double e = m.z - 0.5 / beta, dz = 2.0 * e;
        value = e * e;
        // log |dz|; when z overflowed, |dz| = 2 |z| (1 - 1 / (2 beta z)) -> 2 |z|.
        const double ldz = std::isfinite(dz) ? std::log(std::fabs(dz)) : std::log(2.0) + m.log_abs;
        dxw = times_exp(dz, ldz, aw);
        dxl = -times_exp(dz, ldz, al);
        break;
      }
    }
    loss[i] = value;
    gw[i] = dxw / (average ? nw[i] : 1.0);
    gl[i] = dxl / (average ? nl[i] : 1.0);
  }
  PreferenceResult res;
  if (need_nll) res.nll = add_token_mean_nll(pw, nw, cpo_alpha, loss, gw);
  finish_paired(o, res, beta * rw, beta * rl, beta * z, std::move(loss), std::move(gw), std::move(gl));
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
                                {o.loss_type, average, o.simpo_gamma, "simpo_gamma",
                                 o.simpo_gamma != CpoOptions{}.simpo_gamma, o.cpo_alpha, o.alpha});
}

}  // namespace losskit
