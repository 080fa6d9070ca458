#pragma once
// KTO (Ethayarajh et al. 2402.01306) over unpaired examples (huggingface/trl
// trl/trainer/kto_trainer.py `_compute_loss`, KTOConfig; Liger-Kernel chunked_loss/kto_loss.py).
//
// Desirable ("chosen") and undesirable ("rejected") examples come as two separate vectors (either may
// be empty); D = pi - rho (summed completion log-probs), s = sigmoid, s' = s(x) s(-x):
//   desirable    L = lambda_D (1 - s(beta (D - z0))) = lambda_D s(-beta (D - z0))
//                dL/dpi = -lambda_D beta s'(beta (D - z0))
//   undesirable  L = lambda_U (1 - s(beta (z0 - D))) = lambda_U s(beta (D - z0))
//                dL/dpi =  lambda_U beta s'(beta (D - z0))
// loss_type apo_zero_unpaired (TRL): the same with z0 = 0 (no reference point: giving z0,
// kl_policy or kl_reference with it is an std::invalid_argument rather than silently ignored).
// Value: the mean over all examples (TRL `losses.nanmean()` of the concatenation [desirable,
// undesirable]; Liger divides the sum by the full batch size: the same).
// The reference point z0 is a constant (detached):
//   - given by the caller in `z0` (Liger's `kl` argument; used as given), or
//   - estimated as TRL does from the log-probs of the mismatched completions (TRL pairs prompt i
//     with completion i - 1 of the batch): z0 = max(0, mean_j(kl_policy_j - kl_reference_j)). TRL
//     also averages this mean across processes before clamping; pass the global value in `z0` to
//     reproduce multi-process training.
// Exactly one of the two must be given for loss_type kto. Rewards: beta D (TRL).
// Defaults (TRL KTOConfig): beta 0.1, desirable_weight = undesirable_weight = 1. TRL warns unless
// lambda_D n_D / (lambda_U n_U) is in [1, 4/3]; we do not.

#include <cmath>
#include <optional>

#include "losskit/core/scalar_math.hpp"
#include "losskit/preference/preference_common.hpp"

namespace losskit {

enum class KtoLoss { kto, apo_zero_unpaired };

struct KtoOptions {
  double beta = 0.1;
  double desirable_weight = 1.0;
  double undesirable_weight = 1.0;
  KtoLoss loss_type = KtoLoss::kto;
  // kto only (apo_zero_unpaired rejects them): z0, or kl_policy and kl_reference to estimate it.
  std::optional<double> z0{};  // the reference point, if the caller has it
  Values kl_policy{};          // else: summed log-probs of the mismatched completions under the policy
  Values kl_reference{};       // ... and under the reference model (same length)
  Reduction reduction = Reduction::mean;
  double normalizer = 0.0;
  double grad_scale = 1.0;
};

// losskit::kto(policy_chosen, policy_rejected, ref_chosen, ref_rejected, options) -> UnpairedPreferenceResult
// Chosen = desirable, rejected = undesirable examples (independent sizes, not pairs).
template <class PC, class PR, class RC, class RR>
inline UnpairedPreferenceResult kto(const Eigen::DenseBase<PC>& policy_chosen, const Eigen::DenseBase<PR>& policy_rejected,
                                    const Eigen::DenseBase<RC>& ref_chosen, const Eigen::DenseBase<RR>& ref_rejected,
                                    const KtoOptions& o = {}) {
  const char* fn = "kto";
  Eigen::VectorXd dc, dr;
  detail::unpaired_inputs(fn, policy_chosen, policy_rejected, ref_chosen, ref_rejected, dc, dr);
  detail::check_positive(fn, "beta", o.beta);
  detail::check_nonnegative(fn, "desirable_weight", o.desirable_weight);
  detail::check_nonnegative(fn, "undesirable_weight", o.undesirable_weight);
  if (o.loss_type != KtoLoss::kto && o.loss_type != KtoLoss::apo_zero_unpaired)
    detail::fail(fn, "unknown 'loss_type' ", int(o.loss_type));
  detail::check_reduction(fn, o);
  double z0 = 0.0;
  const bool estimate = !o.kl_policy.empty() || !o.kl_reference.empty();
  if (o.loss_type == KtoLoss::apo_zero_unpaired && (o.z0 || estimate))
    detail::fail(fn, "'", o.z0 ? "z0" : !o.kl_policy.empty() ? "kl_policy" : "kl_reference",
                 "' is given, but loss_type 'apo_zero_unpaired' has no reference point (z0 = 0) and would ignore "
                 "it; leave 'z0', 'kl_policy' and 'kl_reference' unset");
  if (o.loss_type == KtoLoss::kto) {
    if (o.z0 && estimate) detail::fail(fn, "give either 'z0' or 'kl_policy' / 'kl_reference', not both");
    if (!o.z0 && !estimate)
      detail::fail(fn, "the reference point is missing: set 'z0', or 'kl_policy' and 'kl_reference' (the summed "
                   "log-probs of mismatched prompt/completion pairs)");
    if (o.z0) {
      z0 = *o.z0;
      detail::check_finite(fn, "z0", z0);
    } else {
      if (o.kl_policy.empty()) detail::fail(fn, "'kl_policy' is empty");
      const Eigen::Index m = Eigen::Index(o.kl_policy.size());
      const Eigen::VectorXd kp = detail::values_vector(fn, "kl_policy", o.kl_policy, m, "kl_policy");
      const Eigen::VectorXd kr = detail::values_vector(fn, "kl_reference", o.kl_reference, m, "kl_policy");
      const double mean = (kp - kr).mean();
      z0 = mean > 0.0 ? mean : (std::isnan(mean) ? mean : 0.0);  // clamp(min = 0), NaN stays NaN
    }
  }

  const double beta = o.beta;
  Eigen::VectorXd lc(dc.size()), gc(dc.size()), lr(dr.size()), gr(dr.size());
  for (Eigen::Index i = 0; i < dc.size(); ++i) {
    const double u = beta * (dc[i] - z0);
    lc[i] = o.desirable_weight * detail::sigmoid(-u);
    gc[i] = -o.desirable_weight * beta * detail::sigmoid_grad(u);
  }
  for (Eigen::Index i = 0; i < dr.size(); ++i) {
    const double u = beta * (dr[i] - z0);
    lr[i] = o.undesirable_weight * detail::sigmoid(u);
    gr[i] = o.undesirable_weight * beta * detail::sigmoid_grad(u);
  }
  return detail::finish_unpaired(o, beta, dc, dr, z0, lc, lr, std::move(gc), std::move(gr));
}

}  // namespace losskit
