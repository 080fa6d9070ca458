#pragma once
// Early-Learning Regularisation (Liu, Niles-Weed, Razavian and Fernandez-Granda, "Early-Learning
// Regularization Prevents Memorization of Noisy Labels", NeurIPS 2020; reference code
// shengliu66/ELR, ELR/model/loss.py: elr_loss). Per row with logits z (C classes), label y and
// sample id i, with a target table t (num_samples x C, zeros at construction):
//   q   = softmax(z),   p = clamp(q, eps, 1 - eps)        (eps = `clamp`, 1e-4 in the reference)
//   t_i <- beta t_i + (1 - beta) p / sum(p)               (temporal ensembling, p detached)
//   L   = CE(z, y) + lambda log(1 - <t_i, p>)             (t_i after the update)
//   dL/dz_k = q_k - [k = y] + lambda q_k (s_U - t_ik [k in U]) / (1 - s)
//     s = <t_i, p>,  U = {k : eps <= q_k <= 1 - eps},  s_U = sum_{k in U} t_ik q_k
// Clamped entries pass no gradient through p (torch.clamp's gradient is 0 outside the bounds,
// kept at the bounds), as in the reference; inside U this is lambda p_k (s - t_ik) / (1 - s).
// Reduction::mean is the reference's mean over the batch of both terms.
//
// Defaults beta = 0.7 and lambda = 3 are the reference's CIFAR-10 configuration
// (ELR/config_cifar10.json); its CIFAR-100 configuration uses beta = 0.9, lambda = 7 (the class
// default beta = 0.3 is always overridden by the configs).
//
// update = true is the reference's forward: the table row is updated first, then the loss is
// evaluated with it (the table update is not differentiated). update = false evaluates with the
// stored row and leaves the table alone. Only counted rows (not ignore_index, weight > 0) update.
// A sample id repeated in a call is visited once per row, in row order (core/labeled.hpp).
//
// Conventions: -inf logits are legal: q = 0 is clamped to eps like any small probability (as in
// the reference), zero gradient there. A -inf target logit gives loss +inf. NaN gives NaN.
// t_i stays a sub-probability vector (entries >= 0, sum <= 1), so 1 - s >= eps.
//
// Numerics: one pass over the logits from memory (chunked softmax, core/softmax.hpp), one over the
// stored exps for sum(p) (update only), one over the exps and the table row that writes the
// updated row and sums s and s_U from the stored values (so update = true and a later
// update = false call see the same numbers) while the next row's logits and target row are
// prefetched; the gradient is written during the next row's pass over the logits (pipelined
// rows, as the divergences'), the last row's after it. The target's gradient entry is computed
// in double.
// Memory: besides the logits and the gradient, each row reads and writes one target row, so
// ELR moves twice the bytes of a logits-in, gradient-out kernel.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <istream>
#include <ostream>
#include <type_traits>
#include <vector>

#include "losskit/core/checks.hpp"
#include "losskit/core/labeled.hpp"
#include "losskit/core/pending.hpp"
#include "losskit/core/rows.hpp"
#include "losskit/core/scratch.hpp"
#include "losskit/core/simd.hpp"
#include "losskit/core/softmax.hpp"
#include "losskit/core/state_io.hpp"
#include "losskit/core/types.hpp"
#include "losskit/core/views.hpp"

namespace losskit {

// Options of ELR::loss. Defaults: the reference's CIFAR-10 configuration.
struct ElrOptions {
  double beta = 0.7;                 // in [0, 1]: weight of the old target in the update
  double lambda = 3.0;               // >= 0: weight of the regulariser
  double clamp = 1e-4;               // in (0, 0.5): p = clamp(softmax, clamp, 1 - clamp)
  bool update = true;                // update the target rows (false: evaluate only)
  Reduction reduction = Reduction::mean;
  std::int64_t ignore_index = -100;  // rows with this label: loss 0, gradient 0, state untouched
  Weights weights{};                 // optional per-row weights or 0/1 mask (weight 0: untouched)
  double grad_scale = 1.0;           // upstream gradient of the reduced loss
  double normalizer = 0.0;           // > 0: divide by this instead (e.g. a global token count)
  int threads = 1;                   // 0: all hardware threads; results never depend on it
};

namespace detail {

template <class T>
struct ElrScratch {
  T* e;  // exps of the row, relative to each chunk's shift (core/softmax.hpp)
  ChunkedSoftmax<T> sm;
  // A row's gradient g = sc q (1 + ls - [q in U] l t), q = e f_k, recorded and written during
  // the next row's exp loop (which reads e_i before it stores its own; the next row changes a
  // target row only after that loop, so a repeated sample id reads its row as this row left it),
  // or by flush() (pipelined rows, as the divergences'); the target entry apart (PendingRow).
  struct Pending {
    PendingRow<T> row;
    const T* t = nullptr;
    std::vector<T> f;
    T ls = T(0), l = T(0), sc = T(0), lo = T(0), hi = T(0);
  } pending;
  explicit ElrScratch(std::size_t n) : e(scratch<T>(n)) {}

  template <class V>
  void put(std::size_t k, std::size_t i) const {
    const Pending& d = pending;
    const V q = simd::load<V>(e + i) * V(d.f[k]);
    const auto in_u = (q >= V(d.lo)) & (q <= V(d.hi));
    d.row.put(i, V(d.sc) * q * (V(T(1)) + V(d.ls) - simd::where(in_u, V(d.l) * simd::load<V>(d.t + i))));
  }
  void flush() {
    pending.row.flush([&](auto tag, std::size_t i) { put<typename decltype(tag)::type>(i / chunk_elems<T>, i); });
  }
};

template <class T>
struct ElrRow {
  RowsView<const T> x;
  Labels labels;
  SampleIds ids;
  T* table;
  std::size_t num_samples, n;
  double beta, lambda, eps;
  bool update;
  bool stream;  // gradient written with non-temporal stores (large outputs)

  double operator()(ElrScratch<T>& w, std::ptrdiff_t r, T* grad, double scale) const {
    const T* z = x.row(r);
    const std::size_t y = std::size_t(labels[std::size_t(r)]);
    T* t = table + std::size_t(ids[std::size_t(r)]) * n;
    ChunkedSoftmax<T>& sm = w.sm;
    T* ex = w.e;
    // the previous row's gradient goes out in this row's exp loop
    const ElrScratch<T>& pw = w;
    const bool pout = bool(w.pending.row);
    exps_of_row(sm, z, n, T(1), ex, [&pw, pout](auto tag, std::size_t k, std::size_t i) {
      if (pout) pw.template put<typename decltype(tag)::type>(k, i);
    });
    if (pout) w.pending.row.end();
    const double lse = sm.finish(false);
    const T lo = T(eps), hi = T(1.0 - eps);

    // The target row the loss uses: updated in place (t <- beta t + (1 - beta) p / sum(p)) while
    // s and s_U are summed from the stored values, or the stored row as is.
    double s = 0.0, s_u = 0.0;
    // the next row's logits and target row stream in during this pass
    const std::ptrdiff_t rn = r + 1 < x.rows ? r + 1 : r;
    const std::int64_t idn = ids[std::size_t(rn)];
    const T* t_next = idn >= 0 && std::size_t(idn) < num_samples ? table + std::size_t(idn) * n : t;
    const T* z_next = next_row(x, r);
    auto s_sums = [&](auto tag, std::size_t i, const auto& te, const auto& q) {
      using V = typename decltype(tag)::type;
      prefetch_at(tag, z_next, i);
      prefetch_at(tag, t_next, i);
      const auto in_u = (q >= V(lo)) & (q <= V(hi));
      return std::array<V, 2>{te * ElrRow::clamp(q, lo, hi), simd::where(in_u, te * q)};
    };
    if (update) {
      double sum_p = 0.0;
      for_chunks<T>(n, [&](std::size_t k, std::size_t b, std::size_t e) {
        const T f = sm.factor(k);
        sum_p += simd::sum_lanes<T, 1>(b, e, [&](auto tag, std::size_t i) {
          using V = typename decltype(tag)::type;
          return std::array<V, 1>{ElrRow::clamp(simd::load<V>(ex + i) * V(f), lo, hi)};
        })[0];
      });
      const T keep = T(beta), add = T((1.0 - beta) / sum_p);
      for_chunks<T>(n, [&](std::size_t k, std::size_t b, std::size_t e) {
        const T f = sm.factor(k);
        const auto part = simd::sum_lanes<T, 2>(b, e, [&](auto tag, std::size_t i) {
          using V = typename decltype(tag)::type;
          const V q = simd::load<V>(ex + i) * V(f);
          const V te = V(keep) * simd::load<V>(t + i) + V(add) * ElrRow::clamp(q, lo, hi);
          simd::store(t + i, te);
          return s_sums(tag, i, te, q);
        });
        s += part[0];
        s_u += part[1];
      });
    } else {
      for_chunks<T>(n, [&](std::size_t k, std::size_t b, std::size_t e) {
        const T f = sm.factor(k);
        const auto part = simd::sum_lanes<T, 2>(b, e, [&](auto tag, std::size_t i) {
          using V = typename decltype(tag)::type;
          return s_sums(tag, i, simd::load<V>(t + i), simd::load<V>(ex + i) * V(f));
        });
        s += part[0];
        s_u += part[1];
      });
    }
    const double ce = lse - double(z[y]);
    const double loss = ce + lambda * std::log1p(-s);

    if (grad) {  // g = q (1 + lam (s_U - t [k in U])) - e_y,  lam = lambda / (1 - s): recorded
      const double lam = lambda / (1.0 - s);
      auto& d = w.pending;
      d.t = t;
      d.ls = T(lam * s_u);
      d.l = T(lam);
      d.sc = T(scale);
      d.lo = lo;
      d.hi = hi;
      d.f.resize(chunk_count(n, chunk_elems<T>));
      for (std::size_t k = 0; k < d.f.size(); ++k) d.f[k] = sm.factor(k);
      // the target entry in double, rounded once, set last; membership tested as the vector pass does
      const std::size_t ky = y / chunk_elems<T>;
      const double q_y = double(ex[y]) * sm.factor_d(ky);
      const T q_yt = ex[y] * sm.factor(ky);
      const double ty = q_yt >= lo && q_yt <= hi ? double(t[y]) : 0.0;
      d.row.start(grad, n, stream, y, T(scale * (q_y * (1.0 + lam * (s_u - ty)) - 1.0)));
    }
    return loss;
  }

  template <class V>
  static V clamp(const V& q, simd::scalar_t<V> lo, simd::scalar_t<V> hi) {
    return simd::select(q < V(lo), V(lo), simd::select(q > V(hi), V(hi), q));
  }
};

}  // namespace detail

// ELR with its per-sample target table (see the top of this header). T: the logits' scalar type
// and the table's storage.
//   losskit::ELR<float> elr(num_samples, num_classes);
//   auto r = elr.loss(logits, labels, ids, grad, {.beta = 0.7, .lambda = 3.0});
// Not safe for concurrent calls on one object.
template <class T = float>
class ELR {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "losskit::ELR: T must be float or double");

 public:
  ELR(std::size_t num_samples, std::size_t num_classes)
      : targets_(RowMatrix<T>::Zero(Eigen::Index(num_samples), Eigen::Index(num_classes))) {
    if (num_classes == 0) detail::fail("ELR", "'num_classes' must be at least 1, got 0");
  }

  template <class X, class G, std::enable_if_t<is_rows_v<G>, int> = 0>
  LossResult loss(const X& logits, const Labels& labels, const SampleIds& ids, G&& grad, const ElrOptions& options = {}) {
    return run(logits, labels, ids, &grad, options);
  }

  // Forward only (still updates the table when options.update is true).
  template <class X>
  LossResult loss(const X& logits, const Labels& labels, const SampleIds& ids, const ElrOptions& options = {}) {
    return run(logits, labels, ids, static_cast<RowMatrix<T>*>(nullptr), options);
  }

  std::size_t num_samples() const noexcept { return std::size_t(targets_.rows()); }
  std::size_t num_classes() const noexcept { return std::size_t(targets_.cols()); }
  // The target table, one row per sample.
  const RowMatrix<T>& state() const noexcept { return targets_; }

  // Replaces the table (num_samples x num_classes, entries in [0, 1]).
  template <class Derived>
  void load(const Eigen::MatrixBase<Derived>& targets) {
    const char* fn = "ELR::load";
    if (targets.rows() != targets_.rows() || targets.cols() != targets_.cols())
      detail::fail(fn, "'targets' has shape ", targets.rows(), "x", targets.cols(), ", expected ", targets_.rows(), "x",
                   targets_.cols());
    for (Eigen::Index r = 0; r < targets.rows(); ++r)
      for (Eigen::Index c = 0; c < targets.cols(); ++c) {
        const double v = double(targets(r, c));
        if (!(v >= 0.0 && v <= 1.0)) detail::fail(fn, "'targets' must be in [0, 1], got ", v, " at (", r, ", ", c, ")");
      }
    targets_ = targets.template cast<T>();
  }

  // Binary round trip (exact; native byte order): tag, sizeof(T), rows, columns, the table.
  void save(std::ostream& os) const {
    const std::uint64_t dims[3] = {sizeof(T), std::uint64_t(targets_.rows()), std::uint64_t(targets_.cols())};
    detail::write_raw(os, kTag, 8);
    detail::write_raw(os, dims, sizeof dims);
    detail::write_raw(os, targets_.data(), std::size_t(targets_.size()) * sizeof(T));
  }
  // Restores a table saved by save() with the same T and shape. On any error
  // (std::invalid_argument) the state is unchanged.
  void load(std::istream& is) {
    const char* fn = "ELR::load";
    std::uint64_t dims[3] = {};
    detail::read_tag(fn, is, kTag, "an ELR state stream");
    detail::read_raw(fn, is, dims, sizeof dims);
    if (dims[0] != sizeof(T)) detail::fail(fn, "the stream holds ", dims[0], "-byte entries, this object ", sizeof(T));
    if (dims[1] != std::uint64_t(targets_.rows()) || dims[2] != std::uint64_t(targets_.cols()))
      detail::fail(fn, "the stream holds a ", dims[1], "x", dims[2], " table, this object ", targets_.rows(), "x",
                   targets_.cols());
    RowMatrix<T> t(targets_.rows(), targets_.cols());
    detail::read_raw(fn, is, t.data(), std::size_t(t.size()) * sizeof(T));
    load(t);
  }

 private:
  static constexpr char kTag[9] = "LKELR001";

  template <class X, class G>
  LossResult run(const X& logits, const Labels& labels, const SampleIds& ids, G* grad, const ElrOptions& o) {
    static_assert(std::is_same_v<scalar_of_t<X>, T>, "losskit::ELR<T>: the logits must have scalar type T");
    const char* fn = "ELR::loss";
    const auto v = detail::check_labeled(fn, logits, labels, grad, o);
    if (std::size_t(v.x.cols) != num_classes())
      detail::fail(fn, "'logits' has ", v.x.cols, " columns, expected num_classes (", num_classes(), ")");
    detail::check_in(fn, "beta", o.beta, 0.0, 1.0, false, false);
    detail::check_nonnegative(fn, "lambda", o.lambda);
    detail::check_in(fn, "clamp", o.clamp, 0.0, 0.5, true, true);
    detail::RowPlan plan = detail::plan_rows(detail::labeled_rows(o, labels), v.x.rows, v.x.cols);
    detail::check_sample_ids(fn, ids, plan, num_samples());
    if (o.update && detail::repeated_ids(ids, plan)) plan.threads = 1;  // visits in row order
    const std::size_t n = num_classes();
    const detail::ElrRow<T> row{v.x,      labels,   ids,      targets_.data(), num_samples(),
                                 n,        o.beta,   o.lambda, o.clamp,         o.update,
                                 detail::streaming_output<T>(v.x.rows, v.x.cols)};
    return detail::run_rows<T>(
        plan, v.x.rows, v.g, [n] { return detail::ElrScratch<T>(n); },
        [&row](detail::ElrScratch<T>& w, std::ptrdiff_t r, T* g, double scale) { return row(w, r, g, scale); },
        [](detail::ElrScratch<T>& w) { w.flush(); });
  }

  RowMatrix<T> targets_;
};

}  // namespace losskit
