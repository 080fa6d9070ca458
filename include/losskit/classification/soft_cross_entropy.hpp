#pragma once
// Cross entropy against probability targets (soft labels), as torch.nn.functional.cross_entropy
// with class-probability targets. Per row: logits z, targets t (that row of `targets`), V
// classes, temperature T, class weights w (PyTorch `weight`; all 1 when absent), smoothing eps:
//   t'_i = (1 - eps) t_i + eps / V            (PyTorch's smoothing of probability targets)
//   u_i  = w_i t'_i,   U = sum_i u_i
//   q    = softmax(z / T),   lse = log sum_i exp(z_i / T)
//   L    = -sum_i u_i log q_i = U lse - sum_i u_i z_i / T
//   dL/dz_j = (U q_j - u_j) / T
// Targets are used as given, never renormalised: for rows that do not sum to 1 the loss is the
// formula above and the gradient its exact gradient, with the softmax term scaled by
// U = sum_i u_i (what autograd gives for PyTorch's formula). U = 1 for rows summing to 1 without
// class weights, with or without smoothing. Negative targets are not rejected (nor by PyTorch).
//
// Reductions and masks come from the row driver (core/rows.hpp): `mean` divides by the rows
// that count (or their `weights` sum) -- PyTorch's 'mean' for probability targets divides by
// the number of rows too, whatever the class weights --; `labels` + `ignore_index` optionally
// skip rows (PyTorch has no ignore_index for probability targets); `normalizer`, `grad_scale`,
// `threads` as everywhere.
//
// Conventions: a class with u_i = 0 contributes 0 even where z_i = -inf (PyTorch gives NaN,
// 0 * -inf); u_i != 0 where z_i = -inf gives +inf (with smoothing every class has u_i > 0
// unless its class weight is 0). NaN or +inf inputs give NaN.
//
// Numerics: one streaming pass per row in chunks of 8 KiB (one loop per chunk storing the exps
// in a scratch row and summing U and sum_i u_i (z_i - m_k) relative to the chunk's shift m_k,
// the running maximum of the row (core/softmax.hpp exp_chunk), so large logits do not cancel
// against lse). The gradient, from the scratch row and the targets (re-read from cache), is
// written during the next row's loop (pipelined rows: at each index the previous row's exp is
// read before this row's is stored), the last row's after it. `grad` may be the logits or the
// targets.

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
#include "losskit/core/pending.hpp"
#include "losskit/core/rows.hpp"
#include "losskit/core/scratch.hpp"
#include "losskit/core/simd.hpp"
#include "losskit/core/softmax.hpp"
#include "losskit/core/types.hpp"
#include "losskit/core/views.hpp"

namespace losskit {

// Options of soft_cross_entropy. Names follow torch.nn.functional.cross_entropy. C++20:
// {.label_smoothing = 0.1, .threads = 2}.
struct SoftCrossEntropyOptions {
  Reduction reduction = Reduction::mean;
  Weights weight{};                 // optional class weights, one per class (PyTorch `weight`)
  double label_smoothing = 0.0;     // in [0, 1]: t' = (1 - eps) t + eps / V
  double temperature = 1.0;         // the logits are divided by T (the targets are used as given)
  Labels labels{};                  // optional, one per row; rows equal to ignore_index are skipped
  std::int64_t ignore_index = -100;
  Weights weights{};                // optional per-row weights or 0/1 mask
  double grad_scale = 1.0;          // upstream gradient of the reduced loss
  double normalizer = 0.0;          // > 0: divide by this instead (e.g. a global token count)
  int threads = 1;                  // 0: all hardware threads; results never depend on it
};

namespace detail {

// The targets of soft_cross_entropy, a row at a time: Row::at<V>(i) is t_i. A source may also
// take the row's softmax at T = 1 in the gradient pass (keeps_softmax; Row::keep(i, softmax_i),
// called after at(i) has been read for every index of the batch): PS-KD stores it as the
// sample's next prediction (distill/ps_kd.hpp). Dense targets: a [rows, V] matrix.
template <class T>
struct DenseTargets {
  static constexpr bool keeps_softmax = false;
  RowsView<const T> t;
  struct Row {
    const T* tr;
    template <class V>
    V at(std::size_t i) const {
      return simd::load<V>(tr + i);
    }
    void prefetch(std::size_t i) const { simd::prefetch(tr + i); }
    template <class V>
    void keep(std::size_t, const V&) const {}
    bool streams() const { return false; }
  };
  Row row(std::ptrdiff_t r) const { return {t.row(r)}; }
};

// Per thread: the scratch row of exps, the statistics, and the previous row's gradient, which is
// written during this row's statistics loop (pipelined rows, as the divergences': its stores
// overlap this row's reads; at each index the loop reads the previous row's exp before it stores
// its own) or by flush() after a thread's last row.
template <class T, class Targets>
struct SoftCrossEntropyScratch {
  using Src = decltype(std::declval<const Targets&>().row(0));
  T* ex;  // exps of the row relative to each chunk's shift
  ChunkedSoftmax<T> sm;
  std::vector<double> mass, dot, shift;  // per chunk: sum u_i, sum u_i (z_i - m_k), m_k / T
  struct Pending {
    PendingRow<T> row;
    Src src{};
    std::vector<T> alpha, f;  // per chunk: a U factor_k, factor_k
    T beta = T(0);
  } pending;
  explicit SoftCrossEntropyScratch(std::size_t n) : ex(scratch<T>(n)) {}
};

template <class T, bool Weighted, class Targets>
struct SoftCrossEntropyRow {
  using Scratch = SoftCrossEntropyScratch<T, Targets>;
  RowsView<const T> x;
  Targets t;
  std::size_t n;
  T inv_t, keep, add;  // t' = keep * t + add
  const T* cw;         // class weights as T (Weighted)
  bool stream;

  // u_i = w_i t'_i of a row's targets.
  template <class V, class Src>
  V u_at(const Src& src, std::size_t i) const {
    const V tp = simd::fma(src.template at<V>(i), V(keep), V(add));
    if constexpr (Weighted) {
      return V(simd::load<V>(cw + i) * tp);
    } else {
      return tp;
    }
  }
  // Index i of a recorded row (chunk coefficients a = alpha_k, f = factor_k): its gradient
  // (U q_i - u_i) / T and, for a source that keeps it, its softmax; reads ex[i] (the recorded
  // row's exp) first. One explicit fma, so the compiler cannot contract it differently per source.
  template <class V>
  void put(const typename Scratch::Pending& d, const T* ex, T a, T f, std::size_t i) const {
    const V exv = simd::load<V>(ex + i);
    d.row.put(i, simd::fma(V(a), exv, V(-d.beta) * u_at<V>(d.src, i)));
    if constexpr (Targets::keeps_softmax) d.src.keep(i, exv * V(f));
  }
  // Writes the recorded row as a pass of its own (the last row of a thread).
  void flush(Scratch& w) const {
    auto& d = w.pending;
    if (!d.row) return;
    d.row.flush([&](auto tag, std::size_t i) {
      const std::size_t k = i / chunk_elems<T>;
      put<typename decltype(tag)::type>(d, w.ex, d.alpha[k], d.f[k], i);
    });
    if (d.src.streams()) simd::stream_fence();
  }

  double operator()(Scratch& w, std::ptrdiff_t r, T* grad, double scale) const {
    const T* z = x.row(r);
    const auto src = t.row(r);
    T* ex = w.ex;
    const T it = inv_t;
    ChunkedSoftmax<T>& sm = w.sm;
    sm.reset(n);
    const std::size_t chunks = chunk_count(n, chunk_elems<T>);
    w.mass.resize(chunks);
    w.dot.resize(chunks);
    w.shift.resize(chunks);
    RunningShift<T> running;
    auto& d = w.pending;
    const bool pout = bool(d.row);
    for_chunks<T>(n, [&](std::size_t k, std::size_t b, std::size_t e) LOSSKIT_LAMBDA_INLINE {
      std::array<double, 2> s;
      const T pa = pout ? d.alpha[k] : T(0), pf = pout ? d.f[k] : T(0);
      const T m = exp_chunk<T>(
          sm, k, b, e, it, z, ex, running,
          [&](auto tag, std::size_t i, const auto& zv, const auto&, T shift) {
            using V = typename decltype(tag)::type;
            if constexpr (simd::is_batch<V>) src.prefetch(i + chunk_elems<T>);  // the targets stream in too
            const V u = u_at<V>(src, i);
            return std::array<V, 2>{u, simd::where(u != V(T(0)), u * (zv - V(shift)))};
          },
          s, [&](auto tag, std::size_t i) {
            if (pout) put<typename decltype(tag)::type>(d, ex, pa, pf, i);
          });
      w.mass[k] = s[0];
      w.dot[k] = s[1];
      w.shift[k] = double(m) * double(it);
    });
    if (pout) {
      d.row.end();
      if (d.src.streams()) simd::stream_fence();
    }
    const double lse = sm.finish(false);
    double U = 0.0, loss = 0.0;
    for (std::size_t k = 0; k < chunks; ++k) {
      U += w.mass[k];
      if (w.mass[k] != 0.0) loss += w.mass[k] * (lse - w.shift[k]);
      loss -= double(it) * w.dot[k];
    }
    // The gradient (U q_j - u_j) / T and, for a source that keeps it, softmax(z) (T = 1 here):
    // recorded, written during the next row's loop (or flush()).
    const double a = scale * double(it);
    d.alpha.resize(chunks);
    d.f.resize(chunks);
    for (std::size_t k = 0; k < chunks; ++k) {
      d.alpha[k] = T(a * U * sm.factor_d(k));
      d.f[k] = T(sm.factor_d(k));
    }
    d.beta = T(a);
    d.src = src;
    if (grad) {
      d.row.start(grad, n, stream);
    } else if constexpr (Targets::keeps_softmax) {  // no gradient: the softmax alone, now
      for_chunks<T>(n, [&](std::size_t k, std::size_t b, std::size_t e) {
        const T f = d.f[k];
        simd::for_lanes<T>(b, e, [&](auto tag, std::size_t i) {
          using V = typename decltype(tag)::type;
          src.keep(i, simd::load<V>(ex + i) * V(f));
        });
      });
      if (src.streams()) simd::stream_fence();
    }
    return loss;
  }
};

inline void check_soft_cross_entropy_options(const char* fn, const SoftCrossEntropyOptions& o, std::ptrdiff_t rows,
                                             std::ptrdiff_t cols) {
  check_positive(fn, "temperature", o.temperature);
  check_in(fn, "label_smoothing", o.label_smoothing, 0.0, 1.0, false, false);
  if (!o.weight.empty()) {
    if (std::ptrdiff_t(o.weight.size()) != cols)
      fail(fn, "'weight' has ", o.weight.size(), " entries, expected one per class (", cols, ")");
    for (std::size_t i = 0; i < o.weight.size(); ++i)
      if (!(o.weight[i] >= 0.0) || !std::isfinite(o.weight[i]))
        fail(fn, "'weight' must be finite and >= 0, got ", o.weight[i], " at class ", i);
  }
  check_row_options(fn, o, rows);
}

// `targets`: a source as DenseTargets (a Row per row of the logits).
template <class T, class Targets>
inline LossResult run_soft_cross_entropy(const RowsView<const T>& x, const Targets& targets, const RowsView<T>& g,
                                         const SoftCrossEntropyOptions& o) {
  const RowPlan plan = plan_rows(o, x.rows, x.cols);
  const std::size_t n = std::size_t(x.cols);
  std::vector<T> cw(o.weight.size());
  for (std::size_t i = 0; i < cw.size(); ++i) cw[i] = T(o.weight[i]);
  const double eps = o.label_smoothing;
  const T inv_t = T(1.0 / o.temperature), keep = T(1.0 - eps), add = T(eps / double(n));
  const bool stream = streaming_output<T>(x.rows, x.cols);
  auto go = [&](auto weighted) {
    const SoftCrossEntropyRow<T, decltype(weighted)::value, Targets> row{x, targets, n, inv_t, keep, add, cw.data(), stream};
    using Scratch = SoftCrossEntropyScratch<T, Targets>;
    return run_rows<T>(
        plan, x.rows, g, [n] { return Scratch(n); },
        [&row](Scratch& w, std::ptrdiff_t r, T* grad, double scale) { return row(w, r, grad, scale); },
        [&row](Scratch& w) { row.flush(w); });
  };
  return cw.empty() ? go(std::false_type{}) : go(std::true_type{});
}

template <class X, class Tg, class G>
inline LossResult soft_cross_entropy_impl(const X& logits, const Tg& targets, G* grad, const SoftCrossEntropyOptions& o) {
  const char* fn = "soft_cross_entropy";
  const auto v = checked_pair_views(fn, "logits", logits, "targets", targets, grad);
  check_soft_cross_entropy_options(fn, o, v.a.rows, v.a.cols);
  return run_soft_cross_entropy(v.a, DenseTargets<scalar_of_t<X>>{v.b}, v.g, o);
}

}  // namespace detail

// losskit::soft_cross_entropy(logits, targets, grad, options): the reduced loss and its gradient
// w.r.t. the logits, written into `grad` (any writable row-major matrix of the logits' shape;
// it may be the logits or the targets themselves). `targets` has the logits' shape.
template <class X, class Tg, class G, std::enable_if_t<is_rows_v<G>, int> = 0>
inline LossResult soft_cross_entropy(const X& logits, const Tg& targets, G&& grad,
                                     const SoftCrossEntropyOptions& options = {}) {
  return detail::soft_cross_entropy_impl(logits, targets, &grad, options);
}

// Forward only.
template <class X, class Tg>
inline LossResult soft_cross_entropy(const X& logits, const Tg& targets, const SoftCrossEntropyOptions& options = {}) {
  return detail::soft_cross_entropy_impl(logits, targets, static_cast<RowMatrix<scalar_of_t<X>>*>(nullptr), options);
}

}  // namespace losskit
