#pragma once
// ORPO (Hong et al. 2403.07691), reference-free odds-ratio loss (huggingface/trl
// trl/experimental/orpo/orpo_trainer.py `odds_ratio_loss`, ORPOConfig; Liger-Kernel
// chunked_loss/orpo_loss.py).
//
// Per pair: x = pi / n, the average log-prob of a completion (x <= 0), and with
// A = log(1 - e^x_w), C = log(1 - e^x_l) (log1mexp: log1p(-e^x) for x < -ln 2, else log(-expm1(x)),
// TRL's stable form; Liger uses log1p(-exp(x)) everywhere, which loses precision near x = 0):
//   lo = (x_w - A) - (x_l - C)          log odds(y_w) - log odds(y_l)
//   L  = NLL - lambda log s(lo) = NLL + lambda sp(-lo)        (lambda = beta, sp = softplus)
//   dL/dx_w = -lambda s(-lo) / (1 - e^x_w) = -lambda exp(-logaddexp(A, x_w - x_l + C))
//   dL/dx_l =  lambda s(-lo) / (1 - e^x_l) =  lambda exp(-logaddexp(C, C + lo))
// (the log-space forms stay finite when x_w -> 0-, where lo -> +inf and 1 - e^x_w -> 0), and
// d/dpi = d/dx / n. NLL = -sum_i pi_w,i / sum_i n_w,i is the token-mean cross entropy of the chosen
// completions over the batch (TRL `policy_nll_loss`, Liger `compute_nll_loss`), with weight 1, added to
// every pair so the mean over pairs gets it once (compute_nll_loss = false drops it).
// Edge cases: x_w = 0 (a chosen completion of probability 1) gives L = NLL and a finite gradient;
// x_l = 0 gives +inf (the odds of the rejected completion are infinite); an average log-prob > 0 is
// not a log-probability: std::invalid_argument. Lengths are required, every one > 0.
// Result: rewards beta x_w, beta x_l (TRL), accuracy, and TRL's two metrics log_odds_ratio =
// mean log s(lo) and log_odds_chosen = mean lo. Default beta = 0.1 (TRL ORPOConfig, Liger).

#include <cmath>

#include "losskit/core/scalar_math.hpp"
#include "losskit/preference/preference_common.hpp"

namespace losskit {

struct OrpoOptions {
  double beta = 0.1;              // lambda, the weight of the odds-ratio term
  bool compute_nll_loss = true;   // add the chosen token-mean NLL (weight 1)
  Reduction reduction = Reduction::mean;
  double normalizer = 0.0;
  double grad_scale = 1.0;
};

struct OrpoResult : PreferenceResult {
  double log_odds_ratio = 0.0;   // mean over pairs of log s(lo)
  double log_odds_chosen = 0.0;  // mean over pairs of lo
};

// losskit::orpo(policy_chosen, policy_rejected, chosen_lengths, rejected_lengths, options) -> OrpoResult
// Summed log-probs per pair and the completion token counts.
template <class PC, class PR>
inline OrpoResult orpo(const Eigen::DenseBase<PC>& policy_chosen, const Eigen::DenseBase<PR>& policy_rejected,
                       const Values& chosen_lengths, const Values& rejected_lengths, const OrpoOptions& o = {}) {
  const char* fn = "orpo";
  const detail::PairedInputs in = detail::paired_inputs(fn, policy_chosen, policy_rejected);
  const Eigen::VectorXd &pw = in.chosen, &pl = in.rejected;
  const Eigen::Index n = in.n;
  detail::check_positive(fn, "beta", o.beta);
  detail::check_reduction(fn, o);
  const char* why = "ORPO (average log-probs)";
  const Eigen::VectorXd nw = detail::lengths_vector(fn, "chosen_lengths", chosen_lengths, n, "policy_chosen", true, why);
  const Eigen::VectorXd nl =
      detail::lengths_vector(fn, "rejected_lengths", rejected_lengths, n, "policy_chosen", true, why);
  const Eigen::VectorXd xw = pw.cwiseQuotient(nw), xl = pl.cwiseQuotient(nl);
  for (Eigen::Index i = 0; i < n; ++i) {
    if (xw[i] > 0.0) detail::fail(fn, "'policy_chosen' / 'chosen_lengths' is ", xw[i], " > 0 at index ", i, ": not a log-probability");
    if (xl[i] > 0.0) detail::fail(fn, "'policy_rejected' / 'rejected_lengths' is ", xl[i], " > 0 at index ", i, ": not a log-probability");
  }

  const double lambda = o.beta;
  Eigen::VectorXd loss(n), gw(n), gl(n);
  OrpoResult res;
  double sum_ratio = 0.0, sum_lo = 0.0;
  for (Eigen::Index i = 0; i < n; ++i) {
    const double a = detail::log1mexp(xw[i]), c = detail::log1mexp(xl[i]);
    const double lo = (xw[i] - a) - (xl[i] - c);
    loss[i] = lambda * detail::softplus(-lo);
    gw[i] = -lambda * std::exp(-detail::logaddexp(a, xw[i] - xl[i] + c)) / nw[i];
    gl[i] = lambda * std::exp(-detail::logaddexp(c, c + lo)) / nl[i];
    sum_ratio += detail::log_sigmoid(lo);
    sum_lo += lo;
  }
  res.log_odds_ratio = sum_ratio / double(n);
  res.log_odds_chosen = sum_lo / double(n);
  if (o.compute_nll_loss) res.nll = detail::add_token_mean_nll(pw, nw, 1.0, loss, gw);
  detail::finish_paired(o, res, lambda * xw, lambda * xl, std::move(loss), std::move(gw), std::move(gl));
  return res;
}

}  // namespace losskit
