#pragma once
// SinKD: Sinkhorn distillation (Cui et al., LREC-COLING 2024; reference: 2018cx/SinKD loss.py,
// class `Sinkhorn` / `saliency_mse`; formulas.md 3.1).
//
// Batch-wise form, sinkd_loss(student [B, C], teacher [B, C]):
//   q_i = softmax(s_i / T), p_j = softmax(t_j / T)         T = 2 (the reference hard-codes 2)
//   W_ij = ||q_i - p_j||_1                                  B x B cost between the samples (torch.cdist p=1)
//   K = exp(-W / eps), eps = 0.1; 20 times { divide each row by its sum; each column by its sum }
//   loss = weight * <P, W>                                  (the sharp cost, not the entropic objective)
// so the marginals are 1 per row and column (total mass B), as in the reference. weight defaults
// to 1; the reference scripts multiply by 0.001 (GLUE loss.py) or 0.0008 * 20 / 8 (GPT-Neo/T0).
// Gradient w.r.t. the student logits, exactly as autograd through the reference:
//   W_bar = weight (P + reverse pass of the 2 x 20 normalisations, transport/sinkhorn.hpp)
//   h_ic  = sum_j W_bar_ij sign(q_ic - p_jc)                (L1 subgradient: 0 at ties)
//   d/ds_ic = (grad_scale / T) q_ic (h_ic - sum_c q_ic h_ic)  (probability-space chain rule)
// The teacher gets no gradient (the GLUE script passes non-detached teacher logits, but the
// teacher is never stepped). W's entries are sums of |differences| taken in the input type with
// double accumulation per 2048 columns; the 20 iterations run in double.
//
// Per-sample form, sinkd_per_sample_loss(student [R, C], teacher [R, C], M [C, C]): for each row
// r, plain SinKD iterations between the class distributions a = q_r (rows) and b = p_r (columns)
// under the class-to-class cost M, loss_r = <P_L, M>, gradient through the unrolled iterations
// w.r.t. a (M is constant), then the softmax chain rule. Rows are reduced like every row-wise
// kernel (reduction, ignore_index with labels, weights, normalizer, grad_scale, threads), and the
// per-row loss is multiplied by `weight`.
// The plain iteration needs exp(-(M_ij - min_j M_ij) / eps) representable (eps not far below the
// spread of the costs), as in the reference.

#include "losskit/core/config.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <type_traits>
#include <vector>

#include "losskit/core/checks.hpp"
#include "losskit/core/parallel.hpp"
#include "losskit/core/row_softmax.hpp"
#include "losskit/core/rows.hpp"
#include "losskit/core/scratch.hpp"
#include "losskit/core/simd.hpp"
#include "losskit/core/softmax.hpp"
#include "losskit/core/types.hpp"
#include "losskit/core/views.hpp"
#include "losskit/transport/sinkhorn.hpp"

namespace losskit {

struct SinkdOptions {
  double temperature = 2.0;  // the reference hard-codes T = 2 (its constructor argument is ignored)
  double epsilon = 0.1;      // K = exp(-W / eps)
  int iterations = 20;       // row + column normalisations (sinkhorn_loss's n_iters = 20)
  double weight = 1.0;       // loss multiplier; the reference scripts use 0.001 (GLUE), 0.0008 * 20 / 8
  double grad_scale = 1.0;   // upstream gradient of the returned value
  int threads = 1;           // 0: all hardware threads; results do not depend on it
  // Per-sample form only: the row reduction (see core/rows.hpp).
  Reduction reduction = Reduction::mean;
  Labels labels{};
  std::int64_t ignore_index = -100;
  Weights weights{};
  double normalizer = 0.0;
};

struct SinkdResult : LossResult {
  RowMatrixXd cost;  // batch-wise form: W (B x B)
  RowMatrixXd plan;  // batch-wise form: P after the iterations (B x B)
};

namespace detail {

// ---- softmax of every row into a dense matrix (q = softmax(x / T)) ------------------------------
template <class T, class Out>
inline void softmax_rows(const RowsView<const T>& x, double temperature, Out& out, int threads) {
  const T inv_t = T(1.0 / temperature);
  const std::size_t n = std::size_t(x.cols);
  parallel_ranges(x.rows, threads, [&](int, std::ptrdiff_t b, std::ptrdiff_t e) {
    ChunkedSoftmax<T> sm;
    for (std::ptrdiff_t r = b; r < e; ++r) {
      T* o = out.row(r).data();
      softmax_row(x.row(r), n, inv_t, o, o, sm);  // the exps go straight into the output row
    }
  });
}

// ---- W_ij = sum_c |q_ic - p_jc| in register tiles of RI x RJ row pairs ---------------------------
template <class T, int RI, int RJ, class M>
inline void l1_tile(const M& q, const M& p, std::ptrdiff_t i0, std::ptrdiff_t j0, RowMatrixXd& W) {
  const std::size_t n = std::size_t(q.cols());
  std::array<const T*, RI> qi;
  std::array<const T*, RJ> pj;
  for (int a = 0; a < RI; ++a) qi[std::size_t(a)] = q.row(i0 + a).data();
  for (int c = 0; c < RJ; ++c) pj[std::size_t(c)] = p.row(j0 + c).data();
  const auto s = simd::sum_lanes<T, std::size_t(RI * RJ)>(0, n, [&](auto tag, std::size_t k) {
    using V = typename decltype(tag)::type;
    std::array<V, std::size_t(RI * RJ)> out;
    std::array<V, RJ> pv;
    for (int c = 0; c < RJ; ++c) pv[std::size_t(c)] = simd::load<V>(pj[std::size_t(c)] + k);
    for (int a = 0; a < RI; ++a) {
      const V qv = simd::load<V>(qi[std::size_t(a)] + k);
      for (int c = 0; c < RJ; ++c) out[std::size_t(a * RJ + c)] = simd::abs(qv - pv[std::size_t(c)]);
    }
    return out;
  });
  for (int a = 0; a < RI; ++a)
    for (int c = 0; c < RJ; ++c) W(i0 + a, j0 + c) = s[std::size_t(a * RJ + c)];
}

template <class T, int RI, class M>
inline void l1_row_block(const M& q, const M& p, std::ptrdiff_t i0, RowMatrixXd& W) {
  std::ptrdiff_t j = 0;
  for (; j + 2 <= p.rows(); j += 2) l1_tile<T, RI, 2, M>(q, p, i0, j, W);
  if (j < p.rows()) l1_tile<T, RI, 1, M>(q, p, i0, j, W);
}

// W (B x B) between the rows of q and p; parallel over blocks of 4 student rows.
template <class T, class M>
inline void l1_cost(const M& q, const M& p, RowMatrixXd& W, int threads) {
  const std::ptrdiff_t B = q.rows();
  W.resize(B, p.rows());
  const std::ptrdiff_t blocks = (B + 3) / 4;
  parallel_ranges(blocks, threads, [&](int, std::ptrdiff_t b, std::ptrdiff_t e) {
    for (std::ptrdiff_t blk = b; blk < e; ++blk) {
      const std::ptrdiff_t i0 = 4 * blk;
      switch (std::min<std::ptrdiff_t>(4, B - i0)) {
        case 4: l1_row_block<T, 4, M>(q, p, i0, W); break;
        case 3: l1_row_block<T, 3, M>(q, p, i0, W); break;
        case 2: l1_row_block<T, 2, M>(q, p, i0, W); break;
        default: l1_row_block<T, 1, M>(q, p, i0, W); break;
      }
    }
  });
}

// h_ic = sum_j Wbar_ij sign(q_ic - p_jc) for RI student rows from i0, into h (same layout as q).
// Per column vector: the RI rows of q and their accumulators stay in registers while j runs over
// the teacher rows; U column vectors at a time share each broadcast of Wbar_ij.
template <class T, int RI, int U, class V, class M>
inline void l1_backward_step(const T* const* qi, T* const* hi, const M& p, const T* wbar, std::ptrdiff_t B,
                             std::size_t k, double* qh) {
  constexpr std::size_t W = simd::is_batch<V> ? simd::width<T> : 1;
  std::array<V, std::size_t(RI * U)> qv, acc;
  for (int a = 0; a < RI; ++a)
    for (int u = 0; u < U; ++u) {
      qv[std::size_t(a * U + u)] = simd::load<V>(qi[a] + k + std::size_t(u) * W);
      acc[std::size_t(a * U + u)] = V(T(0));
    }
  for (std::ptrdiff_t j = 0; j < B; ++j) {
    std::array<V, std::size_t(U)> pv;
    for (int u = 0; u < U; ++u) pv[std::size_t(u)] = simd::load<V>(p.row(j).data() + k + std::size_t(u) * W);
    for (int a = 0; a < RI; ++a) {
      const V w(wbar[a * B + j]);
      for (int u = 0; u < U; ++u) {
        const V& x = qv[std::size_t(a * U + u)];
        V& s = acc[std::size_t(a * U + u)];
        s = simd::select(x > pv[std::size_t(u)], s + w, s);
        s = simd::select(x < pv[std::size_t(u)], s - w, s);
      }
    }
  }
  for (int a = 0; a < RI; ++a) {
    V dot = qv[std::size_t(a * U)] * acc[std::size_t(a * U)];
    for (int u = 0; u < U; ++u) {
      simd::store(hi[a] + k + std::size_t(u) * W, acc[std::size_t(a * U + u)]);
      if (u > 0) dot += qv[std::size_t(a * U + u)] * acc[std::size_t(a * U + u)];
    }
    qh[a] += double(simd::hsum(dot));
  }
}

// Also returns sum_c q_ic h_ic for each of the RI rows in qh.
template <class T, int RI, class M, class H>
inline void l1_backward_block(const M& q, const M& p, const RowMatrix<T>& wbar, std::ptrdiff_t i0, H& h, double* qh) {
  const std::size_t n = std::size_t(q.cols());
  const std::ptrdiff_t B = p.rows();
  const T* qi[RI];
  T* hi[RI];
  for (int a = 0; a < RI; ++a) {
    qi[a] = q.row(i0 + a).data();
    hi[a] = h.row(i0 + a).data();
  }
  const T* w = wbar.row(i0).data();  // RI consecutive rows of Wbar (B entries each)
  constexpr std::size_t W = simd::width<T>;
  constexpr int U = RI <= 2 ? 4 : 2;
  std::size_t k = 0;
  for (int a = 0; a < RI; ++a) qh[a] = 0.0;
  for (; k + U * W <= n; k += U * W) l1_backward_step<T, RI, U, simd::batch<T>, M>(qi, hi, p, w, B, k, qh);
  simd::for_lanes<T>(k, n, [&](auto tag, std::size_t kk) {
    l1_backward_step<T, RI, 1, typename decltype(tag)::type, M>(qi, hi, p, w, B, kk, qh);
  });
}

// h for every student row, parallel over blocks of 4 rows; finish(i0, count, qh) runs after each
// block (while its rows of q and h are still in L2), qh[a] = sum_c q h of row i0 + a.
template <class T, class M, class H, class Finish>
inline void l1_backward(const M& q, const M& p, const RowMatrix<T>& wbar, H& h, int threads, Finish&& finish) {
  const std::ptrdiff_t B = q.rows();
  const std::ptrdiff_t blocks = (B + 3) / 4;
  parallel_ranges(blocks, threads, [&](int, std::ptrdiff_t b, std::ptrdiff_t e) {
    for (std::ptrdiff_t blk = b; blk < e; ++blk) {
      const std::ptrdiff_t i0 = 4 * blk;
      const std::ptrdiff_t count = std::min<std::ptrdiff_t>(4, B - i0);
      double qh[4];
      switch (count) {
        case 4: l1_backward_block<T, 4, M, H>(q, p, wbar, i0, h, qh); break;
        case 3: l1_backward_block<T, 3, M, H>(q, p, wbar, i0, h, qh); break;
        case 2: l1_backward_block<T, 2, M, H>(q, p, wbar, i0, h, qh); break;
        default: l1_backward_block<T, 1, M, H>(q, p, wbar, i0, h, qh); break;
      }
      finish(i0, count, static_cast<const double*>(qh));
    }
  });
}
template <class T, class M, class H>
inline void l1_backward(const M& q, const M& p, const RowMatrix<T>& wbar, H& h, int threads) {
  l1_backward<T>(q, p, wbar, h, threads, [](std::ptrdiff_t, std::ptrdiff_t, const double*) {});
}

// grad = scale * q o (h - qh), qh = <q, h> (probability-space chain rule; scale includes 1/T).
template <class T>
inline void softmax_backward_row(const T* q, const T* h, T* grad, std::size_t n, double qh, double scale) {
  const T qhT = T(qh), sc = T(scale);
  simd::for_lanes<T>(0, n, [&](auto tag, std::size_t i) {
    using V = typename decltype(tag)::type;
    simd::store(grad + i, V(sc) * simd::load<V>(q + i) * (simd::load<V>(h + i) - V(qhT)));
  });
}

inline void check_sinkd_options(const char* fn, const SinkdOptions& o) {
  check_positive(fn, "temperature", o.temperature);
  check_positive(fn, "epsilon", o.epsilon);
  if (o.iterations < 0) fail(fn, "'iterations' must be >= 0, got ", o.iterations);
  if (!std::isfinite(o.weight)) fail(fn, "'weight' must be finite, got ", o.weight);
  if (!std::isfinite(o.grad_scale)) fail(fn, "'grad_scale' must be finite, got ", o.grad_scale);
  if (o.threads < 0) fail(fn, "'threads' must be >= 0 (0 means: all hardware threads), got ", o.threads);
}

// Student and teacher (one shape and scalar type, contiguous rows, at least one row and
// column), the gradient (the student's shape; it may be the student, not the teacher), options.
template <class S, class Tt, class G>
inline PairViews<scalar_of_t<S>> read_student_teacher(const char* fn, const S& student, const Tt& teacher, G* grad,
                                                      const SinkdOptions& o) {
  using T = scalar_of_t<S>;
  check_row_pair(fn, "student", student, "teacher", teacher);
  const RowsView<const T> sv = rows_view(student);
  if (sv.rows <= 0) fail(fn, "'student' has no rows");
  const PairViews<T> in{sv, rows_view(teacher), checked_grad_view<T>(fn, grad, "student", sv)};
  if (in.g.data && in.g.data == in.b.data) fail(fn, "'grad' may alias 'student' but not 'teacher'");
  check_sinkd_options(fn, o);
  return in;
}

template <class S, class Tt, class G>
inline SinkdResult sinkd_impl(const S& student, const Tt& teacher, G* grad, const SinkdOptions& o) {
  using T = scalar_of_t<S>;
  const auto in = read_student_teacher("sinkd_loss", student, teacher, grad, o);
  const RowsView<const T>& sv = in.a;
  const RowsView<const T>& tv = in.b;
  const RowsView<T>& gv = in.g;
  const std::ptrdiff_t B = sv.rows;
  const int threads = resolve_threads(double(B) * double(sv.cols) < 65536.0 ? 1 : o.threads, B);
  // q and p in one reusable per-thread buffer (no page faults per call); h, the gradient w.r.t. q,
  // is written into `grad` and turned into the logit gradient block by block while in L2.
  using Rows = Eigen::Map<RowMatrix<T>>;
  const std::ptrdiff_t C = sv.cols;
  T* buf = scratch<T>(std::size_t(2 * B * C));
  Rows q(buf, B, C), p(buf + B * C, B, C);
  softmax_rows<T>(sv, o.temperature, q, threads);
  softmax_rows<T>(tv, o.temperature, p, threads);
  SinkdResult res;
  l1_cost<T>(q, p, res.cost, threads);
  const std::vector<double> ones(std::size_t(B), 1.0);
  UnrolledSinkhorn us;
  const RowMatrixXd& W = res.cost;
  us.forward(B, B, [&W](std::ptrdiff_t i, std::ptrdiff_t j) { return W(i, j); }, ones.data(), ones.data(), o.epsilon,
             o.iterations);
  res.plan = us.plan();
  res.value = o.weight * res.plan.cwiseProduct(W).sum();
  res.denominator = 1.0;
  res.count = B;
  if (gv.data) {
    Eigen::VectorXd ga, gb;
    const RowMatrix<T> wbar = (o.weight * (res.plan + us.backward(W, ga, gb))).template cast<T>();
    Eigen::Map<RowMatrix<T>, 0, Eigen::OuterStride<>> h(gv.data, B, C, Eigen::OuterStride<>(gv.stride));
    const double scale = o.grad_scale / o.temperature;
    l1_backward<T>(q, p, wbar, h, threads, [&](std::ptrdiff_t i0, std::ptrdiff_t count, const double* qh) {
      for (std::ptrdiff_t r = i0; r < i0 + count; ++r)
        softmax_backward_row<T>(q.row(r).data(), gv.row(r), gv.row(r), std::size_t(C), qh[r - i0], scale);
    });
  }
  return res;
}

template <class S, class Tt, class MC, class G>
inline LossResult sinkd_per_sample_impl(const S& student, const Tt& teacher, const MC& class_cost, G* grad,
                                        const SinkdOptions& o) {
  using T = scalar_of_t<S>;
  const char* fn = "sinkd_per_sample_loss";
  const auto in = read_student_teacher(fn, student, teacher, grad, o);
  const RowsView<const T>& sv = in.a;
  const RowsView<const T>& tv = in.b;
  const RowsView<T>& gv = in.g;
  const std::ptrdiff_t n = sv.cols;
  const auto mv = cost_view(fn, "class_cost", class_cost, n, n, "classes x classes");
  check_finite_cost(fn, "class_cost", mv);
  check_row_options(fn, o, sv.rows);
  RowMatrixXd M(n, n);
  for (std::ptrdiff_t i = 0; i < n; ++i)
    for (std::ptrdiff_t j = 0; j < n; ++j) M(i, j) = double(mv.row(i)[j]);
  RowPlan plan = plan_rows(o, sv.rows, n * n, o.weight);
  const RowMatrixXd K = UnrolledSinkhorn::kernel(n, n, [&M](std::ptrdiff_t i, std::ptrdiff_t j) { return M(i, j); },
                                                 o.epsilon, o.iterations);
  const double inv_t = 1.0 / o.temperature;
  struct Work {
    explicit Work(std::ptrdiff_t cols) : q(cols), p(cols), z(std::size_t(cols)), ex(std::size_t(cols)) {}
    UnrolledSinkhorn us;
    Eigen::VectorXd q, p, ga, gb;
    std::vector<double> z, ex;  // a row widened to double; softmax_row's scratch row
    ChunkedSoftmax<double> sm;
  };
  // q, p in double, like the iterations (a float row is widened first).
  auto softmax = [&](const T* x, Work& w, Eigen::VectorXd& out) {
    const double* z = nullptr;
    if constexpr (std::is_same_v<T, double>) {
      z = x;
    } else {
      std::copy(x, x + n, w.z.begin());
      z = w.z.data();
    }
    softmax_row(z, std::size_t(n), inv_t, out.data(), w.ex.data(), w.sm);
  };
  return run_rows<T>(
      plan, sv.rows, gv, [n] { return Work(n); },
      [&](Work& w, std::ptrdiff_t r, T* g, double scale) {
        softmax(sv.row(r), w, w.q);
        softmax(tv.row(r), w, w.p);
        w.us.run(K, w.q.data(), w.p.data(), o.epsilon, o.iterations);
        const RowMatrixXd P = w.us.plan();
        const double value = P.cwiseProduct(M).sum();
        if (g) {
          w.us.backward(M, w.ga, w.gb, false);
          const double qh = w.q.dot(w.ga);
          for (std::ptrdiff_t c = 0; c < n; ++c) g[c] = T(scale * inv_t * w.q[c] * (w.ga[c] - qh));
        }
        return value;
      });
}

}  // namespace detail

// losskit::sinkd_loss(student, teacher[, grad], options) -> SinkdResult (batch-wise SinKD)
template <class S, class Tt, class G, std::enable_if_t<is_rows_v<G>, int> = 0>
inline SinkdResult sinkd_loss(const S& student, const Tt& teacher, G&& grad, const SinkdOptions& options = {}) {
  return detail::sinkd_impl(student, teacher, &grad, options);
}
template <class S, class Tt>
inline SinkdResult sinkd_loss(const S& student, const Tt& teacher, const SinkdOptions& options = {}) {
  return detail::sinkd_impl(student, teacher, static_cast<RowMatrix<scalar_of_t<S>>*>(nullptr), options);
}

// losskit::sinkd_per_sample_loss(student, teacher, class_cost[, grad], options) -> LossResult
template <class S, class Tt, class MC, class G, std::enable_if_t<is_rows_v<G>, int> = 0>
inline LossResult sinkd_per_sample_loss(const S& student, const Tt& teacher, const MC& class_cost, G&& grad,
                                        const SinkdOptions& options = {}) {
  return detail::sinkd_per_sample_impl(student, teacher, class_cost, &grad, options);
}
template <class S, class Tt, class MC>
inline LossResult sinkd_per_sample_loss(const S& student, const Tt& teacher, const MC& class_cost,
                                        const SinkdOptions& options = {}) {
  return detail::sinkd_per_sample_impl(student, teacher, class_cost,
                                       static_cast<RowMatrix<scalar_of_t<S>>*>(nullptr), options);
}

}  // namespace losskit
