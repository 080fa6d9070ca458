#pragma once
// DPO from logits in one call: the policy's and the reference's summed completion log-probs, the
// loss (dpo.hpp, every option), and the gradient w.r.t. the policy logits, with each pair's
// backward written while the next pair is read (preference/sequence_pair_step.hpp): 3 reads and
// 1 write of [rows, V] in one pass, where sequence_logprobs + dpo + sequence_logprobs_backward
// take a forward pass and a backward pass.
//
//   dpo_step(policy_logits, ref_logits, targets, layout, grad, dpo_options, sequence_options)
//     = the same as
//   f = sequence_logprobs(policy_logits, ref_logits, targets, layout, sequence_options)
//       (or the two one-input calls: the same sums)
//   r = dpo(f.sum.head(P), f.sum.tail(P), f.ref_sum.head(P), f.ref_sum.tail(P), dpo_options)
//   sequence_logprobs_backward(policy_logits, targets, layout, [r.d_policy_chosen; r.d_policy_rejected],
//                              grad, sequence_options, f)
// bit for bit (tested), with the layout of TRL's concatenated batch: sequences 0..P-1 the chosen
// completions, P..2P-1 the rejected ones, pair p = (p, P + p).
//
// Each pair's derivatives come from dpo() on that pair alone (with the whole batch's
// denominator, and for the token-mean NLL of sft / rpo_alpha the batch's pair count and chosen
// tokens, which is all its gradient depends on), as soon as its sums are known. aot and
// aot_unpaired sort across the batch, so a pair's gradient needs every pair: they are rejected
// (std::invalid_argument; use the three calls above). Lengths for ipo, sigmoid_norm and the NLL
// come from dpo_options as for dpo() (e.g. f.tokens of an earlier call, or the mask's counts).
// Every argument is checked before anything is written.

#include <cstdint>

#include "losskit/preference/dpo.hpp"
#include "losskit/preference/sequence_pair_step.hpp"

namespace losskit {

struct DpoStepResult {
  PreferenceResult loss;      // dpo() over the sums below (value, rewards, margins, accuracy, ...)
  SequenceLogprobs logprobs;  // per sequence: sum, mean, tokens, ref_sum, ref_mean; per row: lse, ref_lse
};

namespace detail {

inline void check_dpo_step_types(const char* fn, const DpoOptions& o) {
  for (DpoLoss t : o.loss_types)
    if (t == DpoLoss::aot || t == DpoLoss::aot_unpaired)
      fail(fn, "loss type '", dpo_loss_name(t), "' sorts across the batch, so a pair's gradient cannot be "
           "written before the whole batch is read; use sequence_logprobs, dpo and sequence_logprobs_backward");
}

// The batch's pairs and chosen tokens when the loss has the NLL term (sft, rpo_alpha), as dpo()
// sums them; null otherwise.
inline const NllBatch* nll_batch(const DpoOptions& o, std::int64_t pairs, NllBatch& b) {
  bool nll = o.rpo_alpha > 0.0;
  for (DpoLoss t : o.loss_types) nll |= t == DpoLoss::sft;
  if (!nll) return nullptr;
  b.pairs = double(pairs);
  b.tokens = values_vector("dpo_step", "chosen_lengths", o.chosen_lengths, pairs, "policy_chosen").sum();
  return &b;
}

// The options of one pair's dpo() call: its lengths, and the batch's denominator.
inline DpoOptions pair_dpo_options(const DpoOptions& o, std::int64_t pairs, std::int64_t p) {
  DpoOptions q = o;
  q.normalizer = o.normalizer > 0.0 ? o.normalizer : o.reduction == Reduction::mean ? double(pairs) : 1.0;
  q.reduction = Reduction::sum;
  if (!o.chosen_lengths.empty()) q.chosen_lengths = o.chosen_lengths.slice(std::size_t(p), 1);
  if (!o.rejected_lengths.empty()) q.rejected_lengths = o.rejected_lengths.slice(std::size_t(p), 1);
  return q;
}

}  // namespace detail

template <class L, class R, class G, detail::enable_rows_t<R> = 0, detail::enable_rows_t<G> = 0>
inline DpoStepResult dpo_step(const L& policy_logits, const R& ref_logits, const Labels& targets,
                              const SequenceLayout& layout, G&& grad, const DpoOptions& options = {},
                              const SequenceLogprobOptions& sequence_options = {}) {
  const char* fn = "dpo_step";
  detail::check_dpo_step_types(fn, options);
  const std::int64_t P = detail::pair_count(fn, layout);
  {  // every DPO option against a batch of P pairs (zeros), before anything is written
    const Eigen::VectorXd zero = Eigen::VectorXd::Zero(P);
    detail::dpo_impl(fn, detail::PairedInputs{zero, zero, zero, zero, P}, options);
  }
  detail::NllBatch nll;
  const detail::NllBatch* batch = detail::nll_batch(options, P, nll);
  auto pair_grad = [&options, P, batch](const PairLogprobs& s) {
    Eigen::Matrix<double, 1, 1> w, l, rw, rl;
    w[0] = s.chosen;
    l[0] = s.rejected;
    rw[0] = s.ref_chosen;
    rl[0] = s.ref_rejected;
    const PreferenceResult r =
        detail::dpo_impl("dpo_step", detail::PairedInputs{w, l, rw, rl, 1}, detail::pair_dpo_options(options, P, s.pair),
                         batch);
    return PairUpstream{r.d_policy_chosen[0], r.d_policy_rejected[0]};
  };
  DpoStepResult out;
  out.logprobs = sequence_pair_step(policy_logits, ref_logits, targets, layout, pair_grad, grad, sequence_options);
  const SequenceLogprobs& f = out.logprobs;
  out.loss = detail::dpo_impl(fn, detail::PairedInputs{f.sum.head(P), f.sum.tail(P), f.ref_sum.head(P), f.ref_sum.tail(P), P},
                              options);
  return out;
}

}  // namespace losskit
