#pragma once
// SparsePO (Christopoulou et al., 2410.05102): DPO with token-level masks on the reward and on the
// KL term (huawei-noah/HEBO SparsePO/src/trainers/sparse_trainer.py `get_batch_loss_metrics`,
// sparse_config.py).
//
// Inputs per token t (a flat vector over all tokens): the policy log-prob pi_t = log pi(y_t), the
// reference log-prob rho_t, and the token KL term
//   k_t = sum_v pi_ref(v) (log pi(v) - log pi_ref(v)) = -KL(pi_ref || pi) at that position  (<= 0;
//         note the sign: negate a KL(pi_ref || pi) and the gradient you get for it),
// the reward mask m^u_t and the KL mask m^d_t (given by the caller, e.g. SparsePO's mask network,
// or all ones when empty). The layout: sequence_offsets has 2B + 1 non-decreasing entries; chosen
// completion i is tokens [off[i], off[i+1]), rejected completion i is [off[B+i], off[B+i+1])
// (TRL's [chosen; rejected] batch order). Tokens outside [off[0], off[2B]) are ignored (zero
// gradient). With r_t = pi_t - rho_t, per pair i:
//   u = sum_{t in w} m^u_t r_t - sum_{t in l} m^u_t r_t,   d = sum_{t in w} m^d_t k_t - sum_{t in l} m^d_t k_t
//   L = sp(-beta (u - d)) + l1_u (|m^u_w|_1 + |m^u_l|_1) + l1_d (|m^d_w|_1 + |m^d_l|_1)
// (sp = softplus; the L1 norms run over the pair's tokens). With S = s(-beta (u - d)):
//   dL/dpi_t  = -beta S m^u_t (chosen), +beta S m^u_t (rejected)
//   dL/dk_t   = +beta S m^d_t (chosen), -beta S m^d_t (rejected)
//   dL/dm^u_t = -beta S r_t + l1_u sign(m^u_t) (chosen), +beta S r_t + l1_u sign(m^u_t) (rejected)
//   dL/dm^d_t = +beta S k_t + l1_d sign(m^d_t) (chosen), -beta S k_t + l1_d sign(m^d_t) (rejected)
// (sign(0) = 0, as torch's |x|). shared_mask (SparsePO rw_kl_independent = False): one mask for both;
// its gradient is the sum of the two and both L1 terms apply to it, as in the reference trainer.
// SparsePO's mask_on_reward / mask_on_kl = False are: that mask empty and its l1 coefficient 0. All
// masks 1 is the TDPO-style sequence form. Empty completions are allowed (their sums are 0).
// Rewards (as the reference trainer logs them): beta (sum_w m^u r + sum_w m^d k), and the same for
// the rejected side; accuracy: chosen > rejected. Defaults (SparseConfig): beta 0.1, l1 0.
// The gradients w.r.t. pi_t and k_t feed token_logprobs_backward (the KL term's logits gradient is
// dk_t/dz_v = pi_ref(v) - pi(v)).

#include <cmath>
#include <vector>

#include "losskit/core/scalar_math.hpp"
#include "losskit/preference/preference_common.hpp"

namespace losskit {

struct SparsePoOptions {
  double beta = 0.1;
  Values reward_mask{};          // m^u, one per token; empty: all ones
  Values kl_mask{};              // m^d, one per token; empty: all ones (must be empty with shared_mask)
  bool shared_mask = false;      // one mask (reward_mask) for reward and KL
  double l1_norm_param_u = 0.0;  // L1 weight of the reward mask
  double l1_norm_param_d = 0.0;  // L1 weight of the KL mask
  Reduction reduction = Reduction::mean;
  double normalizer = 0.0;
  double grad_scale = 1.0;
};

struct SparsePoResult : LossResult {
  Eigen::VectorXd chosen_rewards;   // per pair, see above
  Eigen::VectorXd rejected_rewards;
  Eigen::VectorXd margins;
  double accuracy = 0.0;
  Eigen::VectorXd u;                // per pair: masked reward margin
  Eigen::VectorXd d;                // per pair: masked KL margin
  Eigen::VectorXd d_policy_logps;   // per token: d value / d pi_t
  Eigen::VectorXd d_token_kl;       // per token: d value / d k_t
  Eigen::VectorXd d_reward_mask;    // per token: d value / d m^u_t (with shared_mask: of the one mask)
  Eigen::VectorXd d_kl_mask;        // per token: d value / d m^d_t (empty with shared_mask)
};

// losskit::sparse_po(policy_logps, reference_logps, token_kl, sequence_offsets, options) -> SparsePoResult
template <class P, class R, class K>
inline SparsePoResult sparse_po(const Eigen::DenseBase<P>& policy_logps, const Eigen::DenseBase<R>& reference_logps,
                                const Eigen::DenseBase<K>& token_kl, const Values& sequence_offsets,
                                const SparsePoOptions& o = {}) {
  const char* fn = "sparse_po";
  const Eigen::VectorXd pi = detail::to_vector(fn, "policy_logps", policy_logps);
  const Eigen::VectorXd rho = detail::to_vector(fn, "reference_logps", reference_logps);
  const Eigen::VectorXd kt = detail::to_vector(fn, "token_kl", token_kl);
  const Eigen::Index tokens = pi.size();
  detail::check_size(fn, "reference_logps", rho.size(), "policy_logps", tokens);
  detail::check_size(fn, "token_kl", kt.size(), "policy_logps", tokens);
  const std::size_t n_off = sequence_offsets.size();
  if (n_off < 3 || n_off % 2 == 0)
    detail::fail(fn, "'sequence_offsets' has ", n_off, " entries, expected 2 B + 1 (B >= 1 pairs: chosen then rejected)");
  std::vector<Eigen::Index> off(n_off);
  for (std::size_t j = 0; j < n_off; ++j) {
    const double v = sequence_offsets[j];
    if (!(v >= 0.0) || v != std::floor(v) || v > double(tokens))
      detail::fail(fn, "'sequence_offsets' must be integers in [0, ", tokens, "] (the tokens), got ", v, " at ", j);
    off[j] = Eigen::Index(v);
    if (j > 0 && off[j] < off[j - 1])
      detail::fail(fn, "'sequence_offsets' must be non-decreasing, got ", off[j - 1], " then ", off[j], " at ", j);
  }
  detail::check_positive(fn, "beta", o.beta);
  detail::check_nonnegative(fn, "l1_norm_param_u", o.l1_norm_param_u);
  detail::check_nonnegative(fn, "l1_norm_param_d", o.l1_norm_param_d);
  if (o.shared_mask && !o.kl_mask.empty())
    detail::fail(fn, "'kl_mask' must be empty with 'shared_mask' (the reward mask is used for both)");
  detail::check_reduction(fn, o);
  const Eigen::VectorXd mu = o.reward_mask.empty()
                                 ? Eigen::VectorXd::Ones(tokens)
                                 : detail::values_vector(fn, "reward_mask", o.reward_mask, tokens, "policy_logps");
  const Eigen::VectorXd md = o.shared_mask        ? mu
                             : o.kl_mask.empty() ? Eigen::VectorXd::Ones(tokens)
                                                 : detail::values_vector(fn, "kl_mask", o.kl_mask, tokens, "policy_logps");

  const Eigen::Index pairs = Eigen::Index(n_off / 2);
  const double beta = o.beta, l1u = o.l1_norm_param_u, l1d = o.l1_norm_param_d;
  const Eigen::VectorXd r = pi - rho;
  auto sign = [](double x) { return x > 0.0 ? 1.0 : x < 0.0 ? -1.0 : x; };  // NaN stays NaN
  SparsePoResult res;
  Eigen::VectorXd loss(pairs), u(pairs), d(pairs), rew_w(pairs), rew_l(pairs);
  Eigen::VectorXd gpi = Eigen::VectorXd::Zero(tokens), gk = Eigen::VectorXd::Zero(tokens);
  Eigen::VectorXd gmu = Eigen::VectorXd::Zero(tokens), gmd = Eigen::VectorXd::Zero(tokens);
  for (Eigen::Index i = 0; i < pairs; ++i) {
    const Eigen::Index side_begin[2] = {off[std::size_t(i)], off[std::size_t(pairs + i)]};
    const Eigen::Index side_end[2] = {off[std::size_t(i + 1)], off[std::size_t(pairs + i + 1)]};
    double su[2] = {0.0, 0.0}, sd[2] = {0.0, 0.0}, l1 = 0.0;
    for (int side = 0; side < 2; ++side)
      for (Eigen::Index t = side_begin[side]; t < side_end[side]; ++t) {
        su[side] += mu[t] * r[t];
        sd[side] += md[t] * kt[t];
        l1 += l1u * std::fabs(mu[t]) + l1d * std::fabs(md[t]);
      }
    u[i] = su[0] - su[1];
    d[i] = sd[0] - sd[1];
    const double z = beta * (u[i] - d[i]);
    loss[i] = detail::softplus(-z) + l1;
    rew_w[i] = beta * (su[0] + sd[0]);
    rew_l[i] = beta * (su[1] + sd[1]);
    const double bs = beta * detail::sigmoid(-z);
    for (int side = 0; side < 2; ++side) {
      const double sgn = side == 0 ? 1.0 : -1.0;  // chosen +, rejected -
      for (Eigen::Index t = side_begin[side]; t < side_end[side]; ++t) {
        gpi[t] = -sgn * bs * mu[t];
        gk[t] = sgn * bs * md[t];
        gmu[t] = -sgn * bs * r[t] + l1u * sign(mu[t]);
        gmd[t] = sgn * bs * kt[t] + l1d * sign(md[t]);
      }
    }
  }
  res.u = std::move(u);
  res.d = std::move(d);
  detail::set_rewards(res, std::move(rew_w), std::move(rew_l));
  if (o.shared_mask) {
    gmu += gmd;
    gmd.resize(0);
  }
  detail::reduce_items(o, res, std::move(loss), gpi, gk, gmu, gmd);
  res.d_policy_logps = std::move(gpi);
  res.d_token_kl = std::move(gk);
  res.d_reward_mask = std::move(gmu);
  res.d_kl_mask = std::move(gmd);
  return res;
}

}  // namespace losskit
