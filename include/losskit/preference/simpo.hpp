#pragma once
// SimPO (Meng et al. 2405.14734), reference-free, on length-averaged log-probs (Liger-Kernel
// chunked_loss/simpo_loss.py; TRL trl/experimental/cpo with loss_type="simpo").
//
// Per pair: x_w = pi_w / n_w, x_l = pi_l / n_l (pi summed over the completion, n its token count),
//   u = beta (x_w - x_l) - gamma,   L = (1 - e) sp(-u) + e sp(u)   (e = label_smoothing, sp = softplus)
//   dL/dpi_w = beta (e s(u) - (1 - e) s(-u)) / n_w,   dL/dpi_l = -beta (e s(u) - (1 - e) s(-u)) / n_l
// plus cpo_alpha * NLL with NLL = -sum_i pi_w,i / sum_i n_w,i (token-mean cross entropy of the chosen
// completions; Liger's `alpha`, TRL's `cpo_alpha`). Both references default it to 1; the paper's pure
// SimPO is cpo_alpha = 0.
// Rewards: beta x_w, beta x_l. Defaults: beta 0.1, gamma 0.5, label_smoothing 0 (Liger, TRL); the
// paper recommends larger beta (about 2 to 2.5) with gamma / beta about 0.5.
// chosen_lengths and rejected_lengths are required, every one > 0 (std::invalid_argument otherwise).
// Same computation as losskit::cpo with loss_type simpo and averaged log-probs.

#include "losskit/preference/cpo.hpp"

namespace losskit {

struct SimpoOptions {
  double beta = 0.1;
  double gamma = 0.5;            // target reward margin (TRL: simpo_gamma)
  double label_smoothing = 0.0;
  double cpo_alpha = 1.0;        // NLL weight (Liger: alpha); 0 for the paper's SimPO
  Reduction reduction = Reduction::mean;
  double normalizer = 0.0;
  double grad_scale = 1.0;
};

// losskit::simpo(policy_chosen, policy_rejected, chosen_lengths, rejected_lengths, options) -> PreferenceResult
template <class PC, class PR>
inline PreferenceResult simpo(const Eigen::DenseBase<PC>& policy_chosen, const Eigen::DenseBase<PR>& policy_rejected,
                              const Values& chosen_lengths, const Values& rejected_lengths,
                              const SimpoOptions& o = {}) {
  return detail::reference_free("simpo", policy_chosen, policy_rejected, chosen_lengths, rejected_lengths, o,
                                {CpoLoss::simpo, true, o.gamma, "gamma", false, o.cpo_alpha, 0.0});
}

}  // namespace losskit
