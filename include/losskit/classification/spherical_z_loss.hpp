#pragma once
// Spherical Z-loss (de Brebisson and Vincent, "An Exploration of Softmax Alternatives Belonging
// to the Spherical Loss Family", ICLR 2016), per row o (D live logits) with target c:
//   mu = (1/D) sum_k o_k,   sigma^2 = (1/D) sum_k (o_k - mu)^2   (population variance)
//   z_k = (o_k - mu) / (sigma + eps)
//   L   = (1/a) softplus(a (b - z_c))
//   dL/do_k = -(s / (sigma + eps)) (delta_kc - 1/D - z_c zt_k / D),
//             s = sigmoid(a (b - z_c)),  zt_k = (o_k - mu) / sigma  (0 when sigma = 0)
// a > 0 is the sharpness and b the offset. There is no canonical default: the paper tunes
// (a, b) per task; the defaults a = 1, b = 0 are the authors' reference example
// (pascal20100/factored_output_layer, example/timing_example.py: softplus((mu - o_c) /
// (sigma + 1e-12)), summed over the batch). Our `mean` divides by the counted rows; use
// Reduction::sum for the example's sum.
// The loss is invariant to adding a constant to a row and (up to eps) to scaling it by a
// positive factor; accordingly the gradient sums to 0 and is orthogonal to the row (exactly
// for eps = 0, up to O(eps / sigma) otherwise).
//
// Conventions:
// - eps (`epsilon`, default 1e-12 as in the reference) keeps rows whose logits are all equal
//   finite: there sigma = 0, z = 0, L = softplus(a b) / a, and the gradient is the exact
//   gradient of the guarded loss, -(s / eps) (delta_kc - 1/D), which is of order 1/eps (the
//   loss is scale-invariant, so its gradient grows like 1/sigma as a row flattens; raise
//   epsilon if constant rows can occur, e.g. under a zero-initialised output layer).
// - -inf logits are masked classes: they are left out of mu, sigma and D and get zero
//   gradient. A -inf target logit gives loss +inf and a zero gradient row (no NaN elsewhere).
//   NaN or +inf logits give NaN for that row.
// Numerics: per row, in 8 KiB chunks: each chunk's sum and, while it is in L1, its centred sums
// (o - m) and (o - m)^2 about its own approximate mean m; chunks are merged with Chan's pairwise
// update (never E[o^2] - mu^2). The gradient is affine in o: g_k = A (o_k - mu) + B, plus one term
// at the target; it is written during the next row's first loop, from the row still in cache
// (pipelined rows, as the divergences'), and the last row's after it. The first loop also
// prefetches the next row, so the logits are read from memory once, overlapped with the writes.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "losskit/core/checks.hpp"
#include "losskit/core/labeled.hpp"
#include "losskit/core/pending.hpp"
#include "losskit/core/rows.hpp"
#include "losskit/core/simd.hpp"
#include "losskit/core/softmax.hpp"
#include "losskit/core/softplus.hpp"
#include "losskit/core/types.hpp"
#include "losskit/core/views.hpp"

namespace losskit {

// Options of spherical_z_loss. C++20: {.a = 1.0, .b = 0.0}.
struct SphericalZLossOptions {
  double a = 1.0;                    // sharpness, > 0 (no canonical default: the authors' example)
  double b = 0.0;                    // offset (location)
  double epsilon = 1e-12;            // > 0, added to sigma (the reference's guard)
  Reduction reduction = Reduction::mean;
  std::int64_t ignore_index = -100;  // rows with this label: loss 0, gradient 0, not counted
  Weights weights{};                 // optional per-row weights or 0/1 mask
  double grad_scale = 1.0;           // upstream gradient of the reduced loss
  double normalizer = 0.0;           // > 0: divide by this instead (e.g. a global token count)
  int threads = 1;                   // 0: all hardware threads; results never depend on it
};

namespace detail {

// Count, mean and sum of squared deviations of a set of numbers (Chan et al. merge).
struct Moments {
  double n = 0.0, mean = 0.0, m2 = 0.0;

  void merge(const Moments& o) {
    if (o.n == 0.0) return;
    if (n == 0.0) {
      *this = o;
      return;
    }
    const double total = n + o.n, d = o.mean - mean;
    mean += d * (o.n / total);
    m2 += o.m2 + d * d * (n * o.n / total);
    n = total;
  }
};

// Moments of the live (not -inf) entries of v[b, e): the sum fixes an approximate centre m,
// then the centred sums (in L1) give the exact mean and M2 about it. `ahead`: prefetched at the
// same offsets. `put(lanes<V>, i)` runs at every index of the first loop (the previous row's
// gradient going out).
template <class T, class Put>
inline Moments live_moments(const T* v, std::size_t b, std::size_t e, const T* ahead, Put&& put) {
  const T ninf = -std::numeric_limits<T>::infinity();
  const auto s = simd::sum_lanes<T, 2>(b, e, [&](auto tag, std::size_t i) {
    using V = typename decltype(tag)::type;
    prefetch_at(tag, ahead, i);
    put(tag, i);
    const V x = simd::load<V>(v + i);
    const auto dead = x == V(ninf);  // NaN is not dead: it propagates (and != is ordered in SIMD)
    return std::array<V, 2>{simd::select(dead, V(T(0)), x), simd::select(dead, V(T(0)), V(T(1)))};
  });
  Moments m;
  m.n = s[1];
  if (m.n == 0.0) return m;
  const T centre = T(s[0] / m.n);
  const auto c = simd::sum_lanes<T, 2>(b, e, [&](auto tag, std::size_t i) {
    using V = typename decltype(tag)::type;
    const V x = simd::load<V>(v + i);
    const V d = simd::select(x == V(ninf), V(T(0)), x - V(centre));
    return std::array<V, 2>{d, d * d};
  });
  m.mean = double(centre) + c[0] / m.n;
  m.m2 = std::max(0.0, c[1] - c[0] * c[0] / m.n);
  if (std::isnan(c[1])) m.m2 = c[1];
  return m;
}

// A row's gradient A (o_k - mu) + B (0 at -inf logits; the target entry apart), written during
// the next row's first loop (core/pending.hpp) so its stores overlap that row's reads; flush()
// writes the last one. Reading o_k (L2) before the store at k also allows grad = logits.
template <class T>
struct SphericalPending {
  PendingRow<T> row;
  const T* o = nullptr;
  T A = T(0), B = T(0), mu = T(0);

  template <class V>
  V value(std::size_t i) const {
    const V v = simd::load<V>(o + i);
    return simd::select(v == V(-std::numeric_limits<T>::infinity()), V(T(0)), simd::fma(V(A), v - V(mu), V(B)));
  }
  void flush() {
    row.flush([&](auto tag, std::size_t i) { row.put(i, value<typename decltype(tag)::type>(i)); });
  }
};

template <class T>
struct SphericalZRow {
  RowsView<const T> x;
  Labels labels;
  double a, b, eps;
  bool stream;  // gradient written with non-temporal stores (large outputs)

  double operator()(SphericalPending<T>& p, std::ptrdiff_t r, T* grad, double scale) const {
    const T* o = x.row(r);
    const std::size_t n = std::size_t(x.cols), y = std::size_t(labels[std::size_t(r)]);
    Moments m;
    const T* ahead = next_row(x, r);
    const SphericalPending<T> prev = p;  // a local copy: the float stores below cannot change it
    auto put = [&prev](auto tag, std::size_t i) {
      if (prev.row) prev.row.put(i, prev.template value<typename decltype(tag)::type>(i));
    };
    for_chunks<T>(n, [&](std::size_t, std::size_t cb, std::size_t ce) { m.merge(live_moments(o, cb, ce, ahead, put)); });
    if (p.row) p.row.end();
    const double oc = double(o[y]);
    if (oc == -std::numeric_limits<double>::infinity()) {  // masked target: nothing can lower the loss
      if (grad)
        for (std::size_t k = 0; k < n; ++k) grad[k] = T(0);
      return std::numeric_limits<double>::infinity();
    }
    const double D = m.n, mu = m.mean, sigma = std::sqrt(m.m2 / D), se = sigma + eps;
    const double zc = (oc - mu) / se, u = a * (b - zc);
    const double loss = softplus(u) / a;
    if (grad) {
      const double s = sigmoid(u);
      const double B = scale * s / (se * D);
      const double A = sigma > 0.0 ? scale * s * zc / (se * sigma * D) : 0.0;
      // the target entry in double, rounded once, set after the rest
      p.row.start(grad, n, stream, y, T(A * (oc - mu) + B - scale * s / se));
      p.o = o;
      p.A = T(A);
      p.B = T(B);
      p.mu = T(mu);
    }
    return loss;
  }
};

template <class X, class G>
inline LossResult spherical_z_loss_impl(const X& logits, const Labels& labels, G* grad,
                                        const SphericalZLossOptions& o) {
  using T = scalar_of_t<X>;
  const char* fn = "spherical_z_loss";
  const auto v = check_labeled(fn, logits, labels, grad, o);
  check_positive(fn, "a", o.a);
  if (!std::isfinite(o.b)) fail(fn, "'b' must be finite, got ", o.b);
  check_positive(fn, "epsilon", o.epsilon);
  const RowPlan plan = plan_rows(labeled_rows(o, labels), v.x.rows, v.x.cols);
  const SphericalZRow<T> row{v.x, labels, o.a, o.b, o.epsilon, streaming_output<T>(v.x.rows, v.x.cols)};
  return run_rows<T>(
      plan, v.x.rows, v.g, [] { return SphericalPending<T>{}; },
      [&row](SphericalPending<T>& p, std::ptrdiff_t r, T* g, double scale) { return row(p, r, g, scale); },
      [](SphericalPending<T>& p) { p.flush(); });
}

}  // namespace detail

// losskit::spherical_z_loss(logits, labels, grad, options): the reduced spherical Z-loss and its
// gradient w.r.t. the logits, written into `grad` (any writable row-major matrix of the logits'
// shape; it may be the logits themselves). Labels: one int32 or int64 per row.
template <class X, class G, std::enable_if_t<is_rows_v<G>, int> = 0>
inline LossResult spherical_z_loss(const X& logits, const Labels& labels, G&& grad,
                                   const SphericalZLossOptions& options = {}) {
  return detail::spherical_z_loss_impl(logits, labels, &grad, options);
}

// Forward only.
template <class X>
inline LossResult spherical_z_loss(const X& logits, const Labels& labels, const SphericalZLossOptions& options = {}) {
  return detail::spherical_z_loss_impl(logits, labels, static_cast<RowMatrix<scalar_of_t<X>>*>(nullptr), options);
}

}  // namespace losskit
