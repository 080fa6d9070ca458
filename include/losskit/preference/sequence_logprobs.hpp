#pragma once
// Per-token log-probabilities of target tokens, summed per sequence, and the gradient back into
// the logits: the expensive half of every preference loss (DPO family, KTO, BCO, SimPO, ORPO,
// SparsePO), whose scalar parts work on the per-sequence sums returned here.
//
// Per row t (one token position) with logits z_t in R^V, target y_t, temperature T:
//   log pi_t(v) = z_tv / T - lse_t,   lse_t = log sum_v exp(z_tv / T)
//   logp_t      = log pi_t(y_t)                              (log_softmax + gather)
//   H_t         = -sum_v pi_t(v) log pi_t(v)                 (entropy, optional)
//   k_t         = sum_v rho_t(v) (log pi_t(v) - log rho_t(v)) = -KL(rho_t || pi_t)
//                 with rho_t = softmax(a_t / T) from reference logits a (optional; the token-level
//                 KL term of SparsePO / TDPO, full vocabulary)
// Row weights w_t = loss_mask[t] (1 without a mask), and 0 where y_t == ignore_index. Rows with
// w_t = 0 are never read. Per sequence b (rows R_b given by the SequenceLayout):
//   sum_b    = sum_{t in R_b} w_t logp_t        (TRL / Liger: summed completion log-probs)
//   tokens_b = sum_{t in R_b} w_t               mean_b = sum_b / tokens_b
//   kl_sum_b = sum_{t in R_b} w_t k_t           ref_sum_b = sum_{t in R_b} w_t log rho_t(y_t)
// The per-token outputs (token_logp, token_entropy, token_kl, ref_token_logp) are unweighted
// values on rows with w_t != 0 and exactly 0 on the others.
//
// Gradients (written, never accumulated; grad may be the logits matrix itself):
//   sequence_logprobs_backward, upstream d_b = dLoss/dsum_b:
//     dLoss/dz_tv = d_b w_t (1[v = y_t] - pi_t(v)) / T
//   token_logprobs_backward, upstream g_t = dLoss/dlogp_t and, with reference logits,
//   c_t = dLoss/dk_t, using dk_t/dz_tv = (rho_t(v) - pi_t(v)) / T:
//     dLoss/dz_tv = (g_t (1[v = y_t] - pi_t(v)) + c_t (rho_t(v) - pi_t(v))) / T     (w_t != 0)
//   Rows with w_t = 0, or with a zero upstream gradient, get an exact 0 and are not read.
//   The target entry is formed in double from logp_t, as -expm1(logp_t) (no float 1 - pi).
//
// Passes: the forward reads each logits row once, in 8 KiB chunks, with one loop per chunk that
// takes the exps relative to the running maximum of the earlier chunks, their sum and the chunk's
// maximum (no separate max pass), recorded into core's ChunkedSoftmax; exp is core/fast_exp2.hpp.
// With reference logits the same loop takes both rows (the policy's values are bit for bit those
// of the call without them).
// The backward reads the row once and writes the gradient once (non-temporal stores for a large
// separate output): given the forward's result it takes lse_t from there and streams the row in a
// single loop (one exp per element); otherwise it recomputes the statistics into an L2 scratch
// row first. For DPO-style use that is 3 reads and 1 write of [rows, V] (policy forward,
// reference forward, policy backward); writing unscaled gradients in the forward and rescaling
// them instead costs one more read and write of the gradient (bench/bench_preference_vs_torch.cpp
// measures both).
//
// Conventions: temperature divides the logits before the softmax (TRL's temperature-matched
// log-probs); the reference logits are divided by the same T. -inf logits are legal (zero
// probability, zero gradient); a target at a -inf logit gives logp = -inf. A row with NaN, +inf or
// only -inf logits gives NaN.
// A sequence with no counted rows (tokens_b = 0: every row masked or ignore_index, or no rows at
// all) is an error by default: sequence_logprobs and sequence_logprobs_backward throw
// std::invalid_argument naming the function, the sequence and its rows. Its sum would be 0, which
// a preference loss on summed log-probs reads as log-prob 0 (probability 1): a non-zero loss and a
// gradient to the other sequence of its pair. With allow_empty_sequences = true such a sequence
// has sum 0, mean 0, tokens 0 and a zero gradient instead (the caller then drops its pair, e.g.
// by tokens_b = 0; the length-normalised losses reject a length of 0 themselves).
// Reference: log_softmax(z / T).gather(-1, y) * mask summed per sequence (TRL
// DPOTrainer / Liger LigerFusedLinearPreferenceBase); tests/reference/gen_sequence_logprobs_refs.py.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "losskit/core/checks.hpp"
#include "losskit/core/fast_exp2.hpp"
#include "losskit/core/pair.hpp"
#include "losskit/core/parallel.hpp"
#include "losskit/core/rows.hpp"
#include "losskit/core/simd.hpp"
#include "losskit/core/softmax.hpp"
#include "losskit/core/types.hpp"
#include "losskit/core/views.hpp"

namespace losskit {

// Which rows of the logits form each sequence: either B + 1 offsets (sequence b covers rows
// [offsets[b], offsets[b + 1]), offsets[0] = 0, non-decreasing, offsets[B] = rows; an empty
// sequence is a valid layout, but see allow_empty_sequences), or a fixed [batch, seq_len] shape
// (rows = batch * seq_len, sequence b covers rows [b * seq_len, (b + 1) * seq_len)). Default: no
// sequences (0 rows).
struct SequenceLayout {
  static SequenceLayout offsets(std::vector<std::int64_t> offsets) {
    if (offsets.empty()) detail::fail("SequenceLayout::offsets", "needs at least one offset (B + 1 for B sequences)");
    if (offsets.front() != 0)
      detail::fail("SequenceLayout::offsets", "offsets[0] must be 0, got ", offsets.front());
    for (std::size_t b = 1; b < offsets.size(); ++b)
      if (offsets[b] < offsets[b - 1])
        detail::fail("SequenceLayout::offsets", "offsets must be non-decreasing, got offsets[", b - 1,
                     "] = ", offsets[b - 1], " > offsets[", b, "] = ", offsets[b]);
    SequenceLayout l;
    l.offsets_ = std::move(offsets);
    return l;
  }
  static SequenceLayout fixed(std::int64_t batch, std::int64_t seq_len) {
    if (batch < 0 || seq_len < 0)
      detail::fail("SequenceLayout::fixed", "batch and seq_len must be >= 0, got ", batch, " x ", seq_len);
    SequenceLayout l;
    l.fixed_ = true;
    l.seq_len_ = seq_len;
    l.offsets_.resize(std::size_t(batch) + 1);
    for (std::int64_t b = 0; b <= batch; ++b) l.offsets_[std::size_t(b)] = b * seq_len;
    return l;
  }

  std::int64_t sequences() const noexcept { return std::int64_t(offsets_.size()) - 1; }
  std::int64_t rows() const noexcept { return offsets_.back(); }  // rows the layout covers
  std::int64_t begin(std::int64_t b) const noexcept { return offsets_[std::size_t(b)]; }
  std::int64_t end(std::int64_t b) const noexcept { return offsets_[std::size_t(b) + 1]; }
  bool is_fixed() const noexcept { return fixed_; }
  std::int64_t seq_len() const noexcept { return seq_len_; }  // fixed layouts only (0 otherwise)

 private:
  std::vector<std::int64_t> offsets_{0};
  std::int64_t seq_len_ = 0;
  bool fixed_ = false;
};

struct SequenceLogprobOptions {
  double temperature = 1.0;          // logits (and reference logits) are divided by T
  std::int64_t ignore_index = -100;  // rows whose target equals it are masked
  Weights loss_mask{};               // per row: 0/1 mask or weights (empty: every row counts)
  bool per_token = false;            // also return token_logp (and ref_token_logp)
  bool entropy = false;              // also return token_entropy
  int threads = 1;                   // 0: all hardware threads; results never depend on it
  // A sequence with no counted rows (all masked or ignore_index, or empty): false (default) makes
  // it an std::invalid_argument; true gives it sum 0, mean 0, tokens 0 and a zero gradient, which
  // a loss on summed log-probs would read as log-prob 0 (see the top of this file).
  bool allow_empty_sequences = false;
};

struct SequenceLogprobs {
  // Per sequence (length B).
  Eigen::VectorXd sum;     // sum_t w_t logp_t
  Eigen::VectorXd mean;    // sum / tokens (0 for a sequence without counted rows: allow_empty_sequences)
  Eigen::VectorXd tokens;  // sum_t w_t (a count for 0/1 masks)
  Eigen::VectorXd ref_sum, ref_mean;  // the same for the reference logits (reference overload)
  Eigen::VectorXd kl_sum;             // sum_t w_t k_t (reference overload)
  // Per row (length rows; 0 on rows with w_t = 0). Empty when not asked for.
  Eigen::VectorXd token_logp;      // per_token
  Eigen::VectorXd ref_token_logp;  // per_token, reference overload
  Eigen::VectorXd token_entropy;   // entropy
  Eigen::VectorXd token_kl;        // reference overload: k_t = -KL(rho_t || pi_t)
  // Per row log-sum-exp of logits / T (and of the reference logits / T), NaN on rows that were
  // not read, and the temperature they were taken at. Pass this result to a backward function
  // to skip recomputing the statistics (they depend only on the logits and T, not on the
  // targets or the mask; rows without them are recomputed).
  Eigen::VectorXd lse, ref_lse;
  double temperature = 1.0;
};

namespace detail {

// The arguments of one call, checked, with the row weights resolved.
template <class T>
struct SeqCall {
  RowsView<const T> z;  // logits
  RowsView<const T> a;  // reference logits (data == nullptr: none)
  const Labels* y;
  std::vector<double> weight;  // w_t
  double inv_t;  // 1 / temperature, rounded to T
  int threads;

  bool has_ref() const noexcept { return a.data != nullptr; }
  std::size_t cols() const noexcept { return std::size_t(z.cols); }
};

template <class X>
inline void check_contiguous(const char* fn, const char* arg, const X& x) {
  if (!has_unit_inner_stride(x)) fail(fn, "'", arg, "' must have contiguous rows (inner stride 1)");
}

template <class L, class R>
inline auto make_seq_call(const char* fn, const L& logits, const R* ref_logits, const Labels& targets,
                          const SequenceLogprobOptions& o) {
  using T = scalar_of_t<L>;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "losskit: scalar type must be float or double");
  // 1/T as the loops use it (rounded to T): the backward's pi and the target entry in double
  // must come from the same scale as the forward's lse, else a float row's gradient is off by
  // about |z| |1/T - float(1/T)| (1.5e-6 at z = 30, T = 0.7; found by tests/fuzz).
  SeqCall<T> c{rows_view(logits), {}, &targets, {}, double(T(1.0 / o.temperature)), 1};
  check_nonempty(fn, "logits", c.z);
  check_contiguous(fn, "logits", logits);
  if (ref_logits) {
    static_assert(std::is_same_v<T, scalar_of_t<R>>, "losskit: logits and ref_logits must have the same scalar type");
    c.a = rows_view(*ref_logits);
    check_same_shape(fn, "ref_logits", c.a, "logits", c.z);
    check_contiguous(fn, "ref_logits", *ref_logits);
  }
  check_positive(fn, "temperature", o.temperature);
  if (o.threads < 0) fail(fn, "'threads' must be >= 0 (0 means: all hardware threads), got ", o.threads);
  const std::ptrdiff_t rows = c.z.rows;
  if (std::ptrdiff_t(targets.size()) != rows)
    fail(fn, "'targets' has ", targets.size(), " entries, expected one per row of 'logits' (", rows, ")");
  for (std::ptrdiff_t r = 0; r < rows; ++r) {
    const std::int64_t y = targets[std::size_t(r)];
    if (y != o.ignore_index && (y < 0 || y >= c.z.cols))
      fail_range(fn, "'targets' has ", y, " at row ", r, ": outside [0, ", c.z.cols, ") and not the ignore_index (",
                 o.ignore_index, ")");
  }
  const Weights& m = o.loss_mask;
  if (!m.empty() && std::ptrdiff_t(m.size()) != rows)
    fail(fn, "'loss_mask' has ", m.size(), " entries, expected one per row of 'logits' (", rows, ")");
  c.weight.resize(std::size_t(rows));
  for (std::ptrdiff_t r = 0; r < rows; ++r) {
    const double w = m.empty() ? 1.0 : m[std::size_t(r)];
    if (!(w >= 0.0) || !std::isfinite(w)) fail(fn, "'loss_mask' must be finite and >= 0, got ", w, " at row ", r);
    c.weight[std::size_t(r)] = targets[std::size_t(r)] == o.ignore_index ? 0.0 : w;
  }
  // Threads only pay off on enough work; the result is the same either way.
  c.threads = resolve_threads(double(rows) * double(c.z.cols) < 65536.0 ? 1 : o.threads, rows);
  return c;
}

inline void check_layout(const char* fn, const SequenceLayout& l, std::ptrdiff_t rows) {
  if (l.rows() == rows) return;
  if (l.is_fixed())
    fail(fn, "'layout' is ", l.sequences(), " x ", l.seq_len(), " = ", l.rows(), " rows, but 'logits' has ", rows,
         " rows");
  fail(fn, "'layout' offsets end at ", l.rows(), ", but 'logits' has ", rows, " rows");
}

// Every sequence of the layout has a counted row (w_t != 0), unless allow_empty_sequences.
inline void check_counted(const char* fn, const SequenceLayout& l, const std::vector<double>& weight,
                          const SequenceLogprobOptions& o) {
  if (o.allow_empty_sequences) return;
  for (std::int64_t q = 0; q < l.sequences(); ++q) {
    const std::int64_t b = l.begin(q), e = l.end(q);
    std::int64_t r = b;
    while (r < e && weight[std::size_t(r)] == 0.0) ++r;
    if (r < e) continue;
    const char* fix = "; drop it, or set 'allow_empty_sequences' for sum 0, mean 0 and tokens 0";
    if (b == e) fail(fn, "sequence ", q, " has no counted tokens (it has no rows: the layout gives it [", b, ", ", e, "))",
                     fix);
    fail(fn, "sequence ", q, " has no counted tokens (all masked or ignore_index: rows [", b, ", ", e, "))", fix);
  }
}

template <class T, class G>
inline RowsView<T> checked_grad(const char* fn, G& grad, const SeqCall<T>& c) {
  static_assert(!std::is_const_v<std::remove_reference_t<G>>, "losskit: the gradient output must not be const");
  static_assert(std::is_same_v<T, scalar_of_t<G>>, "losskit: the gradient must have the logits' scalar type");
  RowsView<T> g = mutable_rows_view(grad);
  check_same_shape(fn, "grad", g, "logits", c.z);
  check_contiguous(fn, "grad", grad);
  if (c.has_ref() && g.data == c.a.data) fail(fn, "'grad' may alias 'logits' but not 'ref_logits'");
  return g;
}

template <class Vec>
inline void check_vector(const char* fn, const char* arg, const Vec& v, std::ptrdiff_t n, const char* what) {
  if (std::ptrdiff_t(v.size()) != n) fail(fn, "'", arg, "' has ", v.size(), " entries, expected ", n, " (", what, ")");
}

// A forward result handed to a backward call must have its per-row statistics, at the same T.
inline void check_forward(const char* fn, const SequenceLogprobs& f, std::ptrdiff_t rows, bool ref,
                          const SequenceLogprobOptions& o) {
  check_vector(fn, "forward.lse", f.lse, rows, "one per row of 'logits'");
  if (ref) check_vector(fn, "forward.ref_lse", f.ref_lse, rows, "one per row of 'logits'");
  if (f.temperature != o.temperature)
    fail(fn, "'forward' was computed at temperature ", f.temperature, ", but 'temperature' is ", o.temperature);
}

// Statistics of one row (and of its reference row), from one read of each.
struct TokenStats {
  double lse = 0.0, logp = 0.0, entropy = 0.0;
  double ref_lse = 0.0, ref_logp = 0.0, kl = 0.0;
};

// Per-thread scratch: exps of z (es) and of a (et) relative to each chunk's shift, their chunked
// softmax statistics, and per-chunk sums for the entropy and k_t.
template <class T>
struct SeqScratch : PairScratch<T> {
  std::vector<double> ent, kl;
  using PairScratch<T>::PairScratch;
};


// One read of the row (and of its reference row), one loop per chunk (both rows in the same
// loop): the softmax statistics, and the per-chunk sums the optional outputs need (the exps are
// kept in w.es, w.et only with `keep`, for a gradient pass). With the chunk's shifts m_k of z
// and m^a_k of a:
//   entropy: d_i = (z_i - m_k) / T = log e_i, c_k = log factor_k:
//            H = -sum_k factor_k (sum_i e_i d_i + c_k s_k)
//   k_t:     sum_k rfactor_k (sum_i e^a_i ((z_i - m_k) - (a_i - m^a_k)) / T
//                             + ((m_k - m^a_k) / T + lse_a - lse_z) rs_k)
// Kl = false skips k_t (only the reference's statistics); put(lanes<V>, i) rides in the loop
// (exp_chunk's hook: another row's gradient written while this one is read, see
// sequence_pair_step.hpp).
template <class T, bool Entropy, bool Ref, bool Kl = Ref, class Put = NoPut>
inline TokenStats token_stats_impl(SeqScratch<T>& w, const T* z, const T* a, std::size_t n, T inv_t, std::int64_t y,
                                   bool keep, Put&& put = {}) {
  static_assert(Ref || !Kl, "losskit: k_t needs the reference row");
  const std::size_t chunks = chunk_count(n, chunk_elems<T>);
  w.q.reset(n);
  if (Ref) w.p.reset(n);
  if (Kl) w.kl.assign(chunks, 0.0);
  if (Entropy) w.ent.assign(chunks, 0.0);
  // e_i d_i with d_i = (z_i - shift) / T where e_i > 0 (the entropy's sum). The product is an
  // fma with a zero addend: one rounding that the compiler cannot contract into the sum's add
  // (it would in some inlining contexts and not in others), so both loops below give the same bits.
  auto ent_term = [inv_t](const auto& x, const auto& ex, T sh) {
    using V = std::decay_t<decltype(x)>;
    return simd::where(ex > V(T(0)), simd::fma(ex, (x - V(sh)) * V(inv_t), V(T(0))));
  };
  RunningShift<T> run_z, run_a;  // running maxima (core/softmax.hpp)
  if constexpr (!Ref) {
    for_chunks<T>(n, [&](std::size_t k, std::size_t b, std::size_t e) {
      std::array<double, Entropy ? 1 : 0> hz;
      exp_chunk<T>(
          w.q, k, b, e, inv_t, z, keep ? w.es : nullptr, run_z,
          [&](auto tag, std::size_t, const auto& x, const auto& ex, T sh) {
            using V = typename decltype(tag)::type;
            if constexpr (Entropy)
              return std::array<V, 1>{ent_term(x, ex, sh)};
            else
              return std::array<V, 0>{};
          },
          hz, put);
      if constexpr (Entropy) w.ent[k] = hz[0];
    });
  } else {
    // Both rows in one loop per chunk (both exps, the optional sums, put): compute and memory
    // balanced inside the loop. A chunk is redone for the input whose shift did not fit; the
    // other keeps its shift (RunningShift::retry_if), so each input's exps, sums and statistics
    // are those of exp_chunk over that row alone.
    constexpr bool puts = !std::is_same_v<std::decay_t<Put>, NoPut>;
    const T c = inv_t * simd::log2e<T>;
    T* const ez_out = keep ? w.es : nullptr;
    T* const ea_out = keep ? w.et : nullptr;
    for_chunks<T>(n, [&](std::size_t k, std::size_t b, std::size_t e) LOSSKIT_LAMBDA_INLINE {
      run_z.start(z, b, e);
      run_a.start(a, b, e);
      bool first = true;
      for (;;) {
        const T sz = run_z.shift, sa = run_a.shift;
        // {sum e^z, [entropy], sum e^a, [k_t]}
        constexpr std::size_t K = 2 + (Entropy ? 1 : 0) + (Kl ? 1 : 0), ia = Entropy ? 2 : 1;
        const auto sums = simd::sum_lanes<T, K>(b, e, [&](auto tag, std::size_t i) {
          using V = typename decltype(tag)::type;
          const V zv = simd::load<V>(z + i), av = simd::load<V>(a + i);
          if constexpr (simd::is_batch<V>) {  // the next chunk streams in meanwhile
            simd::prefetch(z + i + chunk_elems<T>);
            simd::prefetch(a + i + chunk_elems<T>);
          }
          run_z.see(zv);
          run_a.see(av);
          const V ez = simd::exp2_ftz((zv - V(sz)) * V(c)), ea = simd::exp2_ftz((av - V(sa)) * V(c));
          if constexpr (puts) {
            if (first) put(tag, i);
          }
          if (ez_out) {
            simd::store(ez_out + i, ez);
            simd::store(ea_out + i, ea);
          }
          std::array<V, K> v;
          v[0] = ez;
          if constexpr (Entropy) v[1] = ent_term(zv, ez, sz);
          v[ia] = ea;
          if constexpr (Kl) v[ia + 1] = simd::where(ea > V(T(0)), ea * ((zv - V(sz)) - (av - V(sa))));
          return v;
        });
        if (run_z.fits(c) && run_a.fits(c)) {
          w.q.record(k, sz, inv_t, run_z.fixed(sums[0], c, inv_t));
          w.p.record(k, sa, inv_t, run_a.fixed(sums[ia], c, inv_t));
          if constexpr (Entropy) w.ent[k] = sums[1];
          if constexpr (Kl) w.kl[k] = sums[ia + 1];
          run_z.accept();
          run_a.accept();
          return;
        }
        first = false;
        run_z.retry_if(c);
        run_a.retry_if(c);
      }
    });
  }
  TokenStats s;
  s.lse = w.q.finish(false);
  s.logp = double(z[y]) * double(inv_t) - s.lse;
  if (Entropy) {
    double h = 0.0;
    for (std::size_t k = 0; k < chunks; ++k) {
      const double f = w.q.factor_d(k);
      if (f != 0.0) h -= f * (w.ent[k] + std::log(f) * w.q.chunk_sum(k));
    }
    s.entropy = h;
  }
  if (Ref) {
    s.ref_lse = w.p.finish(false);
    s.ref_logp = double(a[y]) * double(inv_t) - s.ref_lse;
    // k_t from shift-relative differences (ChunkedSoftmax::merge_relative): near the rows' peaks
    // both differences are small, so two nearly equal rows (k_t -> 0) do not cancel large terms.
    if constexpr (Kl) s.kl = w.p.merge_relative(w.kl, double(inv_t), s.ref_lse - s.lse, w.q);
  }
  return s;
}

// token_stats_impl for a row (a = nullptr: no reference row); Kl = false: without k_t.
template <class T, bool Kl = true, class Put = NoPut>
inline TokenStats token_stats(SeqScratch<T>& w, const T* z, const T* a, std::size_t n, T inv_t, bool entropy,
                              std::int64_t y, bool keep, Put&& put = {}) {
  if (a)
    return entropy ? token_stats_impl<T, true, true, Kl>(w, z, a, n, inv_t, y, keep, put)
                   : token_stats_impl<T, false, true, Kl>(w, z, a, n, inv_t, y, keep, put);
  return entropy ? token_stats_impl<T, true, false, false>(w, z, a, n, inv_t, y, keep, put)
                 : token_stats_impl<T, false, false, false>(w, z, a, n, inv_t, y, keep, put);
}

// dLoss/dz at the target, in double: (g (1 - pi_y) + c (rho_y - pi_y)) / T.
inline double target_grad(double inv_t, double g, double c, double logp, double ref_logp) {
  double v = -g * std::expm1(logp);
  if (c != 0.0) v += c * (std::exp(ref_logp) - std::exp(logp));
  return v * inv_t;
}

// Backward of one row from its log-sum-exp(s), in one streaming loop over z (and a):
//   pi_i = F 2^((z_i - s) log2(e) / T),  s = lse T rounded to T,  F = exp(s / T - lse) ~ 1,
// so the exponent comes from a difference of nearby logits (as in ChunkedSoftmax) and the
// rounding of s is absorbed by F.
// SoftmaxGradRow: the entries -u pi_i / T (u = g + c) of such a row without a reference, the
// one formula of stream_row_grad and of a pipelined row (sequence_pair_step.hpp).
template <class T>
struct SoftmaxGradRow {
  const T* z;
  T sz, it, alpha;
  SoftmaxGradRow(const T* row, double inv_t, double lse, double u)
      : z(row), sz(T(lse / inv_t)), it(T(inv_t * double(simd::log2e<T>))),
        alpha(T(-u * inv_t * std::exp(double(sz) * inv_t - lse))) {}
  template <class V>
  V value(std::size_t i) const {
    return V(alpha) * simd::exp2_ftz((simd::load<V>(z + i) - V(sz)) * V(it));
  }
};

template <class T>
inline void stream_row_grad(const T* z, const T* a, std::size_t n, double inv_t, double lse, double ref_lse,
                            double g, double c, T* grad, bool stream) {
  const SoftmaxGradRow<T> row(z, inv_t, lse, g + c);
  if (!a) {
    store_row<T>(grad, 0, n, stream, [&](auto tag, std::size_t i) { return row.template value<typename decltype(tag)::type>(i); });
    return;
  }
  const T sz = row.sz, it = row.it, alpha = row.alpha;
  const T sa = T(ref_lse / inv_t);
  const T beta = T(c * inv_t * std::exp(double(sa) * inv_t - ref_lse));
  store_row<T>(grad, 0, n, stream, [&](auto tag, std::size_t i) {
    using V = typename decltype(tag)::type;
    const V p = simd::exp2_ftz((simd::load<V>(z + i) - V(sz)) * V(it));
    const V rho = simd::exp2_ftz((simd::load<V>(a + i) - V(sa)) * V(it));
    return V(alpha) * p + V(beta) * rho;
  });
}

// Per-row upstream gradients (g_t for logp_t, c_t for k_t) -> gradient rows. `lse` / `ref_lse`
// (may be null, or NaN on a row) are the forward's statistics.
template <class T>
inline void run_backward(const SeqCall<T>& call, const std::vector<double>& g_tok, const std::vector<double>* c_kl,
                         const Eigen::VectorXd* lse, const Eigen::VectorXd* ref_lse, const RowsView<T>& grad) {
  const std::size_t n = call.cols();
  const bool ref = call.has_ref() && c_kl;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  // Non-temporal stores skip the read-for-ownership of a large separate output; in place, the
  // lines are in cache already.
  const bool stream = grad.data != call.z.data && streaming_output<T>(call.z.rows, call.z.cols);
  parallel_ranges(call.z.rows, call.threads, [&](int, std::ptrdiff_t b, std::ptrdiff_t e) {
    SeqScratch<T> w(call.z.cols);
    for (std::ptrdiff_t r = b; r < e; ++r) {
      const std::size_t ru = std::size_t(r);
      const double g = g_tok[ru], c = ref ? (*c_kl)[ru] : 0.0;
      T* out = grad.row(r);
      if (call.weight[ru] == 0.0 || (g == 0.0 && c == 0.0)) {
        std::fill(out, out + n, T(0));
        continue;
      }
      const std::int64_t y = (*call.y)[ru];
      const T* z = call.z.row(r);
      const T* a = ref ? call.a.row(r) : nullptr;
      const double l = lse ? (*lse)[r] : nan;
      const double lr = !ref ? 0.0 : ref_lse ? (*ref_lse)[r] : nan;
      if (!std::isnan(l) && !std::isnan(lr)) {
        // The target entry first: grad may alias z.
        const double ty = target_grad(call.inv_t, g, c, double(z[y]) * call.inv_t - l,
                                      ref ? double(a[y]) * call.inv_t - lr : 0.0);
        stream_row_grad(z, a, n, call.inv_t, l, lr, g, c, out, stream);
        out[y] = T(ty);
        continue;
      }
      const TokenStats s = token_stats(w, z, a, n, T(call.inv_t), false, y, true);
      // -(g + c) pi / T + c rho / T, from the scratch rows; then the target entry.
      PairRow<T> row{z, ref ? a : z, n, T(call.inv_t), false, false, w, stream};
      if (ref)
        row.write_grad(out, 1.0, w.et, [&](std::size_t k) { return c * w.p.factor_d(k); }, g + c);
      else
        row.write_grad(out, 1.0, w.es, [](std::size_t) { return 0.0; }, g);
      out[y] = T(target_grad(call.inv_t, g, c, s.logp, s.ref_logp));
    }
    if (stream) simd::stream_fence();
  });
}

// sum_{t in R_q} w_t v_t in row order (rows with w_t = 0 skipped: their v_t was never computed),
// each step one fma: a product and add the compiler would contract in some inlining contexts
// and not in others (the forward drivers must agree bit for bit).
inline double sequence_sum(const SequenceLayout& layout, const std::vector<double>& weight, const Eigen::VectorXd& v,
                           std::int64_t q) {
  double s = 0.0;
  for (std::int64_t r = layout.begin(q); r < layout.end(q); ++r) {
    const double wr = weight[std::size_t(r)];
    if (wr != 0.0) s = std::fma(wr, v[r], s);
  }
  return s;
}

// tokens_q = sum_{t in R_q} w_t, in row order.
inline Eigen::VectorXd sequence_tokens(const SequenceLayout& layout, const std::vector<double>& weight) {
  Eigen::VectorXd n(layout.sequences());
  for (std::int64_t q = 0; q < layout.sequences(); ++q) {
    double s = 0.0;
    for (std::int64_t r = layout.begin(q); r < layout.end(q); ++r) s += weight[std::size_t(r)];
    n[q] = s;
  }
  return n;
}

// A forward call's per-row values as rows are read (rows never read keep lse NaN, values 0),
// then its per-sequence results.
struct ForwardRows {
  SequenceLogprobs out;
  Eigen::VectorXd logp, ref_logp, ent, kl;  // ref_logp with reference logits, ent / kl if asked for

  ForwardRows(std::ptrdiff_t rows, bool ref, bool with_kl, const SequenceLogprobOptions& o) {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    out.temperature = o.temperature;
    out.lse = Eigen::VectorXd::Constant(rows, nan);
    logp = Eigen::VectorXd::Zero(rows);
    if (o.entropy) ent = Eigen::VectorXd::Zero(rows);
    if (ref) {
      out.ref_lse = Eigen::VectorXd::Constant(rows, nan);
      ref_logp = Eigen::VectorXd::Zero(rows);
    }
    if (with_kl) kl = Eigen::VectorXd::Zero(rows);
  }
  void record(std::ptrdiff_t r, const TokenStats& s) {
    out.lse[r] = s.lse;
    logp[r] = s.logp;
    if (ent.size()) ent[r] = s.entropy;
    if (ref_logp.size()) {
      out.ref_lse[r] = s.ref_lse;
      ref_logp[r] = s.ref_logp;
    }
    if (kl.size()) kl[r] = s.kl;
  }
  // The means from out.sum, out.ref_sum and out.tokens, and the per-token outputs asked for.
  SequenceLogprobs finish(const SequenceLogprobOptions& o) {
    auto means = [&](const Eigen::VectorXd& s) {
      Eigen::VectorXd m = Eigen::VectorXd::Zero(s.size());
      for (Eigen::Index q = 0; q < s.size(); ++q)
        if (out.tokens[q] > 0.0) m[q] = s[q] / out.tokens[q];
      return m;
    };
    out.mean = means(out.sum);
    if (ref_logp.size()) out.ref_mean = means(out.ref_sum);
    if (kl.size()) out.token_kl = std::move(kl);
    if (o.per_token) {
      out.token_logp = std::move(logp);
      if (ref_logp.size()) out.ref_token_logp = std::move(ref_logp);
    }
    if (o.entropy) out.token_entropy = std::move(ent);
    return std::move(out);
  }
};

template <class T>
inline SequenceLogprobs run_forward(const SeqCall<T>& call, const SequenceLayout& layout,
                                    const SequenceLogprobOptions& o) {
  const bool ref = call.has_ref();
  ForwardRows f(call.z.rows, ref, ref, o);
  parallel_ranges(call.z.rows, call.threads, [&](int, std::ptrdiff_t b, std::ptrdiff_t e) {
    SeqScratch<T> w(call.z.cols);
    for (std::ptrdiff_t r = b; r < e; ++r) {
      if (call.weight[std::size_t(r)] == 0.0) continue;
      const T* a = ref ? call.a.row(r) : nullptr;
      f.record(r, token_stats(w, call.z.row(r), a, call.cols(), T(call.inv_t), o.entropy, (*call.y)[std::size_t(r)],
                              false));
    }
  });
  // Per-sequence sums in row order: the same bits for any thread count.
  const std::int64_t B = layout.sequences();
  auto sums = [&](const Eigen::VectorXd& v) {
    Eigen::VectorXd s(B);
    for (std::int64_t q = 0; q < B; ++q) s[q] = sequence_sum(layout, call.weight, v, q);
    return s;
  };
  f.out.tokens = sequence_tokens(layout, call.weight);
  f.out.sum = sums(f.logp);
  if (ref) {
    f.out.ref_sum = sums(f.ref_logp);
    f.out.kl_sum = sums(f.kl);
  }
  return f.finish(o);
}

// Row upstream gradients d_sum[b] * w_t of a sequence-level backward.
inline std::vector<double> sequence_row_grads(const SequenceLayout& layout, const Eigen::Ref<const Eigen::VectorXd>& d_sum,
                                              const std::vector<double>& weight) {
  std::vector<double> g(weight.size(), 0.0);
  for (std::int64_t q = 0; q < layout.sequences(); ++q)
    for (std::int64_t r = layout.begin(q); r < layout.end(q); ++r)
      g[std::size_t(r)] = d_sum[q] * weight[std::size_t(r)];
  return g;
}

template <class L, class R>
inline SequenceLogprobs sequence_logprobs_impl(const L& logits, const R* ref_logits, const Labels& targets,
                                               const SequenceLayout& layout, const SequenceLogprobOptions& o) {
  const char* fn = "sequence_logprobs";
  const auto call = make_seq_call(fn, logits, ref_logits, targets, o);
  check_layout(fn, layout, call.z.rows);
  check_counted(fn, layout, call.weight, o);
  return run_forward(call, layout, o);
}

template <class L, class R, class G>
inline void sequence_backward_impl(const L& logits, const R* ref_logits, const Labels& targets,
                                   const SequenceLayout& layout, const Eigen::Ref<const Eigen::VectorXd>& d_sum,
                                   G& grad, const SequenceLogprobOptions& o, const SequenceLogprobs* fwd) {
  const char* fn = "sequence_logprobs_backward";
  const auto call = make_seq_call(fn, logits, ref_logits, targets, o);
  check_layout(fn, layout, call.z.rows);
  check_counted(fn, layout, call.weight, o);
  check_vector(fn, "d_sum", d_sum, layout.sequences(), "one per sequence of 'layout'");
  if (fwd) check_forward(fn, *fwd, call.z.rows, false, o);
  const auto gv = checked_grad(fn, grad, call);
  run_backward(call, sequence_row_grads(layout, d_sum, call.weight), nullptr, fwd ? &fwd->lse : nullptr, nullptr,
               gv);
}

template <class L, class R, class G>
inline void token_backward_impl(const L& logits, const R* ref_logits, const Labels& targets,
                                const Eigen::Ref<const Eigen::VectorXd>& d_token,
                                const Eigen::Ref<const Eigen::VectorXd>* d_kl, G& grad,
                                const SequenceLogprobOptions& o, const SequenceLogprobs* fwd) {
  const char* fn = "token_logprobs_backward";
  const auto call = make_seq_call(fn, logits, ref_logits, targets, o);
  const std::ptrdiff_t rows = call.z.rows;
  check_vector(fn, "d_token", d_token, rows, "one per row of 'logits'");
  if (d_kl) check_vector(fn, "d_kl", *d_kl, rows, "one per row of 'logits'");
  if (fwd) check_forward(fn, *fwd, rows, ref_logits != nullptr, o);
  const auto gv = checked_grad(fn, grad, call);
  const std::vector<double> g(d_token.data(), d_token.data() + rows);
  std::vector<double> c;
  if (d_kl) c.assign(d_kl->data(), d_kl->data() + rows);
  run_backward(call, g, d_kl ? &c : nullptr, fwd ? &fwd->lse : nullptr, fwd && ref_logits ? &fwd->ref_lse : nullptr,
               gv);
}

template <class X>
using enable_rows_t = std::enable_if_t<is_rows_v<X>, int>;

}  // namespace detail

// ---- public API ---------------------------------------------------------------------------------

// Per-sequence summed / mean log-probabilities of the targets (and optional per-token values).
template <class L>
inline SequenceLogprobs sequence_logprobs(const L& logits, const Labels& targets, const SequenceLayout& layout,
                                          const SequenceLogprobOptions& options = {}) {
  return detail::sequence_logprobs_impl(logits, static_cast<const L*>(nullptr), targets, layout, options);
}

// The same plus the reference model's log-probs (ref_sum, ref_mean, ref_token_logp) and the
// full-vocabulary KL term k_t = -KL(rho_t || pi_t) (token_kl, kl_sum), reading each row of both
// matrices once.
template <class L, class R, detail::enable_rows_t<R> = 0>
inline SequenceLogprobs sequence_logprobs(const L& logits, const R& ref_logits, const Labels& targets,
                                          const SequenceLayout& layout, const SequenceLogprobOptions& options = {}) {
  return detail::sequence_logprobs_impl(logits, &ref_logits, targets, layout, options);
}

// grad = dLoss/dlogits from d_sum[b] = dLoss/dsum_b (length B). grad may be the logits matrix.
template <class L, class G, detail::enable_rows_t<G> = 0>
inline void sequence_logprobs_backward(const L& logits, const Labels& targets, const SequenceLayout& layout,
                                       const Eigen::Ref<const Eigen::VectorXd>& d_sum, G&& grad,
                                       const SequenceLogprobOptions& options = {}) {
  detail::sequence_backward_impl(logits, static_cast<const L*>(nullptr), targets, layout, d_sum, grad, options,
                                 nullptr);
}

// The same, reusing the per-row log-sum-exp of a forward call on the same logits (at the same
// temperature): one streaming pass, no statistics recomputed.
template <class L, class G, detail::enable_rows_t<G> = 0>
inline void sequence_logprobs_backward(const L& logits, const Labels& targets, const SequenceLayout& layout,
                                       const Eigen::Ref<const Eigen::VectorXd>& d_sum, G&& grad,
                                       const SequenceLogprobOptions& options, const SequenceLogprobs& forward) {
  detail::sequence_backward_impl(logits, static_cast<const L*>(nullptr), targets, layout, d_sum, grad, options,
                                 &forward);
}

// grad = dLoss/dlogits from d_token[t] = dLoss/dlogp_t (length rows).
template <class L, class G, detail::enable_rows_t<G> = 0>
inline void token_logprobs_backward(const L& logits, const Labels& targets,
                                    const Eigen::Ref<const Eigen::VectorXd>& d_token, G&& grad,
                                    const SequenceLogprobOptions& options = {}) {
  detail::token_backward_impl(logits, static_cast<const L*>(nullptr), targets, d_token, nullptr, grad, options,
                              nullptr);
}
template <class L, class G, detail::enable_rows_t<G> = 0>
inline void token_logprobs_backward(const L& logits, const Labels& targets,
                                    const Eigen::Ref<const Eigen::VectorXd>& d_token, G&& grad,
                                    const SequenceLogprobOptions& options, const SequenceLogprobs& forward) {
  detail::token_backward_impl(logits, static_cast<const L*>(nullptr), targets, d_token, nullptr, grad, options,
                              &forward);
}

// With reference logits: also d_kl[t] = dLoss/dk_t, adding d_kl[t] (rho_t - pi_t) / T per row.
template <class L, class R, class G, detail::enable_rows_t<R> = 0, detail::enable_rows_t<G> = 0>
inline void token_logprobs_backward(const L& logits, const R& ref_logits, const Labels& targets,
                                    const Eigen::Ref<const Eigen::VectorXd>& d_token,
                                    const Eigen::Ref<const Eigen::VectorXd>& d_kl, G&& grad,
                                    const SequenceLogprobOptions& options = {}) {
  detail::token_backward_impl(logits, &ref_logits, targets, d_token, &d_kl, grad, options, nullptr);
}
template <class L, class R, class G, detail::enable_rows_t<R> = 0, detail::enable_rows_t<G> = 0>
inline void token_logprobs_backward(const L& logits, const R& ref_logits, const Labels& targets,
                                    const Eigen::Ref<const Eigen::VectorXd>& d_token,
                                    const Eigen::Ref<const Eigen::VectorXd>& d_kl, G&& grad,
                                    const SequenceLogprobOptions& options, const SequenceLogprobs& forward) {
  detail::token_backward_impl(logits, &ref_logits, targets, d_token, &d_kl, grad, options, &forward);
}

}  // namespace losskit
