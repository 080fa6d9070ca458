#pragma once
// The forward and backward of a paired preference loss from logits in one streaming call:
// sequence_logprobs, the pair loss, and sequence_logprobs_backward, with the backward of each
// pair written while the next pair is read.
//
// Layout: TRL's concatenated batch, 2P sequences, sequence p (p < P) the chosen completion of
// pair p and sequence P + p its rejected completion. Per pair p, in the order of the pairs:
//   1. the forward rows of both sequences (policy and, if given, reference logits, in one loop
//      per chunk: both exps, their sums and running maxima; as sequence_logprobs, without the KL
//      term k_t);
//   2. pair_grad(PairLogprobs) -> PairUpstream, the derivatives of the caller's loss w.r.t. the
//      pair's two summed policy log-probs (d_b of sequence_logprobs_backward);
//   3. the pair's gradient rows d_b w_t (1[v = y_t] - pi_t(v)) / T, each written inside the loop
//      of a later forward row (a put hook as exp_chunk's, core/softmax.hpp): the j-th queued
//      row rides in the next forward row, so the one pass over memory reads the policy row, the
//      reference row and an earlier policy row and writes that row's gradient (3 reads + 1
//      write, the least a loss whose coefficient needs the whole pair can move), with the three
//      exps of an element in one loop, instead of a forward loop bound by its exps and a
//      backward loop bound by memory. Rows still queued when the forward rows run out (the last
//      pair's, or a longer pair's remainder) are written as passes of their own. All three
//      streams are prefetched a chunk ahead (without it the pass is 30% slower).
// The results are those of the unfused calls, bit for bit: sums, lse and per-token values as
// sequence_logprobs (same loops, same order of the sums), gradient rows as
// sequence_logprobs_backward given that forward (the same formula per element; the target's
// entry in double). Tested against them.
//
// The pair loss sees one pair at a time, so only losses whose derivatives for pair p depend on
// pair p's sums (and on constants such as the number of pairs) fit: DPO's sigmoid, ipo, hinge,
// ... (dpo_step.hpp), not aot (a sort across the batch) or a batch-mean term. pair_grad is called
// once per pair from the thread that runs the pair (threads split the pairs into contiguous
// ranges), so it must be safe to call concurrently; it must not throw (the gradient would be
// left half written).
// Rows with w_t = 0 get an exact 0 and are never read; rows of a sequence whose upstream
// derivative is 0 get an exact 0 and are not read again for the backward. grad may be the logits matrix (in place). Options as
// sequence_logprobs (`entropy` and `per_token` too); the result has no kl_sum / token_kl.

#include <cstddef>
#include <cstdint>
#include <deque>
#include <utility>

#include "losskit/core/pending.hpp"
#include "losskit/preference/sequence_logprobs.hpp"

namespace losskit {

// One pair's summed log-probs, as pair_grad sees them (ref_*: 0 without reference logits).
struct PairLogprobs {
  std::int64_t pair = 0;
  double chosen = 0.0, rejected = 0.0;          // policy: sum_b of sequences p and P + p
  double ref_chosen = 0.0, ref_rejected = 0.0;  // reference: ref_sum_b
  double chosen_tokens = 0.0, rejected_tokens = 0.0;
};

// d loss / d chosen, d loss / d rejected (the summed policy log-probs of the pair).
struct PairUpstream {
  double chosen = 0.0, rejected = 0.0;
};

namespace detail {

// A gradient row waiting for a forward loop to carry it: its values and where they go.
template <class T>
struct QueuedGradRow {
  SoftmaxGradRow<T> row;
  PendingRow<T> out;
  template <class V>
  void put(std::size_t i) const {
    out.put(i, row.template value<V>(i));
  }
};

// P of a layout of 2P > 0 sequences (else std::invalid_argument).
inline std::int64_t pair_count(const char* fn, const SequenceLayout& layout) {
  const std::int64_t B = layout.sequences();
  if (B == 0 || B % 2 != 0)
    fail(fn, "'layout' has ", B, " sequences, expected 2P > 0: P chosen completions, then their P rejected ones");
  return B / 2;
}

template <class T, class PairGrad>
inline SequenceLogprobs run_pair_step(const SeqCall<T>& call, const SequenceLayout& layout,
                                      const SequenceLogprobOptions& o, PairGrad& pair_grad, const RowsView<T>& grad) {
  const std::ptrdiff_t rows = call.z.rows;
  const std::int64_t P = layout.sequences() / 2;
  const std::size_t n = call.cols();
  const bool ref = call.has_ref();
  ForwardRows f(rows, ref, false, o);
  SequenceLogprobs& out = f.out;
  out.tokens = sequence_tokens(layout, call.weight);
  out.sum = Eigen::VectorXd::Zero(2 * P);
  if (ref) out.ref_sum = Eigen::VectorXd::Zero(2 * P);
  // As run_backward: non-temporal stores for a large separate output.
  const bool stream = grad.data != call.z.data && streaming_output<T>(call.z.rows, call.z.cols);
  const T inv_t = T(call.inv_t);
  parallel_ranges(P, resolve_threads(call.threads, P), [&](int, std::ptrdiff_t pb, std::ptrdiff_t pe) {
    SeqScratch<T> w(call.z.cols);
    std::deque<QueuedGradRow<T>> queue;
    // One forward row, carrying the oldest queued gradient row if there is one.
    auto forward = [&](std::ptrdiff_t r) {
      const std::int64_t y = (*call.y)[std::size_t(r)];
      const T* z = call.z.row(r);
      const T* a = ref ? call.a.row(r) : nullptr;
      TokenStats s;
      if (queue.empty()) {
        s = token_stats<T, false>(w, z, a, n, inv_t, o.entropy, y, false);
      } else {
        const QueuedGradRow<T> g = queue.front();  // a local copy: the float stores cannot change it
        s = token_stats<T, false>(w, z, a, n, inv_t, o.entropy, y, false, [g](auto tag, std::size_t i) {
          using V = typename decltype(tag)::type;
          if constexpr (simd::is_batch<V>) simd::prefetch(g.row.z + i + chunk_elems<T>);
          g.template put<V>(i);
        });
        queue.front().out.end();
        queue.pop_front();
      }
      f.record(r, s);
    };
    for (std::ptrdiff_t p = pb; p < pe; ++p) {
      const std::int64_t seqs[2] = {p, P + p};
      for (const std::int64_t q : seqs)
        for (std::int64_t r = layout.begin(q); r < layout.end(q); ++r)
          if (call.weight[std::size_t(r)] != 0.0) forward(r);
      PairLogprobs lp;
      lp.pair = p;
      lp.chosen = out.sum[p] = sequence_sum(layout, call.weight, f.logp, p);
      lp.rejected = out.sum[P + p] = sequence_sum(layout, call.weight, f.logp, P + p);
      if (ref) {
        lp.ref_chosen = out.ref_sum[p] = sequence_sum(layout, call.weight, f.ref_logp, p);
        lp.ref_rejected = out.ref_sum[P + p] = sequence_sum(layout, call.weight, f.ref_logp, P + p);
      }
      lp.chosen_tokens = out.tokens[p];
      lp.rejected_tokens = out.tokens[P + p];
      const PairUpstream d = pair_grad(std::as_const(lp));
      // The pair's gradient rows, as run_backward writes them given the forward's lse.
      for (const std::int64_t q : seqs)
        for (std::int64_t r = layout.begin(q); r < layout.end(q); ++r) {
          const std::size_t ru = std::size_t(r);
          const double g = (q == p ? d.chosen : d.rejected) * call.weight[ru];
          T* row_out = grad.row(r);
          if (call.weight[ru] == 0.0 || g == 0.0) {
            store_row<T>(row_out, 0, n, stream, [](auto tag, std::size_t) { return typename decltype(tag)::type(T(0)); });
            continue;
          }
          const T* z = call.z.row(r);
          const std::int64_t y = (*call.y)[ru];
          const double l = out.lse[r];
          QueuedGradRow<T> qr{SoftmaxGradRow<T>(z, call.inv_t, l, g), {}};
          // the target entry in double (read now: in place, the row is overwritten later)
          qr.out.start(row_out, n, stream, std::size_t(y), T(target_grad(call.inv_t, g, 0.0, double(z[y]) * call.inv_t - l, 0.0)));
          queue.push_back(qr);
        }
    }
    for (QueuedGradRow<T>& g : queue)
      g.out.flush([&g](auto tag, std::size_t i) { g.template put<typename decltype(tag)::type>(i); });
    if (stream) simd::stream_fence();
  });
  return f.finish(o);
}

template <class L, class R, class G, class PairGrad>
inline SequenceLogprobs sequence_pair_step_impl(const L& logits, const R* ref_logits, const Labels& targets,
                                                const SequenceLayout& layout, PairGrad& pair_grad, G& grad,
                                                const SequenceLogprobOptions& o) {
  const char* fn = "sequence_pair_step";
  const auto call = make_seq_call(fn, logits, ref_logits, targets, o);
  check_layout(fn, layout, call.z.rows);
  pair_count(fn, layout);
  check_counted(fn, layout, call.weight, o);
  const auto gv = checked_grad(fn, grad, call);
  return run_pair_step(call, layout, o, pair_grad, gv);
}

}  // namespace detail

// sequence_pair_step(logits, ref_logits, targets, layout, pair_grad, grad[, options])
//   -> SequenceLogprobs (sum, mean, tokens, ref_sum, ref_mean, lse, ref_lse; per-token values
//      if asked), with grad = d loss / d logits for pair_grad(const PairLogprobs&) -> PairUpstream.
template <class L, class R, class G, class PairGrad, detail::enable_rows_t<R> = 0, detail::enable_rows_t<G> = 0>
inline SequenceLogprobs sequence_pair_step(const L& logits, const R& ref_logits, const Labels& targets,
                                           const SequenceLayout& layout, PairGrad&& pair_grad, G&& grad,
                                           const SequenceLogprobOptions& options = {}) {
  return detail::sequence_pair_step_impl(logits, &ref_logits, targets, layout, pair_grad, grad, options);
}

// Without a reference model (SimPO, CPO, ORPO): ref_* of PairLogprobs are 0.
template <class L, class G, class PairGrad, detail::enable_rows_t<G> = 0>
inline SequenceLogprobs sequence_pair_step(const L& logits, const Labels& targets, const SequenceLayout& layout,
                                           PairGrad&& pair_grad, G&& grad, const SequenceLogprobOptions& options = {}) {
  return detail::sequence_pair_step_impl(logits, static_cast<const L*>(nullptr), targets, layout, pair_grad, grad,
                                         options);
}

}  // namespace losskit
